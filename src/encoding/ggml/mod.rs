//! llama.cpp's ggml tensor types as a stored encoding: each block type is
//! its ggml-common.h `block_*` struct (`#[repr(C)]`, size asserted; f16
//! fields kept as raw bytes so every struct has alignment 1 and can be
//! cast from any file offset), its dequantization and, where llmq-gpu
//! writes it, its quantizer, following ggml-quants.c operation for
//! operation so that both match llama.cpp bit for bit. The GGUF reader
//! and writer (`formats::gguf`) dispatch here by [`GgmlType`].

mod activations;
mod coded;
mod gemv;
mod grid;
mod iq4_nl;
mod kquants;
mod legacy;
mod tensor;
mod types;

pub use activations::{activation_rounding, round_activations, ActivationRounding};
pub use coded::{layout, round, Layout, Rounding, GRID_TYPES};
pub use grid::GgmlGrid;
pub(crate) use tensor::parts;
pub use tensor::{row_bytes, GgmlTensor};
pub use types::GgmlType;

pub(crate) use coded::Header;

use crate::error::{Error, Result};
use bytemuck::Pod;
use half::{bf16, f16};
use iq4_nl::BlockIq4Nl;
use kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K};
use legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use rayon::prelude::*;

/// Elements per super-block of the k-quants (QK_K).
const QK_K: usize = 256;
/// Blocks handed to one rayon task: keeps task overhead small.
const BLOCKS_PER_TASK: usize = 64;

fn h(b: [u8; 2]) -> f32 {
    f16::from_le_bytes(b).to_f32()
}

/// `GGML_FP32_TO_FP16` (round to nearest even), as stored.
fn f16_bits(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

/// A quantized block: `N` weights in `size_of::<Self>()` bytes.
trait Block: Pod + Send + Sync {
    const N: usize;
    fn dequant(&self, y: &mut [f32]);
}

/// A block type llmq-gpu writes: llama.cpp's reference quantizer
/// (`quantize_row_*_ref`, what `llama-quantize` runs without an imatrix).
trait Quantize: Block {
    fn quantize(x: &[f32]) -> Self;
}

fn blocks<B: Block>(bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    let blocks: &[B] = bytemuck::try_cast_slice(bytes).ok()?;
    if blocks.len() * B::N != n {
        return None;
    }
    let mut out = vec![0f32; n];
    out.par_chunks_mut(B::N * BLOCKS_PER_TASK)
        .zip(blocks.par_chunks(BLOCKS_PER_TASK))
        .for_each(|(y, bs)| {
            for (y, b) in y.chunks_exact_mut(B::N).zip(bs) {
                b.dequant(y);
            }
        });
    Some(out)
}

/// Element-wise types: `W` bytes per value.
fn scalars<const W: usize>(bytes: &[u8], n: usize, f: fn([u8; W]) -> f32) -> Option<Vec<f32>> {
    if bytes.len() != n * W {
        return None;
    }
    let mut out = vec![0f32; n];
    out.par_chunks_mut(4096)
        .zip(bytes.par_chunks(4096 * W))
        .for_each(|(y, b)| {
            for (y, b) in y.iter_mut().zip(b.chunks_exact(W)) {
                let mut a = [0u8; W];
                a.copy_from_slice(b);
                *y = f(a);
            }
        });
    Some(out)
}

/// `n` elements of type `ty` from `bytes` as f32. `None` when the type is
/// not one of [`GgmlType::dequantizable`] or the byte count is wrong
/// (callers check both first and turn them into errors).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Option<Vec<f32>> {
    match ty {
        GgmlType::F32 => scalars::<4>(bytes, n, f32::from_le_bytes),
        GgmlType::F16 => scalars::<2>(bytes, n, |b| f16::from_le_bytes(b).to_f32()),
        GgmlType::Bf16 => scalars::<2>(bytes, n, |b| bf16::from_le_bytes(b).to_f32()),
        GgmlType::Q8_0 => blocks::<BlockQ8_0>(bytes, n),
        GgmlType::Q4_0 => blocks::<BlockQ4_0>(bytes, n),
        GgmlType::Q4_1 => blocks::<BlockQ4_1>(bytes, n),
        GgmlType::Q5_0 => blocks::<BlockQ5_0>(bytes, n),
        GgmlType::Q5_1 => blocks::<BlockQ5_1>(bytes, n),
        GgmlType::Q2K => blocks::<BlockQ2K>(bytes, n),
        GgmlType::Q3K => blocks::<BlockQ3K>(bytes, n),
        GgmlType::Q4K => blocks::<BlockQ4K>(bytes, n),
        GgmlType::Q5K => blocks::<BlockQ5K>(bytes, n),
        GgmlType::Q6K => blocks::<BlockQ6K>(bytes, n),
        GgmlType::Iq4Nl => blocks::<BlockIq4Nl>(bytes, n),
        _ => None,
    }
}

/// Types [`quantize`] writes: every type llmq-gpu reads.
pub fn quantizable(ty: GgmlType) -> bool {
    ty.dequantizable()
}

