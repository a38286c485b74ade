//! Thin wrapper over `shaders/gptq.wgsl`: GPTQ's in-block quantization with
//! error feedback and the deferred update of the remaining columns. W is
//! split by rows so every binding fits the context's binding limit; rows
//! are independent in both kernels.
//!
//! For now W travels to the GPU and back for every block (the host-side
//! algorithm in `quant::gptq` owns it); keeping it resident across blocks
//! is the pipeline's job (issue 4).

use super::context::{Binding, GpuContext};
use super::{f32_bytes, row_chunks, GpuBuffer};
use crate::backend::{GptqBlock, GptqBlockOut};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/gptq.wgsl");
/// Invocations per workgroup of `quantize_block` (one per row).
const WG: usize = 64;
/// Rows and columns of W per workgroup of `update_rest`.
const TILE: usize = 64;

/// Mirrors `Params` in gptq.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    rows: u32,
    cols: u32,
    start: u32,
    len: u32,
    bits: u32,
    symmetric: u32,
    group_len: u32,
    groups: u32,
    end: u32,
    n: u32,
    static_groups: u32,
    _pad1: u32,
}

const BLOCK_BINDINGS: [Binding; 8] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageRead,
];

const REST_BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
];

/// See [`crate::backend::Backend::gptq_block`]; arguments already checked.
pub fn gptq_block(
    ctx: &GpuContext,
    w: &mut [f32],
    rows: usize,
    cols: usize,
    b: &GptqBlock,
    out: &mut GptqBlockOut,
) -> Result<()> {
    let k = ctx.kernel(
        "gptq.quantize_block",
        SOURCE,
        "quantize_block",
        &BLOCK_BINDINGS,
    )?;
    let len = b.len();
    let groups = cols.div_ceil(b.group_len);
    let hinv = ctx.upload("gptq.hinv", f32_bytes(b.hinv))?;
    // One u32 (unused) when the groups are dynamic: every binding must exist.
    let group_of = ctx.upload(
        "gptq.group_of",
        bytemuck::cast_slice(b.group_of.unwrap_or(&[0])),
    )?;
    for r in row_chunks(ctx, rows, cols * 4)? {
        let n = r.len();
        let params = Params {
            rows: n as u32,
            cols: cols as u32,
            start: b.start as u32,
            len: len as u32,
            bits: b.bits,
            symmetric: b.symmetric as u32,
            group_len: b.group_len as u32,
            groups: groups as u32,
            static_groups: b.group_of.is_some() as u32,
            ..Params::default()
        };
        let uniform = ctx.uniform("gptq.params", &params);
        let wbuf = ctx.upload("gptq.w", f32_bytes(&w[r.start * cols..r.end * cols]))?;
        let err = ctx.storage("gptq.err", (n * len * 4) as u64)?;
        let g = r.start * groups..r.end * groups;
        let scales = ctx.upload("gptq.scales", f32_bytes(&out.scales[g.clone()]))?;
        let zeros = ctx.upload("gptq.zeros", bytemuck::cast_slice(&out.zeros[g.clone()]))?;
        let codes = ctx.storage("gptq.codes", (n * len * 4) as u64)?;
        ctx.run(
            &k,
            &[
                &uniform, &hinv, &wbuf, &err, &scales, &zeros, &codes, &group_of,
            ],
            ctx.grid(n.div_ceil(WG) as u32),
        )?;
        w[r.start * cols..r.end * cols].copy_from_slice(&ctx.read::<f32>(&wbuf, n * cols)?);
        out.err[r.start * len..r.end * len].copy_from_slice(&ctx.read::<f32>(&err, n * len)?);
        out.scales[g.clone()].copy_from_slice(&ctx.read::<f32>(&scales, g.len())?);
        out.zeros[g.clone()].copy_from_slice(&ctx.read::<u32>(&zeros, g.len())?);
        let block_codes = ctx.read::<u32>(&codes, n * len)?;
        for (i, c) in block_codes.chunks_exact(len).enumerate() {
            let row = (r.start + i) * cols;
            out.codes[row + b.start..row + b.end].copy_from_slice(c);
        }
    }
    Ok(())
}

/// See [`crate::backend::Backend::gptq_update_rest`]; arguments already checked.
pub fn gptq_update_rest(
    ctx: &GpuContext,
    w: &mut [f32],
    rows: usize,
    cols: usize,
    end: usize,
    err: &[f32],
    hinv_rest: &[f32],
) -> Result<()> {
    let n = cols - end;
    if rows == 0 || n == 0 {
        return Ok(());
    }
    let len = err.len() / rows;
    let col_tiles = n.div_ceil(TILE);
    if col_tiles > ctx.max_workgroups() as usize {
        return Err(Error::Gpu(format!(
            "GPTQ update of {n} columns needs {col_tiles} workgroups in one dimension, more than {}",
            ctx.max_workgroups()
        )));
    }
    let k = ctx.kernel("gptq.update_rest", SOURCE, "update_rest", &REST_BINDINGS)?;
    // Hinv[block, end..] is [len, n]: split its columns if it exceeds a binding.
    let col_ranges = row_chunks(ctx, n, len * 4)?;
    let hinv: Vec<GpuBuffer> = col_ranges
        .iter()
        .map(|c| {
            let part: Vec<f32> = hinv_rest
                .chunks_exact(n)
                .flat_map(|row| row[c.clone()].iter().copied())
                .collect();
            ctx.upload("gptq.hinv_rest", f32_bytes(&part))
        })
        .collect::<Result<_>>()?;
    for r in row_chunks(ctx, rows, cols * 4)? {
        let m = r.len();
        let wbuf = ctx.upload("gptq.w", f32_bytes(&w[r.start * cols..r.end * cols]))?;
        let ebuf = ctx.upload("gptq.err", f32_bytes(&err[r.start * len..r.end * len]))?;
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(col_ranges.len());
        for (c, h) in col_ranges.iter().zip(&hinv) {
            let params = Params {
                rows: m as u32,
                cols: cols as u32,
                len: len as u32,
                end: (end + c.start) as u32,
                n: c.len() as u32,
                ..Params::default()
            };
            uniforms.push(ctx.uniform("gptq.params", &params));
            let u = &uniforms[uniforms.len() - 1];
            ctx.encode(
                &mut enc,
                &k,
                &[u, h, &wbuf, &ebuf],
                [c.len().div_ceil(TILE) as u32, m.div_ceil(TILE) as u32, 1],
            );
        }
        ctx.submit_and_wait(enc)?;
        w[r.start * cols..r.end * cols].copy_from_slice(&ctx.read::<f32>(&wbuf, m * cols)?);
    }
    Ok(())
}
