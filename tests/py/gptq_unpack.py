#!/usr/bin/env python3
"""Dequantizes a GPTQ checkpoint the way AutoGPTQ/GPTQModel read the v1
format (`checkpoint_format: gptq`), in numpy, for tests/gptq_export.rs:
codes packed along the input dimension of int32 `qweight [in/(32/b), out]`,
zero-points minus one packed along the output dimension of `qzeros`,
`W[:, i] = scales[g_idx[i]] * (q[i] - (qzeros[g_idx[i]] + 1))`.

usage: gptq_unpack.py FOLDER  -> JSON {"config": quantization_config,
  "linears": {name: [sum, weighted_sum]}} with the fingerprint of
  tests/py/gguf_requantize_ref.py over each dequantized [out, in] weight (f32).
"""
import json
import struct
import sys

import numpy as np

from gguf_requantize_ref import fingerprint


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    dtypes = {"I32": np.int32, "F16": np.float16, "F32": np.float32, "BF16": np.uint16}
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dtypes[t["dtype"]]).reshape(t["shape"])
    return out


def unpack(words, bits, axis):
    """int32 words -> codes, `32 // bits` per word along `axis` (low bits first)."""
    w = words.view(np.uint32)
    pack = 32 // bits
    shifts = (np.arange(pack, dtype=np.uint32) * bits).astype(np.uint32)
    mask = np.uint32((1 << bits) - 1)
    if axis == 0:
        codes = (w[:, None, :] >> shifts[None, :, None]) & mask
        return codes.reshape(w.shape[0] * pack, w.shape[1])
    codes = (w[:, :, None] >> shifts[None, None, :]) & mask
    return codes.reshape(w.shape[0], w.shape[1] * pack)


def main():
    folder = sys.argv[1]
    cfg = json.load(open(f"{folder}/config.json"))["quantization_config"]
    assert cfg["quant_method"] == "gptq" and cfg["checkpoint_format"] == "gptq"
    bits = cfg["bits"]
    t = read_safetensors(f"{folder}/model.safetensors")
    linears = {}
    for name in t:
        if not name.endswith(".qweight"):
            continue
        base = name[: -len(".qweight")]
        q = unpack(t[name], bits, axis=0).astype(np.float32)  # [in, out]
        zeros = unpack(t[base + ".qzeros"], bits, axis=1).astype(np.float32) + 1  # [groups, out]
        scales = t[base + ".scales"].astype(np.float32)
        g = t[base + ".g_idx"]
        w = scales[g] * (q - zeros[g])
        linears[base + ".weight"] = fingerprint(w.T)
    print(json.dumps({"config": cfg, "linears": linears}))


if __name__ == "__main__":
    main()
