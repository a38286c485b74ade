#!/usr/bin/env python3
"""Independent numpy forward pass of a Hugging Face Llama-family folder
(config.json + model.safetensors, f32), for tests/forward_hf_variants.rs.

usage: hf_forward.py MODEL_DIR OUT.f32 TOKEN[,TOKEN...]

Covers what the GGUF reference (llama_forward.py) cannot: half-split RoPE
on HF-layout weights, Qwen2 q/k/v biases, rope_scaling "linear" and
"llama3", untied heads. The safetensors file is parsed by hand (8-byte
header length, JSON header, raw data) so no extra package is needed.
Writes the logits [seq, vocab] as little-endian f32; maths in float64.
"""
import json
import math
import struct
import sys

try:
    import numpy as np
except ImportError as e:
    sys.exit(f"hf_forward.py: {e}; run: pip install -r scripts/requirements-test.txt")


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", f"{name}: only F32 supported here"
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"]).astype(np.float64)
    return out


def inv_freq(cfg, hd):
    theta = cfg.get("rope_theta", 10000.0)
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    rs = cfg.get("rope_scaling") or {}
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "linear":
        inv = inv / rs["factor"]
    elif kind == "llama3":
        factor, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old / hi:
                out.append(f)
            elif wavelen > old / lo:
                out.append(f / factor)
            else:
                smooth = (old / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        inv = np.array(out)
    return inv


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    folder, out, toks = sys.argv[1], sys.argv[2], sys.argv[3]
    tokens = [int(t) for t in toks.split(",")]
    cfg = json.load(open(f"{folder}/config.json"))
    W = read_safetensors(f"{folder}/model.safetensors")
    hidden, n_head = cfg["hidden_size"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_head
    hd = hidden // n_head
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv = inv_freq(cfg, hd)

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x, heads):  # half-split pairs, as transformers' rotate_half
        seq = x.shape[0]
        x = x.reshape(seq, heads, hd)
        ang = np.arange(seq, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
        return (x * cos + rot * sin).reshape(seq, heads * hd)

    def lin(h, name):
        y = h @ W[name + ".weight"].T
        return y + W[name + ".bias"] if name + ".bias" in W else y

    x = W["model.embed_tokens.weight"][tokens]
    seq = len(tokens)
    mask = np.triu(np.full((seq, seq), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = rope(lin(h, p + "self_attn.q_proj"), n_head)
        k = rope(lin(h, p + "self_attn.k_proj"), n_kv)
        v = lin(h, p + "self_attn.v_proj")
        q = q.reshape(seq, n_head, hd).transpose(1, 0, 2)
        k = np.repeat(k.reshape(seq, n_kv, hd).transpose(1, 0, 2), n_head // n_kv, 0)
        v = np.repeat(v.reshape(seq, n_kv, hd).transpose(1, 0, 2), n_head // n_kv, 0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = (s @ v).transpose(1, 0, 2).reshape(seq, hidden)
        x = x + lin(a, p + "self_attn.o_proj")
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        g = lin(h, p + "mlp.gate_proj")
        u = lin(h, p + "mlp.up_proj")
        x = x + lin(g / (1 + np.exp(-g)) * u, p + "mlp.down_proj")
    x = rms(x, W["model.norm.weight"])
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    (x @ head.T).astype("<f4").tofile(out)


if __name__ == "__main__":
    main()
