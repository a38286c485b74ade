//! Thin wrapper over `shaders/histogram.wgsl`: the `|x|` histogram of range
//! calibration ([`crate::quant::range`]), split into dispatches whose `x`
//! fits one binding; counts accumulate in one buffer across them.

use super::context::{Binding, GpuContext};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/histogram.wgsl");
/// Values per workgroup (256 threads, 64 values each).
const PER_WG: usize = 256 * 64;
/// Must match `MAX_BINS` in histogram.wgsl.
const MAX_BINS: usize = 4096;

/// Mirrors `Params` in histogram.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    bins: u32,
    inv_width: f32,
    per_wg: u32,
}

const BINDINGS: [Binding; 3] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// Counts of `min(⌊|x|·inv_width⌋, bins − 1)` over `x`.
pub fn abs_histogram(ctx: &GpuContext, x: &[f32], bins: usize, inv_width: f32) -> Result<Vec<u32>> {
    if bins == 0 || bins > MAX_BINS || !inv_width.is_finite() {
        return Err(Error::Gpu(format!(
            "histogram of {bins} bins (1 to {MAX_BINS}) with bin scale {inv_width}"
        )));
    }
    let k = ctx.kernel("histogram", SOURCE, "histogram", &BINDINGS)?;
    let counts = ctx.storage("histogram.counts", (bins * 4) as u64)?;
    let per_chunk = ((ctx.max_binding() / 4) as usize).max(1);
    let mut enc = ctx.encoder();
    // Buffers stay alive until the submission completes.
    let mut held = Vec::new();
    for chunk in x.chunks(per_chunk) {
        let xb = ctx.upload("histogram.x", bytemuck::cast_slice(chunk))?;
        let params = Params {
            n: chunk.len() as u32,
            bins: bins as u32,
            inv_width,
            per_wg: PER_WG as u32,
        };
        let uniform = ctx.uniform("histogram.params", &params);
        let groups = u32::try_from(chunk.len().div_ceil(PER_WG))
            .map_err(|_| Error::Gpu("histogram grid too large".into()))?;
        ctx.encode(&mut enc, &k, &[&uniform, &xb, &counts], ctx.grid(groups));
        held.push((xb, uniform));
    }
    ctx.submit_and_wait(enc)?;
    drop(held);
    ctx.read(&counts, bins)
}
