//! Thin wrapper over `shaders/matmul_i8.wgsl`: `y = x · Wᵀ` with INT8
//! activations ([`crate::encoding::act8`]) and 8-bit symmetric or 4-bit
//! (W4A8) weights uploaded as [`GpuQuantWeights`] (the same buffers the f32-activation
//! kernels read), split by tokens so activations fit one binding.

use super::context::{Binding, GpuContext};
use super::matmul::GpuQuantWeights;
use crate::encoding::act8::QuantizedActivations;
use crate::encoding::{Encoding, QuantScheme, QuantizedTensor};
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

/// `matmul_w4a8` also reads the zero-points.
const W4_BINDINGS: [Binding; 7] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageRead,
];

/// `[tokens, rows]` of the INT8 × INT8 product of resident weights `w`
/// with activations `a`.
pub fn matmul_i8_resident(
    ctx: &GpuContext,
    w: &GpuQuantWeights,
    a: &QuantizedActivations,
) -> Result<Vec<f32>> {
    check_weights(w, a.cols)?;
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
        encode_matmul_i8(ctx, &mut enc, w, &xq, &xs, &yb, n)?;
        ctx.submit_and_wait(enc)?;
        y.extend(ctx.read::<f32>(&yb, n * w.rows)?);
    }
    Ok(y)
}

/// The group length, or an error unless `w` is 8-bit symmetric or 4-bit
/// codes that take `cols`-wide INT8 inputs.
fn check_weights(w: &GpuQuantWeights, cols: usize) -> Result<(QuantScheme, usize)> {
    let Encoding::Affine(s) = w.encoding else {
        return Err(Error::Gpu(
            "the INT8 matmul takes linear integer codes".into(),
        ));
    };
    Ok((s, crate::encoding::act8::check_i8_scheme(&s, w.cols, cols)?))
}

/// Records `y = x · Wᵀ` for `tokens` rows of INT8 activations already on
/// the GPU (`xq` packed codes, `xs` one scale per token).
pub fn encode_matmul_i8(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    w: &GpuQuantWeights,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
    y: &wgpu::Buffer,
    tokens: usize,
) -> Result<()> {
    let (s, glen) = check_weights(w, w.cols)?;
    let w4 = s.bits == 4;
    let k = match w4 {
        true => ctx.kernel("matmul_w4a8", SOURCE, "matmul_w4a8", &W4_BINDINGS)?,
        false => ctx.kernel("matmul_i8", SOURCE, "matmul_i8", &BINDINGS)?,
    };
    for (row0, rows, packed, [scales, zeros]) in w.chunk_parts() {
        let row_blocks = rows.div_ceil(WG);
        let groups = u32::try_from(row_blocks * tokens)
            .map_err(|_| Error::Gpu("INT8 matmul grid too large".into()))?;
        let params = Params {
            tokens: tokens as u32,
            rows: rows as u32,
            x_words: (w.cols / 4) as u32,
            w_words: w.words_per_row() as u32,
            groups: s.groups_per_row(w.cols) as u32,
            group_words: (glen / 4) as u32,
            out_stride: w.rows as u32,
            row0: row0 as u32,
            row_blocks: row_blocks as u32,
            _pad: [0; 3],
        };
        let uniform = ctx.uniform("matmul_i8.params", &params);
        let mut buffers = vec![&uniform, packed, scales, xq, xs, y];
        if w4 {
            buffers.push(zeros);
        }
        ctx.encode(enc, &k, &buffers, ctx.grid(groups));
    }
    Ok(())
}

/// Mirrors `Params` in quantize_i8.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct QuantizeParams {
    tokens: u32,
    cols: u32,
    words: u32,
    static_scale: f32,
}

const QUANTIZE_SOURCE: &str = include_str!("../../../shaders/quantize_i8.wgsl");
const QUANTIZE_BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
];

