#!/usr/bin/env python3
"""Reference dump of a GGUF file with llama.cpp's own Python reader (the
`gguf` package on PyPI), for tests/gguf_vs_reference.rs.

usage: gguf_dump.py MODEL.gguf OUTDIR [NAME ...]

Writes OUTDIR/index.json:
  {"version": int, "metadata": {key: value}, "tensors": [{"name", "shape"
   (PyTorch order, outermost first), "type" (e.g. "Q4_1"), "file"}]}
and for each tensor (all, or only the NAMEs given) OUTDIR/<i>.f32: the
tensor dequantized by gguf.quants.dequantize, raw little-endian f32.
"""
import json
import sys
from pathlib import Path

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:
    sys.exit(f"gguf_dump.py: {e}; run: pip install -r scripts/requirements-test.txt")


def plain(v):
    """numpy scalars/arrays and bytes -> JSON-able Python values."""
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode("utf-8", errors="replace")
    return v


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, out = sys.argv[1], Path(sys.argv[2])
    only = set(sys.argv[3:])
    out.mkdir(parents=True, exist_ok=True)
    r = gguf.GGUFReader(path)

    metadata = {}
    version = None
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            if name == "GGUF.version":
                version = int(field.parts[field.data[0]][0])
            continue  # header fields, not metadata
        metadata[name] = plain(field.contents())

    tensors = []
    for i, t in enumerate(r.tensors):
        entry = {
            "name": t.name,
            "shape": [int(d) for d in reversed(t.shape.tolist())],
            "type": t.tensor_type.name,
        }
        if not only or t.name in only:
            data = quants.dequantize(t.data, t.tensor_type)
            data = np.ascontiguousarray(data, dtype="<f4").reshape(-1)
            fname = f"{i}.f32"
            data.tofile(out / fname)
            entry["file"] = fname
        tensors.append(entry)

    index = {"version": version, "metadata": metadata, "tensors": tensors}
    (out / "index.json").write_text(json.dumps(index), encoding="utf-8")


if __name__ == "__main__":
    main()
