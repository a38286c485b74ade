//! INT8 activations: the input of a linear as signed 8-bit codes with one
//! scale per token (dynamic: `max|x_t| / 127`, computed at run time) or one
//! for the whole tensor (static: calibrated beforehand, see
//! [`crate::quant::range`]), `x ≈ scale · q`, `q ∈ [−127, 127]`, four codes
//! packed per u32 little-endian as `dot4I8Packed` reads them.
//!
//! The INT8 × INT8 matmul ([`matmul_i8`]) takes 8-bit symmetric weights of
//! the affine encoding (codes `c ∈ [0, 255]`, zero-point 128, so
//! `c − 128` is the signed weight and `c ^ 0x80` its two's-complement
//! byte), or 4-bit weights with any zero-points (W4A8, [`w4`]): per
//! output, each group's integer dot product is accumulated exactly in i32,
//! then `y = s_t · Σ_g (scale_g · acc_g)` in f32, groups in order.
//! `shaders/matmul_i8.wgsl` computes the same in the same order.

use super::affine::scheme::round_half_up;
use super::{QuantScheme, QuantizedTensor};
use crate::error::{Error, Result};
use rayon::prelude::*;
use tiles::{Operands, Tiles};

mod tiles;
mod w4;

/// The largest code magnitude (symmetric: −127..=127).
pub const QMAX: f32 = 127.0;

/// How a linear's input is quantized when the model runs, as the llmq
/// format stores it beside the weight (`llmq.json`, the tensor's `input`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputQuant {
    /// Always 8.
    pub bits: u32,
    /// The static scale (`T / 127`); absent: one per token at run time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f32>,
}