/// Records the INT8 quantization of `x` `[tokens, cols]` into `xq`
/// (`[tokens, cols / 4]` words) and `xs` (`[tokens]` scales): per token,
/// or at `scale` when given (as [`crate::encoding::act8`] on the CPU).
#[allow(clippy::too_many_arguments)]
pub fn encode_quantize_i8(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    xq: &wgpu::Buffer,
    xs: &wgpu::Buffer,
    tokens: usize,
    cols: usize,
    scale: Option<f32>,
) -> Result<()> {
    if !cols.is_multiple_of(4) || tokens == 0 || scale.is_some_and(|s| !(s.is_finite() && s > 0.0))
    {
        return Err(Error::Gpu(format!(
            "INT8 quantization of {tokens} tokens x {cols} columns at scale {scale:?}: columns \
             must be a multiple of 4, the scale positive"
        )));
    }
    let k = ctx.kernel(
        "quantize_i8",
        QUANTIZE_SOURCE,
        "quantize_i8",
        &QUANTIZE_BINDINGS,
    )?;
    let params = QuantizeParams {
        tokens: tokens as u32,
        cols: cols as u32,
        words: (cols / 4) as u32,
        static_scale: scale.unwrap_or(0.0),
    };
    let uniform = ctx.uniform("quantize_i8.params", &params);
    let groups = u32::try_from(tokens).map_err(|_| Error::Gpu("too many tokens".into()))?;
    ctx.encode(enc, &k, &[&uniform, x, xq, xs], ctx.grid(groups));
    Ok(())
}

/// [`encode_quantize_i8`] of host values, read back (tests compare it with
/// the CPU's [`crate::encoding::act8`]).
pub fn quantize_i8(
    ctx: &GpuContext,
    x: &[f32],
    tokens: usize,
    cols: usize,
    scale: Option<f32>,
) -> Result<QuantizedActivations> {
    if x.len() != tokens * cols {
        return Err(Error::Gpu(format!(
            "INT8 quantization: {} values for {tokens} x {cols}",
            x.len()
        )));
    }
    let xb = ctx.upload("quantize_i8.x", bytemuck::cast_slice(x))?;
    let xq = ctx.storage("quantize_i8.xq", (tokens * cols) as u64)?;
    let xs = ctx.storage("quantize_i8.xs", (tokens * 4) as u64)?;
    let mut enc = ctx.encoder();
    encode_quantize_i8(ctx, &mut enc, &xb, &xq, &xs, tokens, cols, scale)?;
    ctx.submit_and_wait(enc)?;
    Ok(QuantizedActivations {
        tokens,
        cols,
        packed: ctx.read::<u32>(&xq, tokens * cols / 4)?,
        scales: ctx.read::<f32>(&xs, tokens)?,
    })
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

/// Seconds per call of the W8A8 linear on the GPU: per-token quantization
/// of f32 inputs then the INT8 × INT8 matmul, `iters` calls in one
/// submission (the bench; the first call compiles and is not timed).
pub fn time_matmul_i8(
    ctx: &GpuContext,
    w: &GpuQuantWeights,
    tokens: usize,
    iters: usize,
) -> Result<std::time::Duration> {
    let x: Vec<f32> = (0..tokens * w.cols)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let xb = ctx.upload("matmul_i8.x", bytemuck::cast_slice(&x))?;
    let xq = ctx.storage("matmul_i8.xq", (tokens * w.cols) as u64)?;
    let xs = ctx.storage("matmul_i8.xs", (tokens * 4) as u64)?;
    let yb = ctx.storage("matmul_i8.y", (tokens * w.rows * 4) as u64)?;
    let call = |enc: &mut wgpu::CommandEncoder| -> Result<()> {
        encode_quantize_i8(ctx, enc, &xb, &xq, &xs, tokens, w.cols, None)?;
        encode_matmul_i8(ctx, enc, w, &xq, &xs, &yb, tokens)
    };
    let mut enc = ctx.encoder();
    call(&mut enc)?;
    ctx.submit_and_wait(enc)?;
    let iters = iters.max(1);
    let mut enc = ctx.encoder();
    for _ in 0..iters {
        call(&mut enc)?;
    }
    let start = std::time::Instant::now();
    ctx.submit_and_wait(enc)?;
    Ok(start.elapsed() / iters as u32)
}
