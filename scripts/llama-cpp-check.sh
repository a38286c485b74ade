#!/usr/bin/env bash
# llama.cpp itself against llmq-gpu's GGUF output, on SmolLM2-135M
# (the fixture; its dequantized Q4_1 weights are the reference):
#  1. `llama-quantize` (no imatrix) and `llmq-gpu quantize --format gguf`
#     write every preset llmq-gpu has (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K,
#     Q3_K_S/M/L, Q4_K_S/M, Q5_K_S/M, Q6_K, IQ4_NL) of the same source, Q8_0
#     with the 1536-wide down projections in Q6_K, and Q8_0 with one down
#     projection in each k-quant: every tensor's type and bytes must be
#     identical (tests/py/gguf_compare.py; metadata differences are listed,
#     not fatal);
#  2. `llama-perplexity` on our F32 and Q8_0 files against our own `eval`
#     of the same files (Persuasion, ctx 512, the same windows; the Q8_0
#     file also with `eval --llama-cpp-activations`);
#  3. `convert`: the fixture as a Hugging Face folder (f32) and back to
#     GGUF (tokenizer keys rebuilt from tokenizer.json, q/k permuted
#     again): every tensor identical to our F32 file, and llama-perplexity
#     on it identical to its value on that file.
# Builds llama.cpp's tools first (scripts/build-llama-cpp.sh, cached).
# Usage: bash scripts/llama-cpp-check.sh [CHUNKS]   (default 20 windows)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMQ_CACHE:-$REPO/.cache}"
CHUNKS="${1:-20}"
cd "$REPO"
bash scripts/build-llama-cpp.sh >/dev/null
BIN="$CACHE/llama.cpp/bin"
SRC="$CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT="$CACHE/austen/persuasion.txt"
cargo build --release --quiet
LLMQ="$REPO/target/release/llmq-gpu"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

status=0
# name, preset, extra options (given to both tools)
# every-k: one down projection in each k-quant (SmolLM2's other rows are
# 576 wide, no multiple of 256, and take the 32-block fallbacks).
EVERY_K="--tensor-type blk\\.0\\.ffn_down=Q2_K --tensor-type blk\\.1\\.ffn_down=Q3_K"
EVERY_K+=" --tensor-type blk\\.2\\.ffn_down=Q4_K --tensor-type blk\\.3\\.ffn_down=Q5_K"
EVERY_K+=" --tensor-type blk\\.4\\.ffn_down=Q6_K"
cases=("Q8_0 Q8_0" "Q4_0 Q4_0" "Q4_1 Q4_1" "Q5_0 Q5_0" "Q5_1 Q5_1"
    "Q6_K-down Q8_0 --tensor-type ffn_down=Q6_K" "every-k Q8_0 $EVERY_K"
    "Q2_K Q2_K" "Q3_K_S Q3_K_S" "Q3_K_M Q3_K_M" "Q3_K_L Q3_K_L" "Q4_K_S Q4_K_S"
    "Q4_K_M Q4_K_M" "Q5_K_S Q5_K_S" "Q5_K_M Q5_K_M" "Q6_K Q6_K" "IQ4_NL IQ4_NL")
for c in "${cases[@]}"; do
    read -r name preset extra <<<"$c"
    # The source is already quantized, hence --allow-requantize.
    # shellcheck disable=SC2086
    "$BIN/llama-quantize" --allow-requantize $extra "$SRC" "$OUT/lc-$name.gguf" "$preset" \
        >"$OUT/lc-$name.log" 2>&1 || { cat "$OUT/lc-$name.log"; exit 1; }
    # shellcheck disable=SC2086
    "$LLMQ" quantize --model "$SRC" --out "$OUT/ours-$name.gguf" --format gguf \
        --gguf-type "$preset" $extra >/dev/null
    echo "== $name: llama-quantize vs llmq-gpu"
    python3 tests/py/gguf_compare.py "$OUT/lc-$name.gguf" "$OUT/ours-$name.gguf" || status=1
done

# Perplexity under both runtimes, the same windows. F32 tests the protocol
# (tokens, windows, scoring): within 0.05%. Q8_0 adds llama.cpp's CPU
# kernel rounding the activations to 8 bits (vec_dot_q8_0_q8_0), which our
# default eval does not do (measured 0.52% at 20 windows; it must stay
# below 1%); `eval --llama-cpp-activations` rounds them the same way and
# must agree within 0.5% (measured 0.15% at 20 windows; the rest is not
# explained yet: llama.cpp's f16 KV cache is shared with the F32 case).
"$LLMQ" quantize --model "$SRC" --out "$OUT/ours-F32.gguf" --format gguf --gguf-type F32 >/dev/null
for c in "F32 0.0005" "Q8_0 0.01" "Q8_0 0.005 --llama-cpp-activations"; do
    read -r name bound flag <<<"$c"
    echo "== perplexity of our $name file: llama-perplexity vs llmq-gpu eval ${flag:-} ($CHUNKS windows of 512)"
    "$BIN/llama-perplexity" -m "$OUT/ours-$name.gguf" -f "$TEXT" -c 512 -b 512 --chunks "$CHUNKS" \
        -t "$(nproc)" >"$OUT/ppl-$name.log" 2>&1 || { tail -20 "$OUT/ppl-$name.log"; exit 1; }
    theirs="$(grep -o 'Final estimate: PPL = [0-9.]*' "$OUT/ppl-$name.log" | grep -o '[0-9.]*$')"
    # shellcheck disable=SC2086
    ours="$("$LLMQ" eval --model "$OUT/ours-$name.gguf" --text "$TEXT" --ctx 512 --chunks "$CHUNKS" \
        --device cpu --json ${flag:-} | python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])')"
    python3 - "$theirs" "$ours" "$bound" <<'PY' || status=1
import sys
theirs, ours, bound = map(float, sys.argv[1:])
rel = abs(ours - theirs) / theirs
ok = "ok" if rel <= bound else "FAILED"
print(f"llama-perplexity {theirs:.4f}  llmq-gpu eval {ours:.4f}  difference {100 * rel:.3f}% "
      f"(bound {100 * bound:.2f}%) {ok}")
sys.exit(0 if rel <= bound else 1)
PY
done

echo "== convert: GGUF -> Hugging Face (f32) -> GGUF, under llama.cpp"
"$LLMQ" convert --model "$SRC" --out "$OUT/hf" --dtype f32 >/dev/null
"$LLMQ" convert --model "$OUT/hf" --out "$OUT/hf.gguf" >/dev/null
python3 tests/py/gguf_compare.py "$OUT/ours-F32.gguf" "$OUT/hf.gguf" | tail -n 1 || status=1
"$BIN/llama-perplexity" -m "$OUT/hf.gguf" -f "$TEXT" -c 512 -b 512 --chunks "$CHUNKS" \
    -t "$(nproc)" >"$OUT/ppl-hf.log" 2>&1 || { tail -20 "$OUT/ppl-hf.log"; exit 1; }
a="$(grep -o 'Final estimate: PPL = [0-9.]*' "$OUT/ppl-F32.log")"
b="$(grep -o 'Final estimate: PPL = [0-9.]*' "$OUT/ppl-hf.log")"
if [ "$a" = "$b" ]; then echo "llama-perplexity: ${b#Final estimate: } on both ok"
else echo "llama-perplexity: F32 file $a, converted $b FAILED"; status=1; fi
exit $status
