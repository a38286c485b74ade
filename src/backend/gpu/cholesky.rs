//! Thin wrapper over `shaders/cholesky.wgsl`: the upper factor `U` of
//! `H⁻¹ = UᵀU` for GPTQ in f32, one Cholesky and one triangular inverse of
//! the reversed H (see src/backend/cpu/cholesky.rs for the algebra).
//!
//! H stays on the GPU for all steps: one upload (JHJ, the row-major array
//! read backwards), blocked Cholesky dispatches, one 4-byte read of the
//! pivot flag, the triangular inverse, one readback (read backwards again:
//! U). The kernels take H whole in one binding; when `n·n·4` bytes exceed
//! the context's binding limit (an 11008² Llama-7B down_proj Hessian is
//! 485 MB, lavapipe and WebGPU defaults bind 128 MiB) or the adapter has
//! too little workgroup memory, this falls back to the CPU implementation
//! and logs it (splitting H across bindings is not implemented).

use super::context::{Binding, GpuContext};
use super::{f32_bytes, GEMM_TILE};
use crate::backend::cpu::cholesky as cpu;
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = with_tile_gemm!("cholesky.wgsl");
/// Panel width (`NB` in the shader).
const NB: usize = 32;
/// Rows of the panel solved per workgroup (`PANEL_WG`).
const PANEL_WG: usize = 64;
/// Columns of X per workgroup of the inverse (`XW`).
const XW: usize = 64;
/// Workgroup memory of the largest kernel (trtri_step), bytes.
const WORKGROUP_BYTES: u32 = (NB * NB + NB * XW) as u32 * 4;
/// Panels per submission (3 dispatches each in the Cholesky, 1 in the
/// inverse): bounds the length of one submission on big H (GPU watchdogs),
/// and n > 128 in the tests already takes several submissions.
const PANELS_PER_SUBMIT: usize = 4;

/// Mirrors `Params` in cholesky.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    k: u32,
    bs: u32,
    _pad: u32,
}

const BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
];

/// See [`crate::backend::Backend::inverse_cholesky_upper`]; arguments already checked.
pub fn inverse_cholesky_upper(ctx: &GpuContext, h: &[f32], n: usize) -> Result<Option<Vec<f32>>> {
    let bytes = (n * n * 4) as u64;
    if bytes > ctx.max_binding()
        || ctx.limits().max_compute_workgroup_storage_size < WORKGROUP_BYTES
    {
        // Fallback: the kernels need all of H in one binding.
        log::info!(
            "inverse Cholesky of a {n}x{n} Hessian ({bytes} bytes) on the CPU: it exceeds one \
             storage binding ({} bytes) of {}",
            ctx.max_binding(),
            ctx.adapter.short()
        );
        return Ok(cpu::inverse_cholesky_upper(h, n));
    }
    let kernel = |entry: &str| ctx.kernel(&format!("cholesky.{entry}"), SOURCE, entry, &BINDINGS);
    let (potrf, trsm, syrk, trtri) = (
        kernel("potrf_diag")?,
        kernel("trsm_panel")?,
        kernel("syrk_update")?,
        kernel("trtri_step")?,
    );
    // JHJ: element (i, j) is H[n-1-i, n-1-j], i.e. the flat array reversed.
    let reversed: Vec<f32> = h.iter().rev().copied().collect();
    let a = ctx.upload("cholesky.a", f32_bytes(&reversed))?;
    drop(reversed);
    let x = ctx.storage("cholesky.x", bytes)?;
    let status = ctx.storage("cholesky.status", 4)?;
    let params = |k: usize| {
        let p = Params {
            n: n as u32,
            k: k as u32,
            bs: NB.min(n - k) as u32,
            _pad: 0,
        };
        ctx.uniform("cholesky.params", &p)
    };
    let panels: Vec<usize> = (0..n).step_by(NB).collect();

    // Cholesky: per panel, factor the diagonal block, solve the panel
    // below it, update the trailing lower triangle.
    for group in panels.chunks(PANELS_PER_SUBMIT) {
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(group.len());
        for &k in group {
            uniforms.push(params(k));
            let u = &uniforms[uniforms.len() - 1];
            let buffers: [&wgpu::Buffer; 4] = [u, &a, &x, &status];
            ctx.encode(&mut enc, &potrf, &buffers, [1, 1, 1]);
            let rest = n - (k + NB).min(n);
            if rest > 0 {
                ctx.encode(
                    &mut enc,
                    &trsm,
                    &buffers,
                    [rest.div_ceil(PANEL_WG) as u32, 1, 1],
                );
                let tiles = rest.div_ceil(GEMM_TILE) as u32;
                ctx.encode(&mut enc, &syrk, &buffers, [tiles, tiles, 1]);
            }
        }
        ctx.submit_and_wait(enc)?;
    }
    let failed = ctx.read::<u32>(&status, 1)?[0];
    if failed != 0 {
        log::debug!(
            "inverse Cholesky: pivot {} of {n} not positive in f32",
            failed - 1
        );
        return Ok(None);
    }

    // Triangular inverse, block row by block row (the diagonal blocks were
    // inverted by potrf_diag).
    for group in panels[1..].chunks(PANELS_PER_SUBMIT) {
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(group.len());
        for &k in group {
            uniforms.push(params(k));
            let u = &uniforms[uniforms.len() - 1];
            ctx.encode(
                &mut enc,
                &trtri,
                &[u, &a, &x, &status],
                [k.div_ceil(XW) as u32, 1, 1],
            );
        }
        ctx.submit_and_wait(enc)?;
    }
    // U = J L̃⁻¹ J: the flat array reversed.
    let mut u = ctx.read::<f32>(&x, n * n)?;
    u.reverse();
    let usable = u.iter().all(|v| v.is_finite()) && (0..n).all(|i| u[i * n + i] > 0.0);
    Ok(usable.then_some(u))
}
