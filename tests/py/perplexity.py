#!/usr/bin/env python3
"""Independent perplexity of a GGUF Llama model on a text under llama.cpp's
`perplexity` protocol, for tests/eval_reference.rs.

usage: perplexity.py MODEL.gguf TEXT_FILE CTX CHUNKS

The text is tokenized once with Python's `tokenizers` (built from the GGUF
vocabulary by tokenize_ref.py), without BOS in front. It is cut into
min(CHUNKS, n_tokens // CTX) windows of CTX tokens; the first token of a
window becomes BOS when the GGUF says `tokenizer.ggml.add_bos_token`. The
numpy float64 forward of llama_forward.py gives the logits; positions
CTX//2 .. CTX-2 are scored against the next token (llama.cpp: first =
n_ctx/2, n_ctx - 1 - first tokens per chunk). Prints one JSON object:
{"ppl", "ppl_stderr", "nll", "scored", "text_tokens", "chunks", "ctx", "bos", "seconds"}.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from llama_forward import LlamaModel, field  # noqa: E402
from tokenize_ref import build_tokenizer  # noqa: E402


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    path, text_path, ctx, chunks = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    start = time.time()
    model = LlamaModel(path)
    tok = build_tokenizer(model.reader)
    with open(text_path, encoding="utf-8") as fh:
        text = fh.read()
    tokens = tok.encode(text, add_special_tokens=False).ids
    add_bos = bool(field(model.reader, "tokenizer.ggml.add_bos_token", False))
    bos = int(field(model.reader, "tokenizer.ggml.bos_token_id")) if add_bos else None
    n_chunks = min(chunks, len(tokens) // ctx)
    if n_chunks < 1:
        sys.exit(f"perplexity.py: {len(tokens)} tokens, too few for a window of {ctx}")
    first = ctx // 2
    nll = []
    for c in range(n_chunks):
        window = list(tokens[c * ctx:(c + 1) * ctx])
        if bos is not None:
            window[0] = bos
        logits = model.logits(window)
        for p in range(first, ctx - 1):
            row = logits[p]
            m = row.max()
            log_z = m + np.log(np.exp(row - m).sum())
            nll.append(log_z - row[window[p + 1]])
        print(f"chunk {c + 1}/{n_chunks}: running PPL {np.exp(np.mean(nll)):.4f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    nll = np.array(nll, dtype=np.float64)
    mean = nll.mean()
    # llama.cpp: stderr of the mean NLL = sqrt((E[x²] − E[x]²) / (n − 1)).
    var = max((nll * nll).mean() - mean * mean, 0.0)
    stderr = np.sqrt(var / (len(nll) - 1)) if len(nll) > 1 else 0.0
    ppl = float(np.exp(mean))
    print(json.dumps({
        "ppl": ppl, "ppl_stderr": ppl * float(stderr), "nll": float(mean),
        "scored": len(nll), "text_tokens": len(tokens), "chunks": n_chunks,
        "ctx": ctx, "bos": bos is not None, "seconds": time.time() - start,
    }))


if __name__ == "__main__":
    main()
