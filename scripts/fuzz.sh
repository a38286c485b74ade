#!/usr/bin/env bash
# The long fuzz run of every reader of untrusted files (issue 16): 10^6
# inputs per reader by default, or the count given, e.g.
#   bash scripts/fuzz.sh 100000
# Prints each reader's inputs, rate, findings, slowest run, allocation
# figures and the process's peak resident memory. Findings (the input files
# and a repro.txt) are kept in target/tmp/fuzz-findings/. Replay a reader's
# run with LLMQ_FUZZ_SEED=<its seed> bash scripts/fuzz.sh N <reader>, where
# <reader> filters the tests (gguf, safetensors, shard, config, tokenizer, llmq).
set -euo pipefail
cd "$(dirname "$0")/.."
execs="${1:-1000000}"
only="${2:-}"
bash scripts/fetch-fixtures.sh >/dev/null
# Run the test binary itself, so cargo's build lock is not held for the run.
bin=$(cargo test --profile test --test fuzz_readers --no-run --message-format=json \
  | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "fuzz_readers":
        print(m["executable"])')
log=$(mktemp)
start=$(date +%s)
set +e
# One reader at a time: the allocation figures are process-wide.
LLMQ_FUZZ_EXECS="$execs" "$bin" $only --nocapture --test-threads 1 >"$log" 2>&1
status=$?
set -e
grep -E '^(fuzz |  [a-z]|test |thread |replay)' "$log" || cat "$log"
echo "fuzz.sh: ${execs} inputs per reader in $(( $(date +%s) - start )) s, exit status $status"
rm -f "$log"
exit "$status"
