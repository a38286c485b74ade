//! Thin wrapper over `shaders/trace.wgsl`: `tr(A H Aᵀ)` for GPTQ's error
//! report without reading `A·H` back. H is split by rows and each `A` by
//! rows so that every binding fits the context's binding limit (a Llama-7B
//! down_proj Hessian, 11008² f32 = 485 MB, is four chunks on a 128 MiB
//! one); each workgroup writes one partial sum, and the host adds them all
//! in f64.

use super::context::{Binding, GpuContext, Kernel};
use super::{f32_bytes, row_chunks, GpuBuffer, GEMM_TILE};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use std::ops::Range;

const SOURCE: &str = with_tile_gemm!("trace.wgsl");

/// Mirrors `Params` in trace.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    a_rows: u32,
    cols: u32,
    k0: u32,
    k_len: u32,
    out0: u32,
    _pad: [u32; 3],
}

const BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// See [`crate::backend::Backend::quadratic_traces`]; arguments already checked.
pub fn quadratic_traces(
    ctx: &GpuContext,
    h: &[f32],
    cols: usize,
    mats: &[&[f32]],
) -> Result<Vec<f64>> {
    let k = ctx.kernel("trace.partial", SOURCE, "partial_traces", &BINDINGS)?;
    let max_wg = ctx.max_workgroups() as usize;
    let col_tiles = cols.div_ceil(GEMM_TILE);
    if col_tiles > max_wg {
        return Err(Error::Gpu(format!(
            "quadratic trace over {cols} columns needs {col_tiles} workgroups in one dimension, \
             more than {max_wg}"
        )));
    }
    // H by rows, uploaded once and reused for every matrix.
    let h_chunks: Vec<(Range<usize>, GpuBuffer)> = row_chunks(ctx, cols, cols * 4)?
        .into_iter()
        .map(|r| {
            let buf = ctx.upload("trace.h", f32_bytes(&h[r.start * cols..r.end * cols]))?;
            Ok((r, buf))
        })
        .collect::<Result<_>>()?;
    let mut traces = Vec::with_capacity(mats.len());
    for a in mats {
        let mut sum = 0f64;
        for rows in a_chunks(ctx, a.len() / cols, cols)? {
            sum += chunk_trace(
                ctx,
                &k,
                &a[rows.start * cols..rows.end * cols],
                cols,
                &h_chunks,
            )?;
        }
        traces.push(sum);
    }
    Ok(traces)
}

/// Row ranges of an `A` with `rows` rows: each fits one binding and at most
/// `max_workgroups` tiles of rows.
fn a_chunks(ctx: &GpuContext, rows: usize, cols: usize) -> Result<Vec<Range<usize>>> {
    let most = ctx.max_workgroups() as usize * GEMM_TILE;
    Ok(row_chunks(ctx, rows, cols * 4)?
        .into_iter()
        .flat_map(|r| {
            (r.start..r.end)
                .step_by(most)
                .map(move |s| s..(s + most).min(r.end))
        })
        .collect())
}

/// The sum over `H`'s chunks of the partial traces of one chunk of rows of `A`.
fn chunk_trace(
    ctx: &GpuContext,
    k: &Kernel,
    a: &[f32],
    cols: usize,
    h_chunks: &[(Range<usize>, GpuBuffer)],
) -> Result<f64> {
    let a_rows = a.len() / cols;
    let tiles = a_rows.div_ceil(GEMM_TILE) * cols.div_ceil(GEMM_TILE);
    let abuf = ctx.upload("trace.a", f32_bytes(a))?;
    let n_partials = tiles * h_chunks.len();
    let pbuf = ctx.storage("trace.partials", (n_partials * 4) as u64)?;
    // Dispatches in one encoder; each writes its own range of `pbuf`.
    let mut enc = ctx.encoder();
    let mut uniforms = Vec::with_capacity(h_chunks.len());
    for (i, (kr, hbuf)) in h_chunks.iter().enumerate() {
        let params = Params {
            a_rows: a_rows as u32,
            cols: cols as u32,
            k0: kr.start as u32,
            k_len: kr.len() as u32,
            out0: (i * tiles) as u32,
            _pad: [0; 3],
        };
        uniforms.push(ctx.uniform("trace.params", &params));
        ctx.encode(
            &mut enc,
            k,
            &[&uniforms[i], &abuf, hbuf, &pbuf],
            [
                cols.div_ceil(GEMM_TILE) as u32,
                a_rows.div_ceil(GEMM_TILE) as u32,
                1,
            ],
        );
    }
    ctx.submit_and_wait(enc)?;
    let partials = ctx.read::<f32>(&pbuf, n_partials)?;
    Ok(partials.iter().map(|&v| v as f64).sum())
}
