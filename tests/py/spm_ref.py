#!/usr/bin/env python3
"""Reference for tests/tokenizer_spm.rs: a SentencePiece-style (llama.cpp
"llama" tokenizer model) vocabulary built from a text, and the ids that
llama.cpp's SPM algorithm (llm_tokenizer_spm, re-implemented here in plain
Python) gives for sample strings.

usage: spm_ref.py TRAIN_TEXT SAMPLES_JSON OUT_JSON

The vocabulary: <unk>, <s>, </s>, the 256 byte tokens <0xXX>, every
character of the training text, and frequent "▁word" prefixes and word
pieces, each with a distinct score (higher = merged first). OUT_JSON gets
{"tokens", "scores", "types", "ids": [[...] per sample]}.
"""
import heapq
import json
import sys
from collections import Counter

SP = "\u2581"


def build_vocab(text):
    words = Counter(SP + w for w in text.split())
    pieces = Counter()
    for w, n in words.items():
        for i in range(len(w)):
            for j in range(i + 2, min(len(w), i + 8) + 1):
                pieces[w[i:j]] += n
    chars = sorted(set(SP + text.replace(" ", SP).replace("\n", "")))
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    for c in chars:
        if c not in tokens:
            tokens.append(c)
            types.append(1)
            scores.append(-1e6 - len(tokens))  # characters never win a merge
    ranked = [p for p, n in pieces.most_common() if n >= 4][:3000]
    for rank, p in enumerate(ranked):
        if p not in tokens:
            tokens.append(p)
            types.append(1)
            scores.append(-float(rank))
    return tokens, scores, types


def spm_encode(text, vocab, scores):
    """llama.cpp llm_tokenizer_spm: add a space prefix, spaces -> ▁, then
    merge the adjacent pair whose concatenation has the best score (ties:
    leftmost) until none is in the vocabulary; unknown symbols -> bytes."""
    text = (" " + text).replace(" ", SP)
    sym = list(text)
    prev = list(range(-1, len(sym) - 1))
    nxt = list(range(1, len(sym) + 1))
    nxt[-1] = -1
    alive = [True] * len(sym)
    heap = []

    def push(l, r):
        if l < 0 or r < 0:
            return
        s = sym[l] + sym[r]
        if s in vocab:
            heapq.heappush(heap, (-scores[vocab[s]], l, s, r))

    for i in range(len(sym) - 1):
        push(i, i + 1)
    while heap:
        _, l, s, r = heapq.heappop(heap)
        if not alive[l] or not alive[r] or sym[l] + sym[r] != s or nxt[l] != r:
            continue
        sym[l] = s
        alive[r] = False
        nxt[l] = nxt[r]
        if nxt[r] >= 0:
            prev[nxt[r]] = l
        push(prev[l], l)
        push(l, nxt[l])
    ids = []
    i = 0
    while i >= 0 and i < len(sym):
        if alive[i]:
            if sym[i] in vocab:
                ids.append(vocab[sym[i]])
            else:
                ids.extend(vocab[f"<0x{b:02X}>"] for b in sym[i].encode("utf-8"))
        i = nxt[i] if alive[i] else i + 1
    return ids


def main():
    train, samples, out = sys.argv[1], sys.argv[2], sys.argv[3]
    text = open(train, encoding="utf-8").read()
    tokens, scores, types = build_vocab(text)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    ids = [spm_encode(s, vocab, scores) for s in json.load(open(samples, encoding="utf-8"))]
    json.dump({"tokens": tokens, "scores": scores, "types": types, "ids": ids}, open(out, "w"))


if __name__ == "__main__":
    main()
