//! Thin wrapper over `shaders/gptq.wgsl`: GPTQ's in-block quantization with
//! error feedback and the deferred update of the remaining columns, on a
//! weight that stays on the GPU from the first block to the last.
//!
//! W, its codes, scales, zeros and the block's errors live in GPU buffers,
//! split by rows so every binding fits the context's binding limit (rows are
//! independent in both kernels). Each block uploads only its rows of H⁻¹'s
//! factor (`Hinv[block, block]`, then `Hinv[block, end..]` split by columns
//! to fit a binding) and is submitted without waiting; the host waits once,
//! when [`GpuGptqColumns::finish`] has packed the codes on the device
//! (`shaders/gptq_pack.wgsl`, in the original column order) and reads
//! them back with the group parameters.
//!
//! The kernels are assembled from the grid's WGSL (see
//! [`crate::encoding::grid`]) and cached under the grid's key.

use super::context::{Binding, GpuContext, Kernel};
use super::{f32_bytes, row_chunks, GpuBuffer, GEMM_TILE};
use crate::backend::{GptqColumns, GptqSpec};
use crate::encoding::affine::packing::words_per_row;
use crate::encoding::GridCodes;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use std::ops::Range;
use std::sync::Arc;

/// The grid-independent part of the kernels; the grid's WGSL goes first.
const SOURCE: &str = with_tile_gemm!("gptq.wgsl");
/// The column loop of vector grids, after [`SOURCE`].
const VQ_SOURCE: &str = include_str!("../../../shaders/vq_columns.wgsl");
const GATHER_SOURCE: &str = include_str!("../../../shaders/gptq_gather.wgsl");
const PACK_SOURCE: &str = concat!(
    include_str!("../../../shaders/pack_word.wgsl"),
    include_str!("../../../shaders/gptq_pack.wgsl")
);
/// Invocations per workgroup of `quantize_block` (one per row) and of
/// `pack_in_order` (one per packed word).
const WG: usize = 64;
const PACK_WG: usize = 256;

/// Mirrors `Params` in gptq.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    rows: u32,
    cols: u32,
    start: u32,
    len: u32,
    group_len: u32,
    groups: u32,
    end: u32,
    n: u32,
    static_groups: u32,
    /// quantize_block runs the block's columns `first..last` (block-relative).
    first: u32,
    last: u32,
    rows_per_params: u32,
}

/// Mirrors `Params` in gptq_pack.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct PackParams {
    rows: u32,
    cols: u32,
    bits: u32,
    words_per_row: u32,
    permuted: u32,
    row_stride: u32,
    step: u32,
    _pad: u32,
}

const PACK_BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

