#!/usr/bin/env bash
# The main job on a real model: fetch SmolLM2-135M-Instruct (GGUF),
# quantize it at 4 bits, groups of 128, twice: RTN on the Vulkan device, and
# GPTQ calibrated on 32 windows of 512 tokens, the default mix: half from
# Emma, half sampled from the model itself (--device auto: a real GPU if
# there is one, else the CPU backend; lavapipe would take many minutes).
# Then measure what each cost (perplexity, KL divergence and top-1
# agreement against the original on 8 windows each of Persuasion and two
# texts of other domains) and let
# the GPTQ model answer a question. Extra arguments go to both
# `llmq-gpu quantize` runs (e.g. --bits 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
bash scripts/fetch-fixtures.sh
cargo build --release
bin=./target/release/llmq-gpu
model=$(ls .cache/smollm2/*.gguf | head -1)
rtn=.cache/out/smollm2-rtn-w4g128
gptq=.cache/out/smollm2-gptq-w4g128
$bin devices
$bin quantize --model "$model" --out "$rtn" --method rtn --bits 4 --group-size 128 \
  --device vulkan --overwrite "$@"
$bin quantize --model "$model" --out "$gptq" --method gptq --bits 4 --group-size 128 \
  --calib .cache/austen/emma.txt --calib-samples 32 --calib-len 512 --overwrite "$@"
$bin inspect "$gptq" | head -30
$bin eval --model "$model" --model "$rtn" --model "$gptq" --reference "$model" \
  --text .cache/austen/persuasion.txt --text .cache/ood/fortunes.txt \
  --text .cache/ood/debian-reference.txt --ctx 512 --chunks 8 \
  --table .cache/out/demo-eval.md --chart .cache/out/demo-eval.svg
$bin generate --model "$gptq" --chat --temperature 0 -n 48 \
  --prompt "What is the capital of France? Answer in one sentence."
