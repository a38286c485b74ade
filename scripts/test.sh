#!/usr/bin/env bash
# Everything the test suite needs, then the tests: system packages, the
# SmolLM2 and Austen fixtures (cached in .cache/), and `cargo test`.
# GPU-vs-CPU tests run on Vulkan; without a GPU that is lavapipe.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-fixtures.sh
cargo test --release --all-targets "$@"
