#!/usr/bin/env python3
"""Independent numpy forward pass of a Llama-family GGUF model, for
tests/forward_reference.rs (as a script) and tests/py/perplexity.py (as a
module: `LlamaModel(path).logits(tokens)`).

usage: llama_forward.py MODEL.gguf OUT.f32 TOKEN[,TOKEN...]

Writes the logits [seq, vocab] as raw little-endian f32 to OUT.f32 and prints
one JSON line {"seq", "vocab", "argmax": [...]}. Tensors are read and
dequantized by llama.cpp's own `gguf` package; the maths runs in float64.
q/k weights are un-permuted back to the Hugging Face layout and RoPE uses
half-split pairs, so the adjacent-pair layout of the Rust side is checked
against a different but equivalent formulation.
"""
import json
import sys

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:
    sys.exit(f"llama_forward.py: {e}; run: pip install -r scripts/requirements-test.txt")


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"llama_forward.py: metadata key {key} missing")
        return default
    return f.contents()


class LlamaModel:
    """A GGUF Llama model; weights are dequantized once, on first use, in float64."""

    def __init__(self, path):
        r = gguf.GGUFReader(path)
        self.reader = r
        arch = field(r, "general.architecture")
        self.hidden = int(field(r, f"{arch}.embedding_length"))
        self.n_layers = int(field(r, f"{arch}.block_count"))
        self.n_head = int(field(r, f"{arch}.attention.head_count"))
        self.n_kv = int(field(r, f"{arch}.attention.head_count_kv", self.n_head))
        self.theta = float(field(r, f"{arch}.rope.freq_base", 10000.0))
        self.eps = float(field(r, f"{arch}.attention.layer_norm_rms_epsilon"))
        self.hd = self.hidden // self.n_head
        self.by_name = {t.name: t for t in r.tensors}
        self.cache = {}

    def w(self, name):
        if name not in self.cache:
            t = self.by_name[name]
            a = quants.dequantize(t.data, t.tensor_type)
            a = a.reshape([int(d) for d in reversed(t.shape.tolist())]).astype(np.float64)
            if name.endswith(("attn_q.weight", "attn_k.weight")):
                heads = self.n_head if name.endswith("attn_q.weight") else self.n_kv
                a = self.unpermute(a, heads)
            self.cache[name] = a
        return self.cache[name]

    def unpermute(self, m, heads):
        # Inverse of llama.cpp convert_hf_to_gguf's permute(): back to HF rows.
        hd = self.hd
        return m.reshape(heads, hd // 2, 2, m.shape[1]).swapaxes(1, 2).reshape(m.shape)

    def rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * g

    def rope(self, x, heads):  # x [seq, heads*hd], half-split pairs
        hd = self.hd
        seq = x.shape[0]
        x = x.reshape(seq, heads, hd)
        inv = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.arange(seq, dtype=np.float64)[:, None] * inv[None, :]
        cos = np.concatenate([np.cos(ang)] * 2, -1)[:, None, :]
        sin = np.concatenate([np.sin(ang)] * 2, -1)[:, None, :]
        rot = np.concatenate([-x[..., hd // 2:], x[..., : hd // 2]], -1)
        return (x * cos + rot * sin).reshape(seq, heads * hd)

    def logits(self, tokens):
        """float64 logits [len(tokens), vocab] of one sequence from position 0."""
        w, hd, n_head, n_kv = self.w, self.hd, self.n_head, self.n_kv
        embed = w("token_embd.weight")
        x = embed[tokens]
        seq = len(tokens)
        mask = np.triu(np.full((seq, seq), -np.inf), 1)
        for i in range(self.n_layers):
            p = f"blk.{i}."
            h = self.rms(x, w(p + "attn_norm.weight"))
            q = self.rope(h @ w(p + "attn_q.weight").T, n_head)
            k = self.rope(h @ w(p + "attn_k.weight").T, n_kv)
            v = h @ w(p + "attn_v.weight").T
            q = q.reshape(seq, n_head, hd).transpose(1, 0, 2)
            k = np.repeat(k.reshape(seq, n_kv, hd).transpose(1, 0, 2), n_head // n_kv, 0)
            v = np.repeat(v.reshape(seq, n_kv, hd).transpose(1, 0, 2), n_head // n_kv, 0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(seq, self.hidden)
            x = x + a @ w(p + "attn_output.weight").T
            h = self.rms(x, w(p + "ffn_norm.weight"))
            g = h @ w(p + "ffn_gate.weight").T
            u = h @ w(p + "ffn_up.weight").T
            x = x + (g / (1 + np.exp(-g)) * u) @ w(p + "ffn_down.weight").T
        x = self.rms(x, w("output_norm.weight"))
        head = w("output.weight") if "output.weight" in self.by_name else embed
        return x @ head.T


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    path, out, toks = sys.argv[1], sys.argv[2], sys.argv[3]
    tokens = [int(t) for t in toks.split(",")]
    logits = LlamaModel(path).logits(tokens)
    logits.astype("<f4").tofile(out)
    print(json.dumps({"seq": len(tokens), "vocab": int(logits.shape[1]),
                      "argmax": [int(j) for j in logits.argmax(-1)]}))


if __name__ == "__main__":
    main()
