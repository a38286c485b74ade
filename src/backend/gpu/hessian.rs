//! Thin wrapper over `shaders/hessian.wgsl`: the running GPTQ Hessian
//! `H ← H·n/(n+b) + (2/(n+b))·XᵀX`. H is split by rows and X by tokens so
//! that every binding fits the context's binding limit (a Llama-7B
//! down_proj Hessian, 11008² f32 = 485 MB, is four chunks on a 128 MiB one).

use super::context::{Binding, GpuContext};
use super::{f32_bytes, row_chunks, GpuBuffer};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/hessian.wgsl");
/// Rows and columns of H per workgroup (`TILE` in the shader).
const TILE: usize = 64;

/// Mirrors `Params` in hessian.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    h_rows: u32,
    row0: u32,
    cols: u32,
    tokens: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
}

const BINDINGS: [Binding; 3] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// See [`crate::backend::Backend::hessian_update`]; arguments already checked.
pub fn hessian_update(
    ctx: &GpuContext,
    h: &mut [f32],
    cols: usize,
    n_seen: usize,
    x: &[f32],
    tokens: usize,
) -> Result<()> {
    let k = ctx.kernel("hessian.accumulate", SOURCE, "accumulate", &BINDINGS)?;
    let n_total = (n_seen + tokens) as f64;
    let alpha0 = (n_seen as f64 / n_total) as f32;
    let beta = (2.0 / n_total) as f32;
    let col_tiles = cols.div_ceil(TILE);
    if col_tiles > ctx.max_workgroups() as usize {
        return Err(Error::Gpu(format!(
            "Hessian of {cols} columns needs {col_tiles} workgroups in one dimension, more than {}",
            ctx.max_workgroups()
        )));
    }
    // X by tokens, uploaded once and reused for every chunk of H rows.
    let x_chunks: Vec<(usize, GpuBuffer)> = row_chunks(ctx, tokens, cols * 4)?
        .into_iter()
        .map(|r| {
            let buf = ctx.upload("hessian.x", f32_bytes(&x[r.start * cols..r.end * cols]))?;
            Ok((r.len(), buf))
        })
        .collect::<Result<_>>()?;
    for rows in row_chunks(ctx, cols, cols * 4)? {
        let chunk = &mut h[rows.start * cols..rows.end * cols];
        let hbuf = ctx.upload("hessian.h", f32_bytes(chunk))?;
        let row_tiles = rows.len().div_ceil(TILE);
        // Dispatches in one encoder: wgpu orders passes that write `hbuf`.
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(x_chunks.len());
        for (i, (t, xbuf)) in x_chunks.iter().enumerate() {
            let params = Params {
                h_rows: rows.len() as u32,
                row0: rows.start as u32,
                cols: cols as u32,
                tokens: *t as u32,
                alpha: if i == 0 { alpha0 } else { 1.0 },
                beta,
                _pad0: 0,
                _pad1: 0,
            };
            uniforms.push(ctx.uniform("hessian.params", &params));
            let u = &uniforms[i];
            ctx.encode(
                &mut enc,
                &k,
                &[u, xbuf, &hbuf],
                [col_tiles as u32, row_tiles as u32, 1],
            );
        }
        ctx.submit_and_wait(enc)?;
        chunk.copy_from_slice(&ctx.read::<f32>(&hbuf, chunk.len())?);
    }
    Ok(())
}
