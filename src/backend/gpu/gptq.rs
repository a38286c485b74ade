//! Thin wrapper over `shaders/gptq.wgsl`: GPTQ's in-block quantization with
//! error feedback and the deferred update of the remaining columns, on a
//! weight that stays on the GPU from the first block to the last.
//!
//! W, its codes, scales, zeros and the block's errors live in GPU buffers,
//! split by rows so every binding fits the context's binding limit (rows are
//! independent in both kernels). Each block uploads only its rows of H⁻¹'s
//! factor (`Hinv[block, block]`, then `Hinv[block, end..]` split by columns
//! to fit a binding) and is submitted without waiting; the host waits once,
//! when [`GpuGptqColumns::finish`] reads the codes back.

use super::context::{Binding, GpuContext, Kernel};
use super::{f32_bytes, row_chunks, GpuBuffer, GEMM_TILE};
use crate::backend::{GptqCodes, GptqColumns, GptqSpec};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use std::ops::Range;
use std::sync::Arc;

const SOURCE: &str = with_tile_gemm!("gptq.wgsl");
/// Invocations per workgroup of `quantize_block` (one per row).
const WG: usize = 64;

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

/// The buffers of one chunk of W's rows.
struct RowChunk {
    rows: Range<usize>,
    /// `[n, cols]` weights, updated in place.
    w: GpuBuffer,
    /// `[n, block]` scaled errors of the last quantized block.
    err: GpuBuffer,
    /// `[n, groups]`.
    scales: GpuBuffer,
    zeros: GpuBuffer,
    /// `[n, cols]`.
    codes: GpuBuffer,
}

/// GPTQ's state on the GPU; see [`crate::backend::GptqColumns`].
pub struct GpuGptqColumns<'a> {
    ctx: &'a GpuContext,
    rows: usize,
    cols: usize,
    spec: GptqSpec<'a>,
    chunks: Vec<RowChunk>,
    /// `[cols]` group of each column (one unused value for dynamic groups:
    /// every binding must exist).
    group_of: GpuBuffer,
    /// The first column of the last quantized block.
    quantized: Option<usize>,
    quantize: Arc<Kernel>,
    rest: Arc<Kernel>,
    last: Option<wgpu::SubmissionIndex>,
}

impl<'a> GpuGptqColumns<'a> {
    /// Uploads W (and act-order's fixed groups); arguments already checked.
    pub fn new(
        ctx: &'a GpuContext,
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        spec: GptqSpec<'a>,
    ) -> Result<Self> {
        let len = spec.block.min(cols);
        if (len * len * 4) as u64 > ctx.max_binding() {
            return Err(Error::Gpu(format!(
                "GPTQ blocks of {len} columns need {} bytes of H⁻¹ per binding, more than the {} \
                 bytes of {}; use a smaller block size",
                len * len * 4,
                ctx.max_binding(),
                ctx.adapter.short()
            )));
        }
        let col_tiles = cols.div_ceil(GEMM_TILE);
        if col_tiles > ctx.max_workgroups() as usize {
            return Err(Error::Gpu(format!(
                "GPTQ update of {cols} columns needs {col_tiles} workgroups in one dimension, \
                 more than {}",
                ctx.max_workgroups()
            )));
        }
        let groups = spec.groups(cols);
        let quantize = ctx.kernel(
            "gptq.quantize_block",
            SOURCE,
            "quantize_block",
            &BLOCK_BINDINGS,
        )?;
        let rest = ctx.kernel("gptq.update_rest", SOURCE, "update_rest", &REST_BINDINGS)?;
        let fixed = spec.static_groups;
        let group_of = ctx.upload(
            "gptq.group_of",
            bytemuck::cast_slice(fixed.map_or(&[0][..], |s| s.group_of)),
        )?;
        let chunks = row_chunks(ctx, rows, cols * 4)?
            .into_iter()
            .map(|r| {
                let n = r.len();
                let g = r.start * groups..r.end * groups;
                let (scales, zeros) = match fixed {
                    Some(s) => (
                        ctx.upload("gptq.scales", f32_bytes(&s.scales[g.clone()]))?,
                        ctx.upload("gptq.zeros", bytemuck::cast_slice(&s.zeros[g]))?,
                    ),
                    None => (
                        ctx.storage("gptq.scales", (n * groups * 4) as u64)?,
                        ctx.storage("gptq.zeros", (n * groups * 4) as u64)?,
                    ),
                };
                Ok(RowChunk {
                    w: ctx.upload("gptq.w", f32_bytes(&w[r.start * cols..r.end * cols]))?,
                    err: ctx.storage("gptq.err", (n * spec.block.min(cols) * 4) as u64)?,
                    codes: ctx.storage("gptq.codes", (n * cols * 4) as u64)?,
                    scales,
                    zeros,
                    rows: r,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            ctx,
            rows,
            cols,
            spec,
            chunks,
            group_of,
            quantized: None,
            quantize,
            rest,
            last: None,
        })
    }

    fn params(&self, start: usize, end: usize, rows: usize) -> Params {
        let s = &self.spec;
        Params {
            rows: rows as u32,
            cols: self.cols as u32,
            start: start as u32,
            len: (end - start) as u32,
            bits: s.bits,
            symmetric: s.symmetric as u32,
            group_len: s.group_len as u32,
            groups: s.groups(self.cols) as u32,
            static_groups: s.static_groups.is_some() as u32,
            ..Params::default()
        }
    }

    /// Queues `enc`; the buffers it uses (uniforms, H⁻¹ parts) may be
    /// dropped afterwards: wgpu keeps them alive until the GPU is done.
    fn submit(&mut self, enc: wgpu::CommandEncoder) -> Result<()> {
        self.last = Some(self.ctx.submit(enc)?);
        Ok(())
    }
}

impl GptqColumns for GpuGptqColumns<'_> {
    fn quantize_block(&mut self, start: usize) -> Result<()> {
        let (ctx, cols) = (self.ctx, self.cols);
        let end = self.spec.block_end(cols, start)?;
        let block = self.spec.hinv_part(cols, start..end, start..end);
        let block = ctx.upload("gptq.hinv", f32_bytes(&block))?;
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            let n = c.rows.len();
            uniforms.push(ctx.uniform("gptq.params", &self.params(start, end, n)));
            let uniform = &uniforms[uniforms.len() - 1];
            ctx.encode(
                &mut enc,
                &self.quantize,
                &[
                    uniform,
                    &block,
                    &c.w,
                    &c.err,
                    &c.scales,
                    &c.zeros,
                    &c.codes,
                    &self.group_of,
                ],
                ctx.grid(n.div_ceil(WG) as u32),
            );
        }
        self.quantized = Some(start);
        self.submit(enc)?;
        drop(uniforms);
        Ok(())
    }

