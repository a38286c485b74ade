//! Thin wrapper over `shaders/matmul_i8.wgsl`: `y = x · Wᵀ` with INT8
//! activations ([`crate::encoding::act8`]) and 8-bit symmetric weights
//! uploaded as [`GpuQuantWeights`] (the same buffers the f32-activation
//! kernels read), split by tokens so activations fit one binding.

use super::context::{Binding, GpuContext};
use super::matmul::GpuQuantWeights;
use crate::encoding::act8::QuantizedActivations;
use crate::encoding::{Encoding, QuantizedTensor};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/matmul_i8.wgsl");
const WG: usize = 64;

/// Mirrors `Params` in matmul_i8.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    rows: u32,
    x_words: u32,
    w_words: u32,
    groups: u32,
    group_words: u32,
    out_stride: u32,
    row0: u32,
    row_blocks: u32,
    _pad: [u32; 3],
}

const BINDINGS: [Binding; 6] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// `[tokens, rows]` of the INT8 × INT8 product of resident weights `w`
/// with activations `a`.
pub fn matmul_i8_resident(
    ctx: &GpuContext,
    w: &GpuQuantWeights,
    a: &QuantizedActivations,
) -> Result<Vec<f32>> {
    let Encoding::Affine(s) = w.encoding else {
        return Err(Error::Gpu(
            "the INT8 matmul takes linear integer codes".into(),
        ));
    };
    let glen = crate::encoding::act8::check_i8_scheme(&s, w.cols, a.cols)?;
    let k = ctx.kernel("matmul_i8", SOURCE, "matmul_i8", &BINDINGS)?;
    let x_words = a.cols / 4;
    let per_token = (a.cols.max(w.rows * 4)) as u64;
    let per_chunk = ((ctx.max_binding() / per_token) as usize).max(1);
    let mut y = Vec::with_capacity(a.tokens * w.rows);
    for t0 in (0..a.tokens).step_by(per_chunk) {
        let n = per_chunk.min(a.tokens - t0);
        let xq = ctx.upload(
            "matmul_i8.x",
            bytemuck::cast_slice(&a.packed[t0 * x_words..(t0 + n) * x_words]),
        )?;
        let xs = ctx.upload(
            "matmul_i8.scales",
            bytemuck::cast_slice(&a.scales[t0..t0 + n]),
        )?;
        let yb = ctx.storage("matmul_i8.y", (n * w.rows * 4) as u64)?;
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::new();
        for (row0, rows, packed, scales) in w.chunk_parts() {
            let row_blocks = rows.div_ceil(WG);
            let groups = u32::try_from(row_blocks * n)
                .map_err(|_| Error::Gpu("INT8 matmul grid too large".into()))?;
            let params = Params {
                tokens: n as u32,
                rows: rows as u32,
                x_words: x_words as u32,
                w_words: w.words_per_row() as u32,
                groups: s.groups_per_row(w.cols) as u32,
                group_words: (glen / 4) as u32,
                out_stride: w.rows as u32,
                row0: row0 as u32,
                row_blocks: row_blocks as u32,
                _pad: [0; 3],
            };
            let uniform = ctx.uniform("matmul_i8.params", &params);
            ctx.encode(
                &mut enc,
                &k,
                &[&uniform, packed, scales, &xq, &xs, &yb],
                ctx.grid(groups),
            );
            uniforms.push(uniform);
        }
        ctx.submit_and_wait(enc)?;
        drop(uniforms);
        y.extend(ctx.read::<f32>(&yb, n * w.rows)?);
    }
    Ok(y)
}

/// Uploads `w` and runs [`matmul_i8_resident`].
pub fn matmul_i8(
    ctx: &GpuContext,
    w: &QuantizedTensor,
    a: &QuantizedActivations,
) -> Result<Vec<f32>> {
    crate::encoding::act8::check_i8_scheme(&w.scheme, w.cols, a.cols)?;
    matmul_i8_resident(ctx, &GpuQuantWeights::upload(ctx, w)?, a)
}
