#!/usr/bin/env bash
# Everything the test suite needs, then the tests: system packages, the
# SmolLM2 and Austen fixtures (cached in .cache/), and `cargo test`.
# GPU-vs-CPU tests run on Vulkan; without a GPU that is lavapipe.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-fixtures.sh
# The test profile optimises (Cargo.toml), so no separate release build.
# Benches and examples are compiled, not run (a bench run takes minutes).
cargo build --profile test --benches --examples
cargo test "$@"
