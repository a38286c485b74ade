//! Thin wrapper over `shaders/vq_em.wgsl`: weighted EM iterations of many
//! VQ codebooks at once ([`crate::backend::Backend::vq_em`]). Points,
//! weights and centroids are uploaded once; each iteration is one
//! submission (E-step, then the M-step, which the kernel skips when no
//! assignment changed) and a 4-byte read of the change count.

use super::context::{Binding, GpuContext};
use super::f32_bytes;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/vq_em.wgsl");
const WG: usize = 64;
/// Largest codebook (`k · d`) the kernels hold in workgroup memory.
const MAX_CODEBOOK: usize = 1024;

/// Mirrors `Params` in vq_em.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    groups: u32,
    n: u32,
    d: u32,
    k: u32,
}

const BINDINGS: [Binding; 7] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
];

/// See [`crate::backend::Backend::vq_em`]; arguments already checked.
#[allow(clippy::too_many_arguments)]
pub fn vq_em(
    ctx: &GpuContext,
    points: &[f32],
    weights: &[f32],
    groups: usize,
    d: usize,
    k: usize,
    iters: usize,
    centroids: &mut [f32],
) -> Result<usize> {
    let n = weights.len() / (groups * d);
    if k * d > MAX_CODEBOOK
        || groups > ctx.max_workgroups() as usize
        || k > ctx.max_workgroups() as usize
    {
        return Err(Error::Gpu(format!(
            "EM of {groups} codebooks of {k} × {d} values: the GPU kernels hold at most \
             {MAX_CODEBOOK} values per codebook and {} codebooks or centroids per dispatch",
            ctx.max_workgroups()
        )));
    }
    let assign_k = ctx.kernel("vq_em.assign", SOURCE, "assign_points", &BINDINGS)?;
    let update_k = ctx.kernel("vq_em.update", SOURCE, "update_centroids", &BINDINGS)?;
    let params = ctx.uniform(
        "vq_em.params",
        &Params {
            groups: groups as u32,
            n: n as u32,
            d: d as u32,
            k: k as u32,
        },
    );
    let pts = ctx.upload("vq_em.points", f32_bytes(points))?;
    let wts = ctx.upload("vq_em.weights", f32_bytes(weights))?;
    let cb = ctx.upload("vq_em.centroids", f32_bytes(centroids))?;
    // No point starts assigned, so the first E-step changes every one.
    let unassigned = vec![u32::MAX; groups * n];
    let assign = ctx.upload("vq_em.assign", bytemuck::cast_slice(&unassigned))?;
    let dist = ctx.storage("vq_em.dist", (groups * n * 4) as u64)?;
    let changed = ctx.upload("vq_em.changed", &[0u8; 4])?;
    let buffers: [&wgpu::Buffer; 7] = [&params, &pts, &wts, &cb, &assign, &dist, &changed];
    let mut ran = iters;
    for it in 0..iters {
        let mut enc = ctx.encoder();
        enc.clear_buffer(&changed, 0, None);
        ctx.encode(
            &mut enc,
            &assign_k,
            &buffers,
            [n.div_ceil(WG) as u32, groups as u32, 1],
        );
        ctx.encode(&mut enc, &update_k, &buffers, [k as u32, groups as u32, 1]);
        ctx.submit_and_wait(enc)?;
        if ctx.read::<u32>(&changed, 1)?[0] == 0 {
            ran = it + 1;
            break;
        }
    }
    centroids.copy_from_slice(&ctx.read::<f32>(&cb, centroids.len())?);
    Ok(ran)
}
