#!/usr/bin/env python3
"""Reference token ids for tests/tokenizer.rs, from Python's `tokenizers`
package built independently from the GGUF vocabulary and merges (read with
the `gguf` package) with SmolLM2's Hugging Face pre-tokenizer:
Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)].
`build_tokenizer(reader)` is also used by tests/py/perplexity.py.

usage: tokenize_ref.py MODEL.gguf TEXT_FILE   -> JSON list of ids on stdout
"""
import json
import sys

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def build_tokenizer(r):
    """A `tokenizers.Tokenizer` from an open `gguf.GGUFReader`'s metadata."""
    f = r.fields
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "smollm"
    tokens = f["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    types = f["tokenizer.ggml.token_type"].contents()
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty in (3, 4)]
    )
    return tok


def main():
    gguf_path, text_path = sys.argv[1], sys.argv[2]
    tok = build_tokenizer(gguf.GGUFReader(gguf_path))
    with open(text_path, encoding="utf-8") as fh:
        text = fh.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    json.dump(ids, sys.stdout)


if __name__ == "__main__":
    main()
