#!/usr/bin/env python3
"""Checks a GGUF file written by llmq-gpu against gguf-py (llama.cpp's
Python package, an implementation independent of ours), for
tests/gguf_vs_reference.rs.

usage: gguf_requantize_ref.py SOURCE.gguf WRITTEN.gguf [WRITTEN.gguf ...]

For every tensor of each WRITTEN file: the same name, shape and order as in SOURCE;
if its type is SOURCE's, the same bytes; otherwise SOURCE's tensor
dequantized and requantized by gguf.quants.quantize (numpy ports of
ggml-quants.c's reference quantizers) must give WRITTEN's bytes. gguf-py
quantizes no k-quant or IQ type: for those (and every other written type)
it dequantizes WRITTEN's tensor and reports an exact fingerprint of the
f32 values, which the Rust test compares with its own dequantization.
Prints one JSON line per WRITTEN file: {"tensors", "copied", "requantized",
"mismatches": [{"name", "type", "bytes_differing"}], "fingerprints":
{name: [sum, weighted_sum]}, "metadata_only_in_source",
"metadata_only_in_written"}.

fingerprint: the f32 values' bit patterns b_i as unsigned integers,
[sum of b_i, sum of (i + 1) * b_i], both modulo 2**64, as decimal strings.
"""
import json
import sys

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:
    sys.exit(f"gguf_requantize_ref.py: {e}; run: pip install -r scripts/requirements-test.txt")


# Types gguf.quants dequantizes but does not quantize.
UNQUANTIZABLE = {
    gguf.GGMLQuantizationType.Q2_K,
    gguf.GGMLQuantizationType.Q3_K,
    gguf.GGMLQuantizationType.Q4_K,
    gguf.GGMLQuantizationType.Q5_K,
    gguf.GGMLQuantizationType.Q6_K,
    gguf.GGMLQuantizationType.IQ4_NL,
}


def fingerprint(values):
    b = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    i = np.arange(1, b.size + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return [str(int(b.sum(dtype=np.uint64))), str(int((b * i).sum(dtype=np.uint64)))]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    src = gguf.GGUFReader(sys.argv[1])
    outs = [gguf.GGUFReader(p) for p in sys.argv[2:]]
    reports = [
        {"tensors": 0, "copied": 0, "requantized": 0, "mismatches": [], "fingerprints": {}}
        for _ in outs
    ]
    for out in outs:
        if [t.name for t in src.tensors] != [t.name for t in out.tensors]:
            sys.exit("tensor names or order differ")
    for i, s in enumerate(src.tensors):
        x = None  # dequantized once, for every written file
        for out, report in zip(outs, reports):
            o = out.tensors[i]
            report["tensors"] += 1
            if list(s.shape) != list(o.shape):
                sys.exit(f"{o.name}: shape {list(o.shape)} vs {list(s.shape)}")
            got = np.asarray(o.data).view(np.uint8).reshape(-1)
            if s.tensor_type == o.tensor_type:
                want = np.asarray(s.data).view(np.uint8).reshape(-1)
                report["copied"] += 1
            elif o.tensor_type in UNQUANTIZABLE:
                y = quants.dequantize(o.data, o.tensor_type)
                report["fingerprints"][o.name] = fingerprint(y)
                report["requantized"] += 1
                continue
            else:
                if x is None:
                    x = quants.dequantize(s.data, s.tensor_type).astype(np.float32)
                want = np.asarray(quants.quantize(x, o.tensor_type)).view(np.uint8).reshape(-1)
                report["requantized"] += 1
            if got.shape != want.shape or not np.array_equal(got, want):
                differing = int((got != want).sum()) if got.shape == want.shape else -1
                report["mismatches"].append(
                    {"name": o.name, "type": o.tensor_type.name, "bytes_differing": differing}
                )
    keys = lambda r: {k for k in r.fields if not k.startswith("GGUF.")}
    for out, report in zip(outs, reports):
        report["metadata_only_in_source"] = sorted(keys(src) - keys(out))
        report["metadata_only_in_written"] = sorted(keys(out) - keys(src))
        print(json.dumps(report))


if __name__ == "__main__":
    main()
