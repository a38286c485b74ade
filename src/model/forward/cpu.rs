//! The f32 CPU forward: RMSNorm, RoPE, GQA causal attention, SwiGLU.

use super::{LayerWeights, LinearInput, LinearSite, LlamaWeights};
use crate::backend::cpu::matmul::dot;
use crate::error::{Error, Result};
use crate::model::view::ModelView;
use rayon::prelude::*;

/// Runs a Llama-family model on one sequence (positions `0..seq`).
pub struct CpuForward {
    pub weights: LlamaWeights,
}

impl CpuForward {
    pub fn new(weights: LlamaWeights) -> Self {
        Self { weights }
    }

    pub fn load(view: &ModelView) -> Result<Self> {
        Ok(Self::new(LlamaWeights::load(view)?))
    }

    /// Logits `[seq, vocab]` for every position of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let seq = tokens.len();
        let mut hidden = self.embed(tokens)?;
        for i in 0..self.weights.layers.len() {
            self.layer(i, &mut hidden, seq, &mut |_| {})?;
        }
        self.final_norm_and_head(&hidden)
    }

    /// Token embeddings `[seq, hidden]`; checks the ids and the length.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let a = &self.weights.arch;
        if tokens.is_empty() {
            return Err(Error::Config(
                "forward pass needs at least one token".into(),
            ));
        }
        if tokens.len() > a.context_length {
            return Err(Error::Config(format!(
                "{} tokens exceed the model's context length {}",
                tokens.len(),
                a.context_length
            )));
        }
        let h = a.hidden_size;
        let mut out = Vec::with_capacity(tokens.len() * h);
        for (pos, &t) in tokens.iter().enumerate() {
            if t as usize >= a.vocab_size {
                return Err(Error::Config(format!(
                    "token id {t} at position {pos} is outside the vocabulary ({} ids)",
                    a.vocab_size
                )));
            }
            let t = t as usize;
            out.extend_from_slice(&self.weights.embed[t * h..(t + 1) * h]);
        }
        Ok(out)
    }

    /// Applies decoder layer `i` to `hidden` (`[seq, hidden]`) in place. The
    /// hook sees the input of each linear before it is applied.
    pub fn layer(
        &self,
        i: usize,
        hidden: &mut [f32],
        seq: usize,
        hook: &mut dyn FnMut(LinearInput),
    ) -> Result<()> {
        let a = &self.weights.arch;
        let lw = self.weights.layers.get(i).ok_or_else(|| {
            Error::Config(format!(
                "layer {i} out of range (model has {})",
                self.weights.layers.len()
            ))
        })?;
        let h = a.hidden_size;
        if seq == 0 || hidden.len() != seq * h {
            return Err(Error::Config(format!(
                "hidden state has {} values, expected seq {seq} x hidden {h}",
                hidden.len()
            )));
        }
        let mut call = |site, x: &[f32], width| {
            hook(LinearInput {
                layer: i,
                site,
                x,
                seq,
                width,
            })
        };

        // Attention block.
        let x = rms_norm(hidden, &lw.attn_norm, a.rms_norm_eps);
        call(LinearSite::AttnQkv, &x, h);
        let attn = self.attention(lw, &x, seq);
        call(LinearSite::AttnOutput, &attn, h);
        let o = matmul_t(&attn, &lw.o, seq, h, h);
        add_in_place(hidden, &o);

        // SwiGLU MLP.
        let f = a.intermediate_size;
        let x = rms_norm(hidden, &lw.ffn_norm, a.rms_norm_eps);
        call(LinearSite::MlpGateUp, &x, h);
        let mut g = matmul_t(&x, &lw.gate, seq, h, f);
        let u = matmul_t(&x, &lw.up, seq, h, f);
        for (g, u) in g.iter_mut().zip(&u) {
            *g = silu(*g) * u;
        }
        call(LinearSite::MlpDown, &g, f);
        let d = matmul_t(&g, &lw.down, seq, f, h);
        add_in_place(hidden, &d);
        Ok(())
    }

    /// Final RMSNorm and output head: logits `[seq, vocab]`.
    pub fn final_norm_and_head(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let a = &self.weights.arch;
        let h = a.hidden_size;
        if hidden.is_empty() || !hidden.len().is_multiple_of(h) {
            return Err(Error::Config(format!(
                "hidden state has {} values, not a multiple of hidden {h}",
                hidden.len()
            )));
        }
        let seq = hidden.len() / h;
        let x = rms_norm(hidden, &self.weights.final_norm, a.rms_norm_eps);
        let head = self.weights.head.as_deref().unwrap_or(&self.weights.embed);
        Ok(matmul_t(&x, head, seq, h, a.vocab_size))
    }

    /// q/k/v projections, RoPE, causal GQA attention: `[seq, hidden]`.
    fn attention(&self, lw: &LayerWeights, x: &[f32], seq: usize) -> Vec<f32> {
        let a = &self.weights.arch;
        let (h, hd) = (a.hidden_size, a.head_dim());
        let (nh, nkv) = (a.num_heads, a.num_kv_heads);
        let kvw = nkv * hd;
        let mut q = matmul_t(x, &lw.q, seq, h, nh * hd);
        let mut k = matmul_t(x, &lw.k, seq, h, kvw);
        let v = matmul_t(x, &lw.v, seq, h, kvw);
        let rope = RopeTable::new(seq, hd, a.rope_theta);
        rope.apply(&mut q, nh, hd, a.rope_adjacent_pairs);
        rope.apply(&mut k, nkv, hd, a.rope_adjacent_pairs);

        let scale = 1.0 / (hd as f32).sqrt();
        let group = nh / nkv;
        // One task per head; each writes its own [seq, hd] block, interleaved after.
        let heads: Vec<Vec<f32>> = (0..nh)
            .into_par_iter()
            .map(|head| {
                let kvh = head / group;
                let mut out = vec![0f32; seq * hd];
                let mut scores = vec![0f32; seq];
                for t in 0..seq {
                    let qt = &q[t * nh * hd + head * hd..][..hd];
                    let mut max = f32::NEG_INFINITY;
                    for (s, sc) in scores.iter_mut().enumerate().take(t + 1) {
                        let ks = &k[s * kvw + kvh * hd..][..hd];
                        *sc = dot(qt, ks) * scale;
                        max = max.max(*sc);
                    }
                    let mut sum = 0f32;
                    for sc in &mut scores[..=t] {
                        *sc = (*sc - max).exp();
                        sum += *sc;
                    }
                    let ot = &mut out[t * hd..(t + 1) * hd];
                    for (s, &p) in scores[..=t].iter().enumerate() {
                        let vs = &v[s * kvw + kvh * hd..][..hd];
                        let p = p / sum;
                        for (o, &vv) in ot.iter_mut().zip(vs) {
                            *o += p * vv;
                        }
                    }
                }
                out
            })
            .collect();
        let mut out = vec![0f32; seq * h];
        for (head, ho) in heads.iter().enumerate() {
            for t in 0..seq {
                out[t * h + head * hd..][..hd].copy_from_slice(&ho[t * hd..(t + 1) * hd]);
            }
        }
        out
    }
}