const BLOCK_BINDINGS: [Binding; 8] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageReadWrite,
    Binding::StorageRead,
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
    /// `[n / rows_per_params, groups, params_per_group]` grid parameters.
    params: GpuBuffer,
    /// `[n, cols]`, in quantization order.
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
    /// `[cols]` diag(H) in quantization order.
    hdiag: GpuBuffer,
    /// `[cols]` where each original column was quantized (one unused value
    /// without act-order).
    position: GpuBuffer,
    /// The first column of the last quantized block.
    quantized: Option<usize>,
    quantize: Arc<Kernel>,
    rest: Arc<Kernel>,
    pack: Arc<Kernel>,
    /// Vector grids: W's columns to the host (`gather_columns`).
    gather: Option<Arc<Kernel>>,
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
        let row_params = spec.groups(cols) * spec.grid.params_per_group();
        // Grids fitted across rows (VQ, 1D included) take the vector loop.
        let vector = spec.grid.step() > 1 || !spec.grid.fits_rows();
        let source = match vector {
            false => format!("{}\n{SOURCE}", spec.grid.wgsl()),
            true => format!("{}\n{SOURCE}\n{VQ_SOURCE}", spec.grid.wgsl()),
        };
        let key = spec.grid.key();
        let entry = if vector {
            "quantize_vectors"
        } else {
            "quantize_block"
        };
        let quantize = ctx.kernel(
            &format!("gptq.{entry}/{key}"),
            &source,
            entry,
            &BLOCK_BINDINGS,
        )?;
        // Grids the host fits read the current columns back.
        let gather = match vector || spec.grid.host_fit_groups().is_some() {
            true => Some(ctx.kernel(
                &format!("gptq.gather_columns/{key}"),
                &format!("{}\n{SOURCE}\n{GATHER_SOURCE}", spec.grid.wgsl()),
                "gather_columns",
                &BLOCK_BINDINGS,
            )?),
            false => None,
        };
        let rest = ctx.kernel(
            &format!("gptq.update_rest/{key}"),
            &source,
            "update_rest",
            &REST_BINDINGS,
        )?;
        let pack = ctx.kernel(
            "gptq.pack_in_order",
            PACK_SOURCE,
            "pack_in_order",
            &PACK_BINDINGS,
        )?;
        let fixed = spec.static_groups;
        let group_of = ctx.upload(
            "gptq.group_of",
            bytemuck::cast_slice(fixed.map_or(&[0][..], |s| s.group_of)),
        )?;
        let hdiag = ctx.upload("gptq.hdiag", f32_bytes(spec.hdiag))?;
        let position = match spec.perm {
            Some(perm) => {
                let mut at = vec![0u32; cols];
                for (k, &c) in perm.iter().enumerate() {
                    at[c as usize] = k as u32;
                }
                ctx.upload("gptq.position", bytemuck::cast_slice(&at))?
            }
            None => ctx.upload("gptq.position", bytemuck::cast_slice(&[0u32]))?,
        };
        // Chunks of whole sets of rows sharing parameters.
        let rpp = spec.grid.rows_per_params();
        let sets = row_chunks(ctx, rows.div_ceil(rpp), rpp * cols.max(row_params) * 4)?;
        let chunks = sets
            .into_iter()
            .map(|s| {
                let r = s.start * rpp..(s.end * rpp).min(rows);
                let n = r.len();
                let params = match fixed {
                    Some(f) => ctx.upload(
                        "gptq.params",
                        f32_bytes(&f.params[r.start * row_params..r.end * row_params]),
                    )?,
                    None => ctx.storage("gptq.params", (s.len() * row_params * 4) as u64)?,
                };
                Ok(RowChunk {
                    w: ctx.upload("gptq.w", f32_bytes(&w[r.start * cols..r.end * cols]))?,
                    err: ctx.storage("gptq.err", (n * spec.block.min(cols) * 4) as u64)?,
                    codes: ctx.storage("gptq.codes", (n * cols * 4) as u64)?,
                    params,
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
            hdiag,
            position,
            quantized: None,
            quantize,
            rest,
            pack,
            gather,
            last: None,
        })
    }

    /// The columns `start..end` cut where dynamic groups start (one piece
    /// with static groups).
    fn segments(&self, start: usize, end: usize) -> Vec<(usize, usize)> {
        let g = self.spec.group_len;
        if self.spec.static_groups.is_some() || !self.spec.grid.fits_rows() {
            return vec![(start, end)];
        }
        let mut cuts: Vec<usize> = (start + 1..end).filter(|j| j % g == 0).collect();
        cuts.insert(0, start);
        cuts.push(end);
        cuts.windows(2).map(|w| (w[0], w[1])).collect()
    }

    fn params(&self, start: usize, end: usize, rows: usize) -> Params {
        let s = &self.spec;
        Params {
            rows: rows as u32,
            cols: self.cols as u32,
            start: start as u32,
            len: (end - start) as u32,
            group_len: s.group_len as u32,
            groups: s.groups(self.cols) as u32,
            static_groups: match (s.static_groups.is_some(), s.grid.fits_rows()) {
                (true, _) => 1,
                (false, true) => 0,
                (false, false) => 2,
            },
            first: 0,
            last: (end - start) as u32,
            rows_per_params: s.grid.rows_per_params() as u32,
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
        // One dispatch per group segment of the block: an invocation fits at
        // most one group (lavapipe lost the later groups' parameters when
        // one invocation ran several weighted scale searches).
        let segments = self.segments(start, end);
        let mut uniforms = Vec::with_capacity(self.chunks.len() * segments.len());
        for (c, &(from, to)) in self
            .chunks
            .iter()
            .flat_map(|c| segments.iter().map(move |s| (c, s)))
        {
            let n = c.rows.len();
            let params = Params {
                first: (from - start) as u32,
                last: (to - start) as u32,
                ..self.params(start, end, n)
            };
            uniforms.push(ctx.uniform("gptq.params", &params));
            let uniform = &uniforms[uniforms.len() - 1];
            ctx.encode(
                &mut enc,
                &self.quantize,
                &[
                    uniform,
                    &block,
                    &c.w,
                    &c.err,
                    &c.params,
                    &c.codes,
                    &self.group_of,
                    &self.hdiag,
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

    fn current_columns(&self, span: Range<usize>) -> Result<Vec<f32>> {
        crate::backend::cpu::gptq::check_span(self.cols, &span)?;
        let (ctx, len) = (self.ctx, span.len());
        let Some(gather) = &self.gather else {
            return Err(Error::Config(
                "GPTQ columns are read back for grids fitted across rows only".into(),
            ));
        };
        let mut out = Vec::with_capacity(self.rows * len);
        for c in &self.chunks {
            let n = c.rows.len();
            let buf = ctx.storage("gptq.columns", (n * len * 4) as u64)?;
            let params = Params {
                start: span.start as u32,
                len: len as u32,
                ..self.params(span.start, span.end, n)
            };
            let uniform = ctx.uniform("gptq.params", &params);
            let mut enc = ctx.encoder();
            ctx.encode(
                &mut enc,
                gather,
                &[
                    &uniform,
                    &self.hdiag,
                    &c.w,
                    &buf,
                    &c.params,
                    &c.codes,
                    &self.group_of,
                    &self.hdiag,
                ],
                ctx.grid((n * len).div_ceil(WG) as u32),
            );
            ctx.submit_and_wait(enc)?;
            out.extend(ctx.read::<f32>(&buf, n * len)?);
        }
        Ok(out)
    }

    fn set_group_params(&mut self, group: usize, params: &[f32]) -> Result<()> {
        let per_group = self.spec.grid.params_per_group();
        let groups = self.spec.groups(self.cols);
        let rpp = self.spec.grid.rows_per_params();
        if group >= groups || params.len() != self.rows.div_ceil(rpp) * per_group {
            return Err(Error::Config(format!(
                "GPTQ group parameters: group {group} of {groups}, {} values for {} sets of {per_group}",
                params.len(),
                self.rows.div_ceil(rpp)
            )));
        }
        for c in &self.chunks {
            let first = c.rows.start / rpp;
            for s in 0..c.rows.len().div_ceil(rpp) {
                let src = &params[(first + s) * per_group..(first + s + 1) * per_group];
                let at = ((s * groups + group) * per_group * 4) as u64;
                self.ctx.queue.write_buffer(&c.params, at, f32_bytes(src));
            }
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<GridCodes> {
        let (ctx, cols) = (self.ctx, self.cols);
        let bits = self.spec.grid.code_bits();
        // A vector grid has one code per `step` columns.
        let step = self.spec.grid.step();
        let wpr = words_per_row(cols / step, bits);
        let rpp = self.spec.grid.rows_per_params();
        let row_params = self.spec.groups(cols) * self.spec.grid.params_per_group();
        // Pack every chunk's codes on the device, then read back words and
        // parameters only.
        let mut enc = ctx.encoder();
        let mut packed = Vec::with_capacity(self.chunks.len());
        let mut uniforms = Vec::with_capacity(self.chunks.len());
        for c in &self.chunks {
            let n = c.rows.len();
            let out = ctx.storage("gptq.packed", (n * wpr * 4) as u64)?;
            uniforms.push(ctx.uniform(
                "gptq.pack_params",
                &PackParams {
                    rows: n as u32,
                    cols: (cols / step) as u32,
                    bits,
                    words_per_row: wpr as u32,
                    permuted: self.spec.perm.is_some() as u32,
                    row_stride: cols as u32,
                    step: step as u32,
                    ..PackParams::default()
                },
            ));
            let uniform = &uniforms[uniforms.len() - 1];
            ctx.encode(
                &mut enc,
                &self.pack,
                &[uniform, &c.codes, &self.position, &out],
                ctx.grid((n * wpr).div_ceil(PACK_WG) as u32),
            );
            packed.push(out);
        }
        self.submit(enc)?;
        drop(uniforms);
        if let Some(index) = self.last.take() {
            self.ctx.wait_for(index)?;
        }
        let mut out = GridCodes {
            packed: Vec::with_capacity(self.rows * wpr),
            params: Vec::with_capacity(self.rows.div_ceil(rpp) * row_params),
        };
        for (c, words) in self.chunks.iter().zip(&packed) {
            let n = c.rows.len();
            out.packed.extend(ctx.read::<u32>(words, n * wpr)?);
            out.params
                .extend(ctx.read::<f32>(&c.params, n.div_ceil(rpp) * row_params)?);
        }
        Ok(out)
    }
}