impl InputQuant {
    /// An error naming `tensor` unless this is 8 bits with a finite,
    /// positive scale (or none).
    pub fn check(&self, tensor: &str) -> Result<()> {
        let bad_scale = self.scale.is_some_and(|s| !(s.is_finite() && s > 0.0));
        if self.bits != 8 || bad_scale {
            return Err(Error::BadTensor {
                name: tensor.into(),
                msg: format!(
                    "input quantization {} bits, scale {:?}: only 8-bit inputs with a finite \
                     positive scale (or per-token scales) run",
                    self.bits, self.scale
                ),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedActivations {
    pub tokens: usize,
    pub cols: usize,
    /// `[tokens, cols / 4]`: four i8 codes per word, column `4i + j` in byte `j`.
    pub packed: Vec<u32>,
    /// One per token.
    pub scales: Vec<f32>,
}

fn check(x: &[f32], tokens: usize, cols: usize) -> Result<()> {
    if x.len() != tokens * cols || !cols.is_multiple_of(4) {
        return Err(Error::Config(format!(
            "INT8 activations: {} values for {tokens} tokens x {cols} columns (columns must be a \
             multiple of 4)",
            x.len()
        )));
    }
    Ok(())
}

/// Codes of one token at `scale`: `clamp(⌊x / scale + ½⌋, −127, 127)`.
fn quantize_row(x: &[f32], scale: f32, out: &mut [u32]) {
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (w, xs) in out.iter_mut().zip(x.chunks_exact(4)) {
        *w = xs.iter().enumerate().fold(0u32, |acc, (j, &v)| {
            let q = round_half_up(v * inv).clamp(-QMAX, QMAX) as i32;
            acc | (((q as u8) as u32) << (8 * j))
        });
    }
}

/// Per-token (dynamic) quantization of `x` `[tokens, cols]`.
pub fn quantize_dynamic(x: &[f32], tokens: usize, cols: usize) -> Result<QuantizedActivations> {
    check(x, tokens, cols)?;
    let scale = |r: &[f32]| r.iter().fold(0f32, |m, v| m.max(v.abs())) / QMAX;
    let scales: Vec<f32> = match tokens < PARALLEL_TOKENS {
        true => x.chunks(cols.max(1)).map(scale).collect(),
        false => x.par_chunks(cols.max(1)).map(scale).collect(),
    };
    Ok(quantize_with(x, tokens, cols, scales))
}

/// Below this many tokens the work is too small to share out: waking the
/// pool costs more than it saves (decoding: one token).
pub(super) const PARALLEL_TOKENS: usize = 16;

/// Static quantization of `x` with one calibrated `scale` for every token.
pub fn quantize_static(
    x: &[f32],
    tokens: usize,
    cols: usize,
    scale: f32,
) -> Result<QuantizedActivations> {
    check(x, tokens, cols)?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::Config(format!(
            "static INT8 activation scale {scale}: it must be positive and finite (a dead \
             channel calibrates to 0; keep that linear's input in f32)"
        )));
    }
    Ok(quantize_with(x, tokens, cols, vec![scale; tokens]))
}

fn quantize_with(x: &[f32], tokens: usize, cols: usize, scales: Vec<f32>) -> QuantizedActivations {
    let wpr = cols / 4;
    let mut packed = vec![0u32; tokens * wpr];
    match tokens < PARALLEL_TOKENS {
        true => packed
            .chunks_mut(wpr.max(1))
            .zip(x.chunks(cols.max(1)))
            .zip(&scales)
            .for_each(|((out, xr), &s)| quantize_row(xr, s, out)),
        false => packed
            .par_chunks_mut(wpr.max(1))
            .zip(x.par_chunks(cols.max(1)))
            .zip(&scales)
            .for_each(|((out, xr), &s)| quantize_row(xr, s, out)),
    }
    QuantizedActivations {
        tokens,
        cols,
        packed,
        scales,
    }
}

impl QuantizedActivations {
    /// `scale · q` for every value, `[tokens, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let wpr = self.cols / 4;
        let mut out = Vec::with_capacity(self.tokens * self.cols);
        for t in 0..self.tokens {
            for &w in &self.packed[t * wpr..(t + 1) * wpr] {
                out.extend((0..4).map(|j| ((w >> (8 * j)) as u8 as i8) as f32 * self.scales[t]));
            }
        }
        out
    }
}

/// The group length of weights of `scheme` over `cols` columns when they
/// can take INT8 activations of `act_cols` columns: 8-bit symmetric codes
/// whose groups start on whole words of the activations, or 4-bit codes
/// (W4A8) whose groups and rows are whole words of 8 codes.
pub fn check_i8_scheme(scheme: &QuantScheme, cols: usize, act_cols: usize) -> Result<usize> {
    let glen = scheme.group_len(cols);
    let fits = match scheme.bits {
        8 => scheme.symmetric && glen.is_multiple_of(4),
        4 => glen.is_multiple_of(8) && cols.is_multiple_of(8),
        _ => false,
    };
    if !fits {
        return Err(Error::Config(format!(
            "the INT8-activation matmul takes 8-bit symmetric weights in groups of a multiple of \
             4 columns, or 4-bit weights in groups of a multiple of 8 (W4A8), not {} over {cols} \
             columns",
            scheme.label()
        )));
    }
    if act_cols != cols {
        return Err(Error::Config(format!(
            "INT8 activations of {act_cols} columns for a weight of {cols}"
        )));
    }
    Ok(glen)
}

/// The integer dot product of one row's group words with a token's words
/// (AVX2 where the CPU has it: the sum is exact either way).
fn group_dot(w: &[u32], x: &[u32], avx2: bool) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if avx2 && w.len() >= 8 {
        let whole = w.len() / 8 * 8;
        // SAFETY: `avx2` comes from `crate::encoding::avx2_fma()`, which
        // checked the CPU supports AVX2; the slices hold `whole` words.
        let head = unsafe { dot_i8_avx2(&w[..whole], &x[..whole]) };
        return head + group_dot_scalar(&w[whole..], &x[whole..]);
    }
    let _ = avx2;
    group_dot_scalar(w, x)
}

/// 32 code pairs per step: |w| (unsigned) times x with w's sign
/// (`vpsignb`), pairs summed to i16 (`vpmaddubsw`: at most 2·128·127, no
/// saturation), then to i32 (`vpmaddwd`), as llama.cpp's q8_0 dot does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(w: &[u32], x: &[u32]) -> i32 {
    use std::arch::x86_64::*;
    let (flip, ones) = (_mm256_set1_epi8(-128), _mm256_set1_epi16(1));
    let mut acc = _mm256_setzero_si256();
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        let a = _mm256_xor_si256(_mm256_loadu_si256(wc.as_ptr().cast()), flip);
        let b = _mm256_loadu_si256(xc.as_ptr().cast());
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ones));
    }
    hsum_i32(acc)
}