/// cos/sin for each position and rotation pair: angle = pos · θ^(−2i/d).
struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    fn new(seq: usize, hd: usize, theta: f32) -> Self {
        let half = hd / 2;
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in 0..seq {
            for i in 0..half {
                // f64 so long positions keep their precision.
                let freq = (theta as f64).powf(-2.0 * i as f64 / hd as f64);
                let ang = p as f64 * freq;
                cos.push(ang.cos() as f32);
                sin.push(ang.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates `x` (`[seq, heads * hd]`) in place. `adjacent`: pairs
    /// (2i, 2i+1) as GGUF stores q/k; otherwise (i, i + hd/2) as in HF.
    fn apply(&self, x: &mut [f32], heads: usize, hd: usize, adjacent: bool) {
        let half = self.half;
        for (p, row) in x.chunks_exact_mut(heads * hd).enumerate() {
            let (cos, sin) = (&self.cos[p * half..][..half], &self.sin[p * half..][..half]);
            for head in row.chunks_exact_mut(hd) {
                for i in 0..half {
                    let (a, b) = if adjacent {
                        (2 * i, 2 * i + 1)
                    } else {
                        (i, i + half)
                    };
                    let (x0, x1) = (head[a], head[b]);
                    head[a] = x0 * cos[i] - x1 * sin[i];
                    head[b] = x0 * sin[i] + x1 * cos[i];
                }
            }
        }
    }
}

/// x · rsqrt(mean(x²) + eps) · w, per row of `x`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(n) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
        let r = 1.0 / (ms + eps).sqrt();
        out.extend(row.iter().zip(w).map(|(v, w)| v * r * w));
    }
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn add_in_place(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// Dot products of four consecutive `k`-long rows of `xs` with `w`.
fn dot4(xs: &[f32], w: &[f32], k: usize) -> [f32; 4] {
    let (x0, x1, x2, x3) = (&xs[..k], &xs[k..2 * k], &xs[2 * k..3 * k], &xs[3 * k..]);
    let mut acc = [[0f32; 8]; 4];
    let n8 = k / 8 * 8;
    for c in (0..n8).step_by(8) {
        let wc = &w[c..c + 8];
        for (a, xr) in acc.iter_mut().zip([x0, x1, x2, x3]) {
            let xc = &xr[c..c + 8];
            for l in 0..8 {
                a[l] += xc[l] * wc[l];
            }
        }
    }
    let mut out = [0f32; 4];
    for (o, (a, xr)) in out.iter_mut().zip(acc.iter().zip([x0, x1, x2, x3])) {
        let tail: f32 = xr[n8..].iter().zip(&w[n8..k]).map(|(x, y)| x * y).sum();
        *o = a.iter().sum::<f32>() + tail;
    }
    out
}

/// Weight rows per parallel task: small enough to spread over the cores,
/// large enough that the activations stay in cache across the rows.
const ROW_BLOCK: usize = 32;

/// `y = x · Wᵀ`: `x` `[m, k]`, `w` `[n, k]` → `[m, n]`. Parallel over
/// blocks of weight rows, since weights dominate the traffic.
pub fn matmul_t(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    debug_assert_eq!(x.len(), m * k);
    debug_assert_eq!(w.len(), n * k);
    // Computed transposed ([n, m]) so each task owns a contiguous block.
    let mut yt = vec![0f32; n * m];
    yt.par_chunks_mut(ROW_BLOCK * m)
        .enumerate()
        .for_each(|(blk, out)| {
            let r0 = blk * ROW_BLOCK;
            for (j, orow) in out.chunks_exact_mut(m).enumerate() {
                let wr = &w[(r0 + j) * k..][..k];
                // Four activation rows per pass over the weight row: each
                // weight load feeds four multiply-adds.
                let mut quads = orow.chunks_exact_mut(4);
                for (qi, o4) in (&mut quads).enumerate() {
                    let xs = &x[qi * 4 * k..][..4 * k];
                    o4.copy_from_slice(&dot4(xs, wr, k));
                }
                let done = m - quads.into_remainder().len();
                for (i, o) in orow.iter_mut().enumerate().skip(done) {
                    *o = dot(&x[i * k..][..k], wr);
                }
            }
        });
    let mut y = vec![0f32; m * n];
    for (j, col) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            y[i * n + j] = v;
        }
    }
    y
}
