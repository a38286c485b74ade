#!/usr/bin/env python3
"""Compares two GGUF files tensor by tensor with gguf-py, for
scripts/llama-cpp-check.sh (our file against llama-quantize's).

usage: gguf_compare.py A.gguf B.gguf

Prints one line per tensor that differs (name, types, bytes differing),
then the metadata keys only in one file or with different values, and
a summary line `TENSORS n identical m`. Exits 1 when any tensor's type,
shape or bytes differ (metadata differences are reported, not fatal).
"""
import sys

try:
    import numpy as np
    import gguf
except ImportError as e:
    sys.exit(f"gguf_compare.py: {e}; run: pip install -r scripts/requirements-test.txt")


def fields(r):
    out = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        out[k] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = gguf.GGUFReader(sys.argv[1]), gguf.GGUFReader(sys.argv[2])
    ta = {t.name: t for t in a.tensors}
    tb = {t.name: t for t in b.tensors}
    bad = 0
    for name in sorted(set(ta) | set(tb)):
        if name not in ta or name not in tb:
            print(f"{name}: only in {'B' if name in tb else 'A'}")
            bad += 1
            continue
        x, y = ta[name], tb[name]
        bx = np.asarray(x.data).view(np.uint8).reshape(-1)
        by = np.asarray(y.data).view(np.uint8).reshape(-1)
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape) or bx.shape != by.shape:
            print(f"{name}: {x.tensor_type.name} {list(x.shape)} vs {y.tensor_type.name} {list(y.shape)}")
            bad += 1
        elif not np.array_equal(bx, by):
            print(f"{name} ({x.tensor_type.name}): {int((bx != by).sum())} of {bx.size} bytes differ")
            bad += 1
    fa, fb = fields(a), fields(b)
    for k in sorted(set(fa) | set(fb)):
        if k not in fa or k not in fb:
            print(f"metadata {k}: only in {'B' if k in fb else 'A'}")
        elif fa[k] != fb[k]:
            print(f"metadata {k}: {str(fa[k])[:60]} vs {str(fb[k])[:60]}")
    n = len(set(ta) | set(tb))
    print(f"TENSORS {n} identical {n - bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