fn quantize_blocks<B: Quantize>(x: &[f32]) -> Vec<u8> {
    let mut out = vec![B::zeroed(); x.len() / B::N];
    out.par_chunks_mut(BLOCKS_PER_TASK)
        .zip(x.par_chunks(B::N * BLOCKS_PER_TASK))
        .for_each(|(bs, x)| {
            for (b, x) in bs.iter_mut().zip(x.chunks_exact(B::N)) {
                *b = B::quantize(x);
            }
        });
    bytemuck::cast_slice(&out).to_vec()
}

/// `x` (a whole tensor, rows of `row` values) stored as `ty`, the way
/// `llama-quantize` stores it without an imatrix. Errors name `tensor`
/// when the type cannot hold the rows or is not one llmq-gpu writes.
pub fn quantize(tensor: &str, ty: GgmlType, x: &[f32], row: usize) -> Result<Vec<u8>> {
    if !quantizable(ty) {
        return Err(Error::Config(format!(
            "tensor '{tensor}': llmq-gpu cannot write ggml type {} yet",
            ty.name()
        )));
    }
    if row == 0 || !row.is_multiple_of(ty.block_size()) || !x.len().is_multiple_of(row) {
        return Err(Error::Config(format!(
            "tensor '{tensor}': rows of {row} values do not split into {} blocks of {} weights",
            ty.name(),
            ty.block_size()
        )));
    }
    Ok(match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => x.iter().flat_map(|&v| f16_bits(v)).collect(),
        // `GGML_FP32_TO_BF16` rounds to nearest even and keeps NaNs quiet,
        // as `half` does.
        GgmlType::Bf16 => x
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => quantize_blocks::<BlockQ8_0>(x),
        GgmlType::Q4_0 => quantize_blocks::<BlockQ4_0>(x),
        GgmlType::Q4_1 => quantize_blocks::<BlockQ4_1>(x),
        GgmlType::Q5_0 => quantize_blocks::<BlockQ5_0>(x),
        GgmlType::Q5_1 => quantize_blocks::<BlockQ5_1>(x),
        GgmlType::Q2K => quantize_blocks::<BlockQ2K>(x),
        GgmlType::Q3K => quantize_blocks::<BlockQ3K>(x),
        GgmlType::Q4K => quantize_blocks::<BlockQ4K>(x),
        GgmlType::Q5K => quantize_blocks::<BlockQ5K>(x),
        GgmlType::Q6K => quantize_blocks::<BlockQ6K>(x),
        _ => quantize_blocks::<BlockIq4Nl>(x),
    })
}

/// The ggml type whose blocks hold `scheme`'s codes without requantizing:
/// groups of 32, 4 or 5 bits (symmetric: Q4_0, Q5_0; asymmetric: Q4_1,
/// Q5_1) or 8 bits symmetric (Q8_0). llmq-gpu's symmetric rule is Q4_0's
/// (the value of largest magnitude onto the code without a positive twin),
/// so GPTQ and RTN codes of these schemes are these types' codes.
pub fn affine_type(scheme: &crate::encoding::QuantScheme) -> Option<GgmlType> {
    use crate::encoding::Granularity;
    if scheme.granularity != Granularity::Group(32) {
        return None;
    }
    match (scheme.bits, scheme.symmetric) {
        (4, true) => Some(GgmlType::Q4_0),
        (4, false) => Some(GgmlType::Q4_1),
        (5, true) => Some(GgmlType::Q5_0),
        (5, false) => Some(GgmlType::Q5_1),
        (8, true) => Some(GgmlType::Q8_0),
        _ => None,
    }
}

/// `q`'s codes as blocks of `ty` (its [`affine_type`]); errors name
/// `tensor`. Q4_0, Q5_0 and Q8_0 dequantize to exactly `q`'s values; Q4_1
/// and Q5_1 differ by the f16 rounding of each group's min `−scale·zero`.
pub fn from_affine(
    tensor: &str,
    q: &crate::encoding::QuantizedTensor,
    ty: GgmlType,
) -> Result<Vec<u8>> {
    if affine_type(&q.scheme) != Some(ty) || !q.cols.is_multiple_of(32) {
        return Err(Error::Config(format!(
            "tensor '{tensor}': {} codes on {} columns have no {} form (that needs groups of 32 \
             on rows of a multiple of 32, {})",
            q.scheme.label(),
            q.cols,
            ty.name(),
            match ty {
                GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => "symmetric",
                _ => "asymmetric",
            }
        )));
    }
    q.validate(tensor)?;
    let groups = q.cols / 32;
    let rows: Vec<Vec<u8>> = (0..q.rows)
        .into_par_iter()
        .map(|r| {
            let wpr = q.words_per_row();
            let mut codes = vec![0u32; q.cols];
            crate::encoding::affine::packing::unpack_row(
                &q.packed[r * wpr..(r + 1) * wpr],
                q.scheme.bits,
                &mut codes,
            );
            let mut out = Vec::with_capacity(groups * ty.type_size());
            for (g, c) in codes.chunks_exact(32).enumerate() {
                let i = r * groups + g;
                out.extend(legacy::affine_block(ty, c, q.scales[i], q.zeros[i]));
            }
            out
        })
        .collect();
    Ok(rows.concat())
}
