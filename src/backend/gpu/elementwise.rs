//! Thin wrapper over `shaders/elementwise.wgsl`: RMSNorm, the residual add
//! and the SwiGLU activation of the forward pass. `encode_*` record into an
//! encoder (buffers stay on the GPU); the plain functions are host-in/host-out
//! conveniences for tests and one-off calls.

use super::context::{Binding, GpuContext};
use super::{check_buffer, f32_bytes};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/elementwise.wgsl");
const WG: usize = 64;

/// Mirrors `Params` in elementwise.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    cols: u32,
    eps: f32,
    _pad: u32,
}

const BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

fn dispatch(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    entry: &str,
    params: Params,
    buffers: [&wgpu::Buffer; 3],
    workgroups: usize,
) -> Result<()> {
    let k = ctx.kernel(&format!("elementwise.{entry}"), SOURCE, entry, &BINDINGS)?;
    let groups = u32::try_from(workgroups).map_err(|_| {
        Error::Gpu(format!(
            "{entry}: grid of {workgroups} workgroups is too large"
        ))
    })?;
    let uniform = ctx.uniform("elementwise.params", &params);
    let [a, b, out] = buffers;
    ctx.encode(encoder, &k, &[&uniform, a, b, out], ctx.grid(groups));
    Ok(())
}

/// Records `out = x · rsqrt(mean(x²) + eps) · w` per row of `x` `[rows, cols]`.
#[allow(clippy::too_many_arguments)]
pub fn encode_rms_norm(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    w: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    check_buffer("rms_norm input", x, rows * cols)?;
    check_buffer("rms_norm weight", w, cols)?;
    check_buffer("rms_norm output", out, rows * cols)?;
    let params = Params {
        n: rows as u32,
        cols: cols as u32,
        eps,
        _pad: 0,
    };
    dispatch(ctx, encoder, "rms_norm", params, [x, w, out], rows)
}

/// Records `dst += src` over `n` values.
pub fn encode_add(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    dst: &wgpu::Buffer,
    src: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    check_buffer("add destination", dst, n)?;
    check_buffer("add source", src, n)?;
    let params = Params {
        n: n as u32,
        cols: 0,
        eps: 0.0,
        _pad: 0,
    };
    dispatch(ctx, encoder, "add", params, [src, src, dst], n.div_ceil(WG))
}

/// Records `x[r, j] += bias[j]` for `x` `[rows, cols]`.
pub fn encode_add_bias(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    x: &wgpu::Buffer,
    bias: &wgpu::Buffer,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let n = rows * cols;
    check_buffer("add_bias destination", x, n)?;
    check_buffer("add_bias bias", bias, cols)?;
    let params = Params {
        n: n as u32,
        cols: cols as u32,
        eps: 0.0,
        _pad: 0,
    };
    dispatch(
        ctx,
        encoder,
        "add_bias",
        params,
        [bias, bias, x],
        n.div_ceil(WG),
    )
}

/// Records `gate = silu(gate) · up` over `n` values.
pub fn encode_silu_mul(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    gate: &wgpu::Buffer,
    up: &wgpu::Buffer,
    n: usize,
) -> Result<()> {
    check_buffer("silu_mul gate", gate, n)?;
    check_buffer("silu_mul up", up, n)?;
    let params = Params {
        n: n as u32,
        cols: 0,
        eps: 0.0,
        _pad: 0,
    };
    dispatch(
        ctx,
        encoder,
        "silu_mul",
        params,
        [up, up, gate],
        n.div_ceil(WG),
    )
}

/// [`encode_rms_norm`] on host data: `x` `[rows, w.len()]`.
pub fn rms_norm(ctx: &GpuContext, x: &[f32], w: &[f32], eps: f32) -> Result<Vec<f32>> {
    let cols = w.len();
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(Error::Config(format!(
            "rms_norm input has {} values, not a multiple of the weight's {cols}",
            x.len()
        )));
    }
    let (xb, wb) = (
        ctx.upload("x", f32_bytes(x))?,
        ctx.upload("w", f32_bytes(w))?,
    );
    let out = ctx.storage("out", (x.len() * 4) as u64)?;
    let mut enc = ctx.encoder();
    encode_rms_norm(ctx, &mut enc, &xb, &wb, &out, x.len() / cols, cols, eps)?;
    ctx.submit_and_wait(enc)?;
    ctx.read(&out, x.len())
}

fn pairwise(
    ctx: &GpuContext,
    what: &str,
    dst: &[f32],
    src: &[f32],
    encode: fn(
        &GpuContext,
        &mut wgpu::CommandEncoder,
        &wgpu::Buffer,
        &wgpu::Buffer,
        usize,
    ) -> Result<()>,
) -> Result<Vec<f32>> {
    if dst.len() != src.len() {
        return Err(Error::Config(format!(
            "{what}: inputs of {} and {} values",
            dst.len(),
            src.len()
        )));
    }
    let (d, s) = (
        ctx.upload("dst", f32_bytes(dst))?,
        ctx.upload("src", f32_bytes(src))?,
    );
    let mut enc = ctx.encoder();
    encode(ctx, &mut enc, &d, &s, dst.len())?;
    ctx.submit_and_wait(enc)?;
    ctx.read(&d, dst.len())
}

/// `dst + src` on host data.
pub fn add(ctx: &GpuContext, dst: &[f32], src: &[f32]) -> Result<Vec<f32>> {
    pairwise(ctx, "add", dst, src, encode_add)
}

/// `x` `[rows, bias.len()]` plus `bias` in every row, on host data.
pub fn add_bias(ctx: &GpuContext, x: &[f32], bias: &[f32]) -> Result<Vec<f32>> {
    let cols = bias.len();
    if cols == 0 || !x.len().is_multiple_of(cols) {
        return Err(Error::Config(format!(
            "add_bias: {} values are not rows of {cols}",
            x.len()
        )));
    }
    let xb = ctx.upload("add_bias.x", f32_bytes(x))?;
    let bb = ctx.upload("add_bias.bias", f32_bytes(bias))?;
    let mut enc = ctx.encoder();
    encode_add_bias(ctx, &mut enc, &xb, &bb, x.len() / cols, cols)?;
    ctx.submit_and_wait(enc)?;
    ctx.read(&xb, x.len())
}

/// `silu(gate) · up` on host data.
pub fn silu_mul(ctx: &GpuContext, gate: &[f32], up: &[f32]) -> Result<Vec<f32>> {
    pairwise(ctx, "silu_mul", gate, up, encode_silu_mul)
}
