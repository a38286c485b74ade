//! The CPU building blocks of the forward pass, f32: RMSNorm, RoPE, causal
//! grouped-query attention, SiLU and the dense `x · Wᵀ`. Public so the GPU
//! kernels can be cross-checked against them one by one.

use crate::gemm::{self, dot};
use rayon::prelude::*;

/// Values per parallel task of the elementwise ops. One task's worth or
/// less (a decode step) runs on the calling thread; GPTQ's calibration
/// forward (65 536 tokens × 4096 on a 7B model) spreads over every core.
const PAR_CHUNK: usize = 1 << 16;

/// Whole rows of `width` per parallel task (at least one).
fn rows_per_task(width: usize) -> usize {
    (PAR_CHUNK / width.max(1)).max(1)
}

/// x · rsqrt(mean(x²) + eps) · w, per row of `x`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let n = w.len();
    let mut out = vec![0f32; x.len() / n.max(1) * n];
    let norm_rows = |out: &mut [f32], x: &[f32]| {
        for (o, row) in out.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let r = 1.0 / (ms + eps).sqrt();
            for ((o, v), w) in o.iter_mut().zip(row).zip(w) {
                *o = v * r * w;
            }
        }
    };
    zip_chunks(&mut out, x, rows_per_task(n) * n, norm_rows);
    out
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `f` over matching pieces of `len` values of `dst` and `src`, in
/// parallel when they are longer than one piece.
fn zip_chunks(dst: &mut [f32], src: &[f32], len: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) {
    if dst.len() <= len {
        f(dst, src);
    } else {
        dst.par_chunks_mut(len)
            .zip(src.par_chunks(len))
            .for_each(|(d, s)| f(d, s));
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`: the SwiGLU activation.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    zip_chunks(gate, up, PAR_CHUNK, |gate, up| {
        for (g, u) in gate.iter_mut().zip(up) {
            *g = silu(*g) * u;
        }
    });
}

pub fn add_in_place(dst: &mut [f32], src: &[f32]) {
    zip_chunks(dst, src, PAR_CHUNK, |dst, src| {
        for (d, s) in dst.iter_mut().zip(src) {
            *d += s;
        }
    });
}

/// Adds `bias` to every row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

/// RoPE rotation frequencies `θ^(−2i/d)` for `i < hd/2`, in f64 so long
/// positions keep their precision.
pub fn rope_inv_freq(hd: usize, theta: f32) -> Vec<f64> {
    (0..hd / 2)
        .map(|i| (theta as f64).powf(-2.0 * i as f64 / hd as f64))
        .collect()
}

/// cos/sin for each position and rotation pair: angle = pos · inv_freq[i].
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Positions `start..start + seq`.
    pub fn new(start: usize, seq: usize, inv_freq: &[f64]) -> Self {
        let half = inv_freq.len();
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in start..start + seq {
            for &f in inv_freq {
                let ang = p as f64 * f;
                cos.push(ang.cos() as f32);
                sin.push(ang.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotation pairs per head (`hd / 2`).
    pub fn pairs(&self) -> usize {
        self.half
    }

    /// cos and sin, `[seq, pairs]` each (the GPU kernel uploads them).
    pub fn cos_sin(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// Rotates `x` (`[seq, heads * hd]`, row `p` at position `start + p`) in
    /// place. `adjacent`: pairs (2i, 2i+1) as GGUF stores q/k; otherwise
    /// (i, i + hd/2) as in Hugging Face checkpoints.
    pub fn apply(&self, x: &mut [f32], heads: usize, adjacent: bool) {
        let half = self.half;
        let width = heads * 2 * half;
        let rotate_rows = |first: usize, rows: &mut [f32]| {
            for (p, row) in rows.chunks_exact_mut(width).enumerate() {
                let p = first + p;
                let (cos, sin) = (&self.cos[p * half..][..half], &self.sin[p * half..][..half]);
                for head in row.chunks_exact_mut(2 * half) {
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
        };
        let rows = rows_per_task(width);
        if x.len() <= rows * width {
            rotate_rows(0, x);
        } else {
            x.par_chunks_mut(rows * width)
                .enumerate()
                .for_each(|(b, block)| rotate_rows(b * rows, block));
        }
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Causal grouped-query attention. `q` is `[seq, heads·hd]` at positions
/// `start..start + seq`; `k`, `v` are `[start + seq, kv_heads·hd]` (the
/// cached past followed by this call's keys). Returns `[seq, heads·hd]`.
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    start: usize,
    s: AttnShape,
) -> Vec<f32> {
    let (nh, nkv, hd) = (s.heads, s.kv_heads, s.head_dim);
    let kvw = nkv * hd;
    let total = start + seq;
    debug_assert_eq!(q.len(), seq * nh * hd);
    debug_assert_eq!(k.len(), total * kvw);
    let scale = 1.0 / (hd as f32).sqrt();
    let group = nh / nkv;
    // One task per head; each writes its own [seq, hd] block, interleaved after.
    let heads: Vec<Vec<f32>> = (0..nh)
        .into_par_iter()
        .map(|head| {
            let kvh = head / group;
            let q = &q[head * hd..];
            let (k, v) = (&k[kvh * hd..], &v[kvh * hd..]);
            if seq >= gemm::MIN_TOKENS {
                head_attention_gemm(q, k, v, seq, start, s, scale)
            } else {
                head_attention_rows(q, k, v, seq, start, s, scale)
            }
        })
        .collect();
    let width = nh * hd;
    let mut out = vec![0f32; seq * width];
    for (head, ho) in heads.iter().enumerate() {
        for t in 0..seq {
            out[t * width + head * hd..][..hd].copy_from_slice(&ho[t * hd..(t + 1) * hd]);
        }
    }
    out
}

/// One head, query row by query row (decoding: few queries). `q`, `k`, `v`
/// start at this head's columns; rows are `heads·hd` / `kv_heads·hd` apart.
fn head_attention_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    start: usize,
    s: AttnShape,
    scale: f32,
) -> Vec<f32> {
    let hd = s.head_dim;
    let (qw, kvw) = (s.heads * hd, s.kv_heads * hd);
    let mut out = vec![0f32; seq * hd];
    let mut scores = vec![0f32; start + seq];
    for t in 0..seq {
        let visible = start + t + 1;
        let qt = &q[t * qw..][..hd];
        let mut max = f32::NEG_INFINITY;
        for (j, sc) in scores.iter_mut().enumerate().take(visible) {
            *sc = dot(qt, &k[j * kvw..][..hd]) * scale;
            max = max.max(*sc);
        }
        let mut sum = 0f32;
        for sc in &mut scores[..visible] {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        let ot = &mut out[t * hd..(t + 1) * hd];
        for (j, &p) in scores[..visible].iter().enumerate() {
            let p = p / sum;
            for (o, &vv) in ot.iter_mut().zip(&v[j * kvw..][..hd]) {
                *o += p * vv;
            }
        }
    }
    out
}

/// One head as two SGEMMs (prefill: many queries): `S = q·kᵀ`, causal
/// softmax per row, `O = P·v`. Masked scores are computed and discarded,
/// which SGEMM's speed more than pays for.
fn head_attention_gemm(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq: usize,
    start: usize,
    s: AttnShape,
    scale: f32,
) -> Vec<f32> {
    let hd = s.head_dim;
    let (qw, kvw) = (s.heads * hd, s.kv_heads * hd);
    let total = start + seq;
    debug_assert!(q.len() >= (seq - 1) * qw + hd);
    debug_assert!(k.len() >= (total - 1) * kvw + hd && v.len() >= (total - 1) * kvw + hd);
    let mut p = vec![0f32; seq * total];
    // SAFETY: strides address `seq x hd` of q, `hd x total` of kᵀ and
    // `seq x total` of p, all inside the slices (checked above).
    unsafe {
        matrixmultiply::sgemm(
            seq,
            hd,
            total,
            scale,
            q.as_ptr(),
            qw as isize,
            1,
            k.as_ptr(),
            1,
            kvw as isize,
            0.0,
            p.as_mut_ptr(),
            total as isize,
            1,
        );
    }
    for (t, row) in p.chunks_exact_mut(total).enumerate() {
        let visible = start + t + 1;
        let max = row[..visible]
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0f32;
        for x in &mut row[..visible] {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        row[..visible].iter_mut().for_each(|x| *x *= inv);
        row[visible..].iter_mut().for_each(|x| *x = 0.0);
    }
    let mut out = vec![0f32; seq * hd];
    // SAFETY: `seq x total` of p, `total x hd` of v, `seq x hd` of out.
    unsafe {
        matrixmultiply::sgemm(
            seq,
            total,
            hd,
            1.0,
            p.as_ptr(),
            total as isize,
            1,
            v.as_ptr(),
            kvw as isize,
            1,
            0.0,
            out.as_mut_ptr(),
            hd as isize,
            1,
        );
    }
    out
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
    if m >= gemm::MIN_TOKENS {
        return gemm::dense_xwt(x, w, m, k, n);
    }
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

/// Counts of `min(⌊|x|·inv_width⌋, bins − 1)` over `x` (the f32 product
/// and saturating truncation of shaders/histogram.wgsl).
pub fn abs_histogram(x: &[f32], bins: usize, inv_width: f32) -> Vec<u32> {
    let last = bins.saturating_sub(1) as u32;
    x.par_chunks(1 << 16)
        .fold(
            || vec![0u32; bins],
            |mut c, xs| {
                for &v in xs {
                    c[((v.abs() * inv_width) as u32).min(last) as usize] += 1;
                }
                c
            },
        )
        .reduce(
            || vec![0u32; bins],
            |mut a, b| {
                a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
                a
            },
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both attention paths (row loop and SGEMM) agree, with a cached past.
    #[test]
    fn attention_paths_agree() {
        let s = AttnShape {
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
        };
        let (seq, start) = (11, 5);
        let val = |i: usize| ((i * 7919 % 113) as f32 - 56.0) / 40.0;
        let q: Vec<f32> = (0..seq * 32).map(val).collect();
        let k: Vec<f32> = (0..(start + seq) * 16).map(|i| val(i + 3)).collect();
        let v: Vec<f32> = (0..(start + seq) * 16).map(|i| val(i + 11)).collect();
        let scale = 1.0 / 8f32.sqrt();
        for head in 0..4 {
            let kvh = head / 2;
            let (q, k, v) = (&q[head * 8..], &k[kvh * 8..], &v[kvh * 8..]);
            let a = head_attention_rows(q, k, v, seq, start, s, scale);
            let b = head_attention_gemm(q, k, v, seq, start, s, scale);
            for (x, y) in a.iter().zip(&b) {
                assert!((x - y).abs() < 1e-5, "head {head}: {x} vs {y}");
            }
        }
    }
}
