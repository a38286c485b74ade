#!/usr/bin/env bash
# Whole-model speed against the peer, llama.cpp's llama-bench, on the same
# machine, same work and same thread count (`llmq-gpu bench --model M
# --device cpu --peer`), on SmolLM2-135M:
#   gguf-Q4_1   the fixture GGUF itself, in both runtimes;
#   gguf-Q8_0   llama-quantize's Q8_0 of it, in both runtimes;
#   gguf-Q4_K_M llama-quantize's Q4_K_M of it (Q4_K, Q6_K and the fallbacks
#               of 576-wide rows), in both runtimes;
#   W8A8        our W8 g32 sym with INT8 per-token inputs (--act-dynamic)
#               against llama.cpp's Q8_0, whose CPU kernel also rounds the
#               inputs to 8 bits per 32 (vec_dot_q8_0_q8_0);
#   W4          our RTN W4 g32 sym (f32 inputs) against Q4_0 (4-bit
#               symmetric, 32 per block, inputs as Q8_0);
#   W4A8        the same W4 codes with INT8 per-token inputs against Q4_0.
# Our folders quantize the (tied) head too, as llama.cpp's files do: W8
# g32 where llama.cpp's is Q8_0; W4 g32 where its Q4_0 file keeps the head
# in Q8_0 (576 columns are no multiple of 256, so not Q6_K): less to read
# for ours.
# Builds llama.cpp's tools first (scripts/build-llama-cpp.sh, cached).
# Usage: bash scripts/peer-speed.sh [PROMPT_TOKENS] [DECODE_TOKENS]
#        (default 512 and 32; ITERS=3 repetitions each; BIN=the llmq-gpu
#        binary, default target/release/llmq-gpu built here)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMQ_CACHE:-$REPO/.cache}"
PP="${1:-512}"
TG="${2:-32}"
ITERS="${ITERS:-3}"
cd "$REPO"
bash scripts/build-llama-cpp.sh >/dev/null
LB="$CACHE/llama.cpp/bin/llama-bench"
LQ="$CACHE/llama.cpp/bin/llama-quantize"
SRC="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --quiet
    BIN="$REPO/target/release/llmq-gpu"
fi
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

# The source is already quantized, hence --allow-requantize.
for t in Q8_0 Q4_0 Q4_K_M; do
    "$LQ" --allow-requantize "$SRC" "$OUT/lc-$t.gguf" "$t" >"$OUT/lc-$t.log" 2>&1 ||
        { cat "$OUT/lc-$t.log"; exit 1; }
done
"$BIN" quantize --model "$SRC" --out "$OUT/w8a8" --method rtn --bits 8 --sym --group-size 32 \
    --act-bits 8 --act-dynamic --quantize-output --device cpu >/dev/null
"$BIN" quantize --model "$SRC" --out "$OUT/w4" --method rtn --bits 4 --sym --group-size 32 \
    --quantize-output --device cpu >/dev/null
"$BIN" quantize --model "$SRC" --out "$OUT/w4a8" --method rtn --bits 4 --sym --group-size 32 \
    --act-bits 8 --act-dynamic --quantize-output --device cpu >/dev/null

# name, our model, the GGUF llama.cpp runs
cases=("gguf-Q4_1 $SRC $SRC" "gguf-Q8_0 $OUT/lc-Q8_0.gguf $OUT/lc-Q8_0.gguf"
    "gguf-Q4_K_M $OUT/lc-Q4_K_M.gguf $OUT/lc-Q4_K_M.gguf"
    "W8A8 $OUT/w8a8 $OUT/lc-Q8_0.gguf" "W4 $OUT/w4 $OUT/lc-Q4_0.gguf"
    "W4A8 $OUT/w4a8 $OUT/lc-Q4_0.gguf")
summary=()
for c in "${cases[@]}"; do
    read -r name ours theirs <<<"$c"
    echo "== $name"
    "$BIN" bench --model "$ours" --device cpu --prompt-tokens "$PP" --decode-tokens "$TG" \
        --iters "$ITERS" --peer --llama-bench "$LB" --peer-model "$theirs" | tee "$OUT/$name.txt"
    summary+=("$(printf '%-10s prefill %s   decode %s' "$name" \
        "$(grep -A1 '^peer:' "$OUT/$name.txt" | tail -1 | sed 's/.*tok\/s; ours = //')" \
        "$(grep -A2 '^peer:' "$OUT/$name.txt" | tail -1 | sed 's/.*tok\/s; ours = //')")")
    echo
done
echo "ours / llama.cpp (tokens/s):"
printf '  %s\n' "${summary[@]}"
