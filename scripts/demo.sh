#!/usr/bin/env bash
# The main job on a real model: fetch SmolLM2-135M-Instruct (GGUF) and
# quantize it with RTN, 4 bits, groups of 128, on the Vulkan device.
# Extra arguments go to `llmq-gpu quantize` (e.g. --bits 8 --per-channel).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-fixtures.sh
cargo build --release
model=$(ls .cache/smollm2/*.gguf | head -1)
out=.cache/out/smollm2-rtn-w4g128
./target/release/llmq-gpu devices
./target/release/llmq-gpu quantize --model "$model" --out "$out" --method rtn --bits 4 --group-size 128 \
  --device vulkan --overwrite "$@"
./target/release/llmq-gpu inspect "$out" | head -30
