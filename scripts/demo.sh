#!/usr/bin/env bash
# The main job on a real model: fetch SmolLM2-135M-Instruct (GGUF),
# quantize it with RTN, 4 bits, groups of 128, on the Vulkan device, then
# measure what that cost (perplexity, KL divergence and top-1 agreement
# against the original on 8 windows of Persuasion) and let it answer a
# question. Extra arguments go to `llmq-gpu quantize` (e.g. --bits 8 --per-channel).
# Evaluation and generation use --device auto: a real GPU if there is one,
# else the CPU backend (lavapipe would take minutes per window).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-fixtures.sh
cargo build --release
bin=./target/release/llmq-gpu
model=$(ls .cache/smollm2/*.gguf | head -1)
out=.cache/out/smollm2-rtn-w4g128
$bin devices
$bin quantize --model "$model" --out "$out" --method rtn --bits 4 --group-size 128 \
  --device vulkan --overwrite "$@"
$bin inspect "$out" | head -30
$bin eval --model "$model" --model "$out" --reference "$model" \
  --text .cache/austen/persuasion.txt --ctx 512 --chunks 8 \
  --table .cache/out/demo-eval.md --chart .cache/out/demo-eval.svg
$bin generate --model "$out" --chat --temperature 0 -n 48 \
  --prompt "What is the capital of France? Answer in one sentence."