    fn update_rest(&mut self, start: usize) -> Result<()> {
        let (ctx, cols) = (self.ctx, self.cols);
        let end = self.spec.block_end(cols, start)?;
        if self.quantized != Some(start) {
            return Err(Error::Config(format!(
                "GPTQ update after block {start}..{end} before the block was quantized"
            )));
        }
        let (len, n) = (end - start, cols - end);
        if n == 0 {
            return Ok(());
        }
        // Hinv[block, end..] is [len, n]: split its columns to fit a binding.
        let parts: Vec<(Range<usize>, GpuBuffer)> = row_chunks(ctx, n, len * 4)?
            .into_iter()
            .map(|c| {
                let part = self
                    .spec
                    .hinv_part(cols, start..end, end + c.start..end + c.end);
                Ok((c, ctx.upload("gptq.hinv_rest", f32_bytes(&part))?))
            })
            .collect::<Result<_>>()?;
        let mut enc = ctx.encoder();
        let mut uniforms = Vec::with_capacity(self.chunks.len() * parts.len());
        for c in &self.chunks {
            let m = c.rows.len();
            for (cols_part, h) in &parts {
                let params = Params {
                    end: (end + cols_part.start) as u32,
                    n: cols_part.len() as u32,
                    ..self.params(start, end, m)
                };
                uniforms.push(ctx.uniform("gptq.params", &params));
                let uniform = &uniforms[uniforms.len() - 1];
                ctx.encode(
                    &mut enc,
                    &self.rest,
                    &[uniform, h, &c.w, &c.err],
                    [
                        cols_part.len().div_ceil(GEMM_TILE) as u32,
                        m.div_ceil(GEMM_TILE) as u32,
                        1,
                    ],
                );
            }
        }
        self.submit(enc)?;
        drop(uniforms);
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<GptqCodes> {
        if let Some(index) = self.last.take() {
            self.ctx.wait_for(index)?;
        }
        let (ctx, cols) = (self.ctx, self.cols);
        let groups = self.spec.groups(cols);
        let mut out = GptqCodes {
            codes: Vec::with_capacity(self.rows * cols),
            scales: Vec::with_capacity(self.rows * groups),
            zeros: Vec::with_capacity(self.rows * groups),
        };
        for c in &self.chunks {
            let n = c.rows.len();
            out.codes.extend(ctx.read::<u32>(&c.codes, n * cols)?);
            out.scales.extend(ctx.read::<f32>(&c.scales, n * groups)?);
            out.zeros.extend(ctx.read::<u32>(&c.zeros, n * groups)?);
        }
        Ok(out)
    }
}
