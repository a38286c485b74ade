#!/usr/bin/env bash
# GPTQ onto llama.cpp's Q4_0 blocks against llama.cpp's own Q4_0, with and
# without an importance matrix, all run by llama.cpp itself on SmolLM2-135M
# (the fixture; reference = its weights dequantized to f32, whose linears
# lie on a Q4_1 grid; Q4_0 is symmetric and does not align with it).
# Calibration on Emma for both tools (llama-imatrix and our GPTQ get the
# same text), perplexity by llama-perplexity on Persuasion and on two
# out-of-domain texts. Prints one markdown table.
# Usage: bash scripts/gguf-gptq-vs-imatrix.sh [CHUNKS] [CALIB_WINDOWS]   (defaults 20, 64)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMQ_CACHE:-$REPO/.cache}"
CHUNKS="${1:-20}"
CALIB="${2:-64}"
cd "$REPO"
bash scripts/build-llama-cpp.sh >/dev/null
BIN="$CACHE/llama.cpp/bin"
SRC="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
EMMA="$CACHE/austen/emma.txt"
TEXTS=("$CACHE/austen/persuasion.txt" "$CACHE/ood/fortunes.txt" "$CACHE/ood/debian-reference.txt")
cargo build --release --quiet
LLMQ="$REPO/target/release/llmq-gpu"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
T="$(nproc)"

"$LLMQ" quantize --model "$SRC" --out "$OUT/f32.gguf" --format gguf --gguf-type F32 >/dev/null
"$BIN/llama-imatrix" -m "$SRC" -f "$EMMA" -o "$OUT/imatrix.gguf" -c 512 --chunks "$CALIB" -t "$T" \
    >"$OUT/imatrix.log" 2>&1 || { tail -20 "$OUT/imatrix.log"; exit 1; }
"$BIN/llama-quantize" --allow-requantize "$SRC" "$OUT/lc.gguf" Q4_0 >"$OUT/q1.log" 2>&1
"$BIN/llama-quantize" --allow-requantize --imatrix "$OUT/imatrix.gguf" "$SRC" "$OUT/lc-imatrix.gguf" Q4_0 \
    >"$OUT/q2.log" 2>&1 || { tail -20 "$OUT/q2.log"; exit 1; }
"$LLMQ" quantize --model "$SRC" --out "$OUT/ours-rtn-calib.gguf" --format gguf --gguf-type Q4_0 \
    --calib "$EMMA" --calib-samples "$CALIB" --device cpu >/dev/null 2>&1
"$LLMQ" quantize --model "$SRC" --out "$OUT/ours-gptq.gguf" --format gguf --gguf-type Q4_0 \
    --method gptq --calib "$EMMA" --calib-samples "$CALIB" --device cpu >/dev/null 2>&1

ppl() {
    "$BIN/llama-perplexity" -m "$1" -f "$2" -c 512 -b 512 --chunks "$CHUNKS" -t "$T" 2>&1 |
        grep -o 'Final estimate: PPL = [0-9.]*' | grep -o '[0-9.]*$'
}
echo "| file (all run by llama.cpp) | MiB | Persuasion | fortunes | debian-reference |"
echo "|---|---|---|---|---|"
for f in f32 lc lc-imatrix ours-rtn-calib ours-gptq; do
    case $f in
        f32) label="reference (f32)" ;;
        lc) label="llama-quantize Q4_0" ;;
        lc-imatrix) label="llama-quantize Q4_0 --imatrix (Emma)" ;;
        ours-rtn-calib) label="llmq-gpu Q4_0, RTN with weighted scale search (Emma)" ;;
        ours-gptq) label="llmq-gpu Q4_0, GPTQ (Emma)" ;;
    esac
    row="| $label | $(( $(stat -c %s "$OUT/$f.gguf") / 1048576 ))"
    for t in "${TEXTS[@]}"; do
        row+=" | $(ppl "$OUT/$f.gguf" "$t")"
    done
    echo "$row |"
done
echo
echo "($CHUNKS windows of 512 per text, $CALIB calibration windows of 512 from Emma; llama.cpp $(cat "$CACHE/llama.cpp/src.version" 2>/dev/null || echo '?'))"