/// The sum of the eight i32 lanes of `v`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn hsum_i32(v: std::arch::x86_64::__m256i) -> i32 {
    use std::arch::x86_64::*;
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

fn group_dot_scalar(w: &[u32], x: &[u32]) -> i32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| {
            let a = a ^ 0x8080_8080;
            (0..4)
                .map(|j| ((a >> (8 * j)) as u8 as i8) as i32 * ((b >> (8 * j)) as u8 as i8) as i32)
                .sum::<i32>()
        })
        .sum()
}

/// `y = x · Wᵀ` with INT8 activations and 8-bit (or 4-bit) weights: `[tokens, rows]`.
/// The CPU reference of `shaders/matmul_i8.wgsl` (same order of f32
/// operations); register tiles ([`tiles`]) where the CPU has them, rows in
/// parallel for a few tokens, token blocks in parallel for batches.
pub fn matmul_i8(w: &QuantizedTensor, a: &QuantizedActivations) -> Result<Vec<f32>> {
    matmul_i8_on(CpuInt8Kernel::Best, w, a)
}

/// Which CPU code runs [`matmul_i8`] (all give the same bits; the choice
/// is for tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CpuInt8Kernel {
    /// VNNI tiles, else AVX2 tiles, else the portable loop.
    Best,
    /// AVX2 tiles without VNNI where the CPU has AVX2.
    Avx2,
    /// One output at a time.
    Portable,
}

/// [`matmul_i8`] on the chosen kernel (falling back to the portable loop
/// where the CPU or the group length does not allow it).
pub fn matmul_i8_on(
    kernel: CpuInt8Kernel,
    w: &QuantizedTensor,
    a: &QuantizedActivations,
) -> Result<Vec<f32>> {
    let glen = check_i8_scheme(&w.scheme, w.cols, a.cols)?;
    w.validate("INT8 matmul weight")?;
    let (wpr, gw) = (w.words_per_row(), glen / 4);
    let mut y = vec![0f32; a.tokens * w.rows];
    if a.tokens == 0 || w.rows == 0 {
        return Ok(y);
    }
    if w.scheme.bits == 4 {
        if a.tokens >= PARALLEL_TOKENS && kernel != CpuInt8Kernel::Portable {
            // Batches: widened to W8 codes, the same sums on the tiles.
            return matmul_i8_on(kernel, &w4::widen_to_w8(w)?, a);
        }
        // A few tokens: AVX2 where the CPU has it.
        w4::matmul_w4(w, a, glen, &mut y);
        return Ok(y);
    }
    let tiles = Tiles::detect(gw, wpr).filter(|_| a.cols / 4 == wpr);
    let tiles = match kernel {
        CpuInt8Kernel::Best => tiles,
        CpuInt8Kernel::Avx2 => tiles.map(|_| Tiles::Avx2),
        CpuInt8Kernel::Portable => None,
    };
    match tiles {
        Some(tiles) => matmul_tiled(tiles, w, a, gw, &mut y),
        None => matmul_portable(w, a, gw, &mut y),
    }
    Ok(y)
}

