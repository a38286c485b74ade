#!/usr/bin/env bash
# GPTQ onto llama.cpp's own block types against llama.cpp's quantization of
# the same types, without and with an importance matrix, on SmolLM2-135M
# (the fixture; reference = its weights dequantized to f32, whose linears
# lie on a Q4_1 grid: Q4_K's 32-weight sub-blocks align with it, so its
# Q4_K tensors are near-lossless for every method; Q4_0, Q5_0, Q6_K, Q3_K
# and IQ4_NL do not align).
# For each preset of TYPES: llama-quantize, llama-quantize --imatrix (the
# imatrix from llama-imatrix on Emma, CALIB windows of 512) and llmq-gpu's
# GPTQ from the same Emma windows. Perplexity by llama-perplexity (ctx 512,
# CHUNKS windows) on Persuasion and two out-of-domain texts; KL divergence
# to the f32 reference by llmq-gpu's eval on Persuasion (its forward
# dequantizes the blocks; llama.cpp also rounds activations to 8 bits);
# quantize times on this machine (llama.cpp's imatrix time listed apart).
# Prints one markdown table.
# Usage: bash scripts/gguf-gptq-vs-imatrix.sh [CHUNKS] [CALIB_WINDOWS]   (defaults 10, 16)
#        TYPES="Q4_0 Q4_K_M" bash scripts/gguf-gptq-vs-imatrix.sh
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMQ_CACHE:-$REPO/.cache}"
CHUNKS="${1:-10}"
CALIB="${2:-16}"
read -r -a TYPES <<<"${TYPES:-Q4_0 Q4_K_M Q3_K_M IQ4_NL}"
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
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

"$LLMQ" quantize --model "$SRC" --out "$OUT/f32.gguf" --format gguf --gguf-type F32 >/dev/null
t0=$(now)
"$BIN/llama-imatrix" -m "$SRC" -f "$EMMA" -o "$OUT/imatrix.gguf" -c 512 --chunks "$CALIB" -t "$T" \
    >"$OUT/imatrix.log" 2>&1 || { tail -20 "$OUT/imatrix.log"; exit 1; }
IMATRIX_S=$(since "$t0")
declare -A SECONDS_OF
FILES=(f32)
for ty in "${TYPES[@]}"; do
    t0=$(now)
    "$BIN/llama-quantize" --allow-requantize "$SRC" "$OUT/lc-$ty.gguf" "$ty" >"$OUT/q.log" 2>&1 ||
        { tail -20 "$OUT/q.log"; exit 1; }
    SECONDS_OF[lc-$ty]=$(since "$t0")
    t0=$(now)
    "$BIN/llama-quantize" --allow-requantize --imatrix "$OUT/imatrix.gguf" "$SRC" "$OUT/lci-$ty.gguf" \
        "$ty" >"$OUT/q.log" 2>&1 || { tail -20 "$OUT/q.log"; exit 1; }
    SECONDS_OF[lci-$ty]=$(since "$t0")
    t0=$(now)
    "$LLMQ" quantize --model "$SRC" --out "$OUT/ours-$ty.gguf" --format gguf --gguf-type "$ty" \
        --method gptq --calib "$EMMA" --calib-samples "$CALIB" --calib-len 512 --device cpu \
        >"$OUT/ours.log" 2>&1 || { tail -20 "$OUT/ours.log"; exit 1; }
    SECONDS_OF[ours-$ty]=$(since "$t0")
    FILES+=("lc-$ty" "lci-$ty" "ours-$ty")
done

ppl() {
    "$BIN/llama-perplexity" -m "$1" -f "$2" -c 512 -b 512 --chunks "$CHUNKS" -t "$T" 2>&1 |
        grep -o 'Final estimate: PPL = [0-9.]*' | grep -o '[0-9.]*$'
}
kld() {
    "$LLMQ" eval --model "$1" --reference "$OUT/f32.gguf" --text "${TEXTS[0]}" --chunks "$CHUNKS" \
        --device cpu --json 2>/dev/null |
        python3 -c '
import json, sys
def find(v):
    if isinstance(v, dict):
        if isinstance(v.get("kld"), (int, float)):
            return v["kld"]
        v = list(v.values())
    if isinstance(v, list):
        for x in v:
            k = find(x)
            if k is not None:
                return k
print("%.4f" % find(json.load(sys.stdin)))' 
}
bpw() {
    python3 - "$1" <<'EOF'
import sys
import gguf
r = gguf.GGUFReader(sys.argv[1])
n = sum(int(t.n_elements) for t in r.tensors)
b = sum(int(t.n_bytes) for t in r.tensors)
print("%.3f" % (8 * b / n))
EOF
}
echo "| file | MiB | bits/weight | Persuasion PPL | fortunes PPL | debian-reference PPL | KLD (Persuasion) | quantize s |"
echo "|---|---|---|---|---|---|---|---|"
for f in "${FILES[@]}"; do
    case $f in
        f32) label="reference (f32)" ;;
        lc-*) label="llama-quantize ${f#lc-}" ;;
        lci-*) label="llama-quantize ${f#lci-} --imatrix" ;;
        ours-*) label="**llmq-gpu ${f#ours-}, GPTQ**" ;;
    esac
    row="| $label | $(( $(stat -c %s "$OUT/$f.gguf") / 1048576 )) | $(bpw "$OUT/$f.gguf")"
    for t in "${TEXTS[@]}"; do
        row+=" | $(ppl "$OUT/$f.gguf" "$t")"
    done
    case $f in
        f32) row+=" | 0 | -" ;;
        *) row+=" | $(kld "$OUT/$f.gguf") | ${SECONDS_OF[$f]}" ;;
    esac
    echo "$row |"
done
echo
echo "($CHUNKS windows of 512 per text; $CALIB calibration windows of 512 from Emma for llama-imatrix"
echo "(${IMATRIX_S} s, add it to the --imatrix rows) and for GPTQ; $T threads; llama.cpp from"
echo "llama-cpp-python $(cat "$CACHE/llama.cpp/src.version" 2>/dev/null || echo '?'))"
