#!/usr/bin/env bash
# Speed on a real GPU, in one go (a few minutes on a data-centre GPU):
# the adapters wgpu sees, the packed INT4/INT8 and GPTVQ (2D at 2 and 3
# bits) matmul kernels (GEMV on 7B shapes, GEMM at 64 and 128 tokens)
# against the copy bandwidth and the CPU measured in the same run, GPTVQ of
# SmolLM2 by phase when its fixture is cached, and GPTQ on Llama-7B-shaped
# layers (4096 hidden, 11008 MLP, 65,536 synthetic calibration tokens), by
# phase, extrapolated to a 32-layer model; W8A8 against W8 on SmolLM2's
# forward pass.
#
#   BIN=target/release/llmq-gpu OUT=logs LAYERS=2 bash scripts/gpu-speed.sh
#
# BIN: the binary (default target/release/llmq-gpu, so `cargo build --release`
# first); OUT: where the three logs go (default: the current folder);
# LAYERS: synthetic layers to time (default 2). Needs a Vulkan driver for
# the GPU: on lavapipe the GPTQ part would take hours.
set -euo pipefail
BIN=${BIN:-target/release/llmq-gpu}
OUT=${OUT:-.}
LAYERS=${LAYERS:-2}
mkdir -p "$OUT"
if [ ! -x "$BIN" ]; then
    echo "no llmq-gpu binary at $BIN: run cargo build --release, or set BIN" >&2
    exit 1
fi
"$BIN" devices | tee "$OUT/devices.txt"
if ! grep -Eq "type +(DiscreteGpu|IntegratedGpu)" "$OUT/devices.txt"; then
    echo "no hardware GPU adapter is visible (only software Vulkan?): install the GPU's Vulkan driver" >&2
    exit 1
fi
"$BIN" bench --device vulkan 2>&1 | tee "$OUT/bench-kernels.txt"
"$BIN" bench --gptq --synthetic-layers "$LAYERS" --device vulkan 2>&1 | tee "$OUT/bench-gptq.txt"
M=.cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$M" ] && [ -f .cache/austen/emma.txt ]; then
    # The GGUF's forward pass with its blocks packed (shaders/ggml_decode.wgsl).
    "$BIN" bench --model "$M" --device vulkan 2>&1 | tee "$OUT/bench-gguf-forward.txt"
    "$BIN" bench --gptq --gptvq --model "$M" --calib .cache/austen/emma.txt --calib-samples 32 \
        --bits 2 --bpw 2.125 --device vulkan 2>&1 | tee "$OUT/bench-gptvq.txt"
    # W8A8 (INT8 inputs, shaders/quantize_i8.wgsl + matmul_i8.wgsl) against
    # the same W8 codes with f32 inputs: prefill and decode tokens/s.
    W=$(mktemp -d)
    Q="--model $M --bits 8 --sym --group-size 128 --calib .cache/austen/emma.txt --calib-samples 8 \
        --calib-self-share 0 --device vulkan"
    "$BIN" quantize $Q --out "$W/w8" > /dev/null
    "$BIN" quantize $Q --out "$W/w8a8" --act-bits 8 --act-calib minmax --smooth 0.8 > /dev/null
    for m in w8 w8a8; do
        "$BIN" bench --model "$W/$m" --device vulkan 2>&1 | tee "$OUT/bench-$m-forward.txt"
    done
    rm -rf "$W"
fi