/// Tokens per parallel block of a batch: the block's activations stay in
/// cache while every row passes over them; larger blocks read the weight
/// fewer times (64: 382 vs 195 GOP/s at 4096² × 512 tokens on 2 Zen cores),
/// smaller ones keep both cores busy on short batches.
fn token_block(tokens: usize) -> usize {
    if tokens >= 128 {
        64
    } else {
        16
    }
}

fn matmul_tiled(
    tiles: Tiles,
    w: &QuantizedTensor,
    a: &QuantizedActivations,
    gw: usize,
    y: &mut [f32],
) {
    let wpr = w.words_per_row();
    let groups = wpr.div_ceil(gw);
    // `128 · Σ x` per group and token (VNNI's unsigned operand is w + 128).
    let offset = |i: usize| {
        let (g, t) = (i / a.tokens, i % a.tokens);
        let words = &a.packed[t * wpr + g * gw..t * wpr + ((g + 1) * gw).min(wpr)];
        let sum: i32 = words
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .map(|b| b as i8 as i32)
            .sum();
        128 * sum
    };
    let offsets = match (tiles.offset(), a.tokens >= PARALLEL_TOKENS) {
        (false, _) => Vec::new(),
        (true, true) => (0..groups * a.tokens).into_par_iter().map(offset).collect(),
        (true, false) => (0..groups * a.tokens).map(offset).collect(),
    };
    let op = Operands {
        w: &w.packed,
        w_scales: &w.scales,
        rows: w.rows,
        words_per_row: wpr,
        groups,
        group_words: gw,
        x: &a.packed,
        x_scales: &a.scales,
        tokens: a.tokens,
        offsets,
    };
    let rows = w.rows;
    let tb = token_block(a.tokens);
    if a.tokens >= 2 * tb {
        // Batches: each token block against every row, 2 rows x 4 tokens a tile.
        y.par_chunks_mut(rows * tb).enumerate().for_each(|(b, yb)| {
            let t0 = b * tb;
            let tokens = yb.len() / rows;
            for r in (0..rows).step_by(2) {
                for t in (0..tokens).step_by(4) {
                    let tile = tiles.tile::<2, 4>(&op, r, t0 + t);
                    for (i, row) in tile.iter().enumerate().take(rows - r) {
                        for (j, &v) in row.iter().enumerate().take(tokens - t) {
                            yb[(t + j) * rows + r + i] = v;
                        }
                    }
                }
            }
        });
        return;
    }
    // A few tokens: blocks of rows in parallel, 8 rows x 1 token a tile.
    let block = rows
        .div_ceil(4 * rayon::current_num_threads())
        .max(64)
        .next_multiple_of(8);
    for (t, yt) in y.chunks_mut(rows).enumerate() {
        yt.par_chunks_mut(block).enumerate().for_each(|(b, out)| {
            for (r, o) in (b * block..).step_by(8).zip(out.chunks_mut(8)) {
                let tile = tiles.tile::<8, 1>(&op, r, t);
                for (v, tv) in o.iter_mut().zip(&tile) {
                    *v = tv[0];
                }
            }
        });
    }
}

/// Any group length and CPU: one output at a time, tokens in parallel.
fn matmul_portable(w: &QuantizedTensor, a: &QuantizedActivations, gw: usize, y: &mut [f32]) {
    let (wpr, xpr, gpr) = (w.words_per_row(), a.cols / 4, w.n_groups());
    let avx2 = super::avx2_fma();
    y.par_chunks_mut(w.rows).enumerate().for_each(|(t, yt)| {
        let x = &a.packed[t * xpr..(t + 1) * xpr];
        for (r, out) in yt.iter_mut().enumerate() {
            let row = &w.packed[r * wpr..(r + 1) * wpr];
            let mut acc = 0f32;
            for g in 0..gpr {
                let k = g * gw..((g + 1) * gw).min(xpr);
                acc += w.scales[r * gpr + g] * group_dot(&row[k.clone()], &x[k], avx2) as f32;
            }
            *out = a.scales[t] * acc;
        }
    });
}
