//! Thin wrapper over `shaders/vq_codebook.wgsl`: GPTVQ's codebook-update
//! operator ([`crate::backend::CodebookSystem`]) on the GPU. H and the
//! packed indices are uploaded once; each product runs, per chunk of
//! whole row groups that fits a binding, the expand kernel (or an upload
//! of a dense matrix), the dense GEMM with H (`matmul_dense.wgsl`) and the
//! gather kernel, then reads back one value per codebook coordinate.

use super::context::{Binding, GpuContext, Kernel};
use super::matmul_dense::{encode_dense, GpuDenseWeights};
use super::{f32_bytes, GpuBuffer};
use crate::backend::CodebookSystem;
use crate::encoding::vq::index_words;
use crate::encoding::VqTensor;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use std::ops::Range;
use std::sync::Arc;

const SOURCE: &str = concat!(
    include_str!("../../../shaders/vq_index.wgsl"),
    include_str!("../../../shaders/vq_codebook.wgsl")
);
const WG: usize = 64;

/// Mirrors `Params` in vq_codebook.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    d: u32,
    k: u32,
    words_per_row: u32,
    rows_per_codebook: u32,
    span: u32,
    spans: u32,
    codebook0: u32,
    scale_block: u32,
    scale_blocks: u32,
    _pad: u32,
}

const BINDINGS: [Binding; 5] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
    Binding::StorageRead,
];

/// Rows of the weight in one pass and their indices on the GPU.
struct Chunk {
    rows: Range<usize>,
    idx: GpuBuffer,
    params: GpuBuffer,
    /// `[rows, blocks]` row scales (one unused value without).
    scales: GpuBuffer,
}

/// See [`crate::backend::Backend::vq_codebook_system`].
pub struct GpuCodebookSystem<'a> {
    ctx: &'a GpuContext,
    t: &'a VqTensor,
    h: GpuDenseWeights,
    chunks: Vec<Chunk>,
    /// The expand and gather kernels for this weight's index width.
    expand: Arc<Kernel>,
    gather: Arc<Kernel>,
}

impl<'a> GpuCodebookSystem<'a> {
    pub fn new(ctx: &'a GpuContext, t: &'a VqTensor, h: &[f32]) -> Result<Self> {
        let s = &t.scheme;
        let (cols, rpc, words) = (t.cols, s.rows_per_codebook(), index_words(s, t.cols));
        let limit = ctx.max_binding() as usize;
        let per = (limit / (cols * 4)) / rpc * rpc;
        let spans = s.spans(cols);
        if per == 0 || spans * s.centroids() > ctx.max_workgroups() as usize {
            return Err(Error::Gpu(format!(
                "codebook update of a {} x {cols} weight ({}): a group of {rpc} rows needs \
                 {} bytes per binding and {} workgroups per row group; {} allows {limit} and {}",
                t.rows,
                s.label(),
                rpc * cols * 4,
                spans * s.centroids(),
                ctx.adapter.short(),
                ctx.max_workgroups()
            )));
        }
        let chunks = (0..t.rows)
            .step_by(per)
            .map(|r0| {
                let rows = r0..(r0 + per).min(t.rows);
                let idx = ctx.upload(
                    "vq_codebook.indices",
                    bytemuck::cast_slice(&t.indices[rows.start * words..rows.end * words]),
                )?;
                let (scale_blocks, scales) = match &t.row_scales {
                    Some(rs) => (
                        rs.blocks,
                        ctx.upload(
                            "vq_codebook.row_scales",
                            f32_bytes(&rs.values[rows.start * rs.blocks..rows.end * rs.blocks]),
                        )?,
                    ),
                    None => (0, ctx.upload("vq_codebook.row_scales", f32_bytes(&[1.0]))?),
                };
                let params = ctx.uniform(
                    "vq_codebook.params",
                    &Params {
                        rows: rows.len() as u32,
                        cols: cols as u32,
                        d: s.dim,
                        k: s.centroids() as u32,
                        words_per_row: words as u32,
                        rows_per_codebook: rpc as u32,
                        span: s.span() as u32,
                        spans: spans as u32,
                        codebook0: (r0 / rpc * spans) as u32,
                        scale_block: s.scale_block,
                        scale_blocks: scale_blocks as u32,
                        _pad: 0,
                    },
                );
                Ok(Chunk {
                    rows,
                    idx,
                    params,
                    scales,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bits = s.index_bits();
        let src = format!("const VQ_INDEX_BITS: u32 = {bits}u;\n{SOURCE}");
        let key = format!("vq_codebook.{bits}");
        Ok(Self {
            ctx,
            t,
            h: GpuDenseWeights::upload(ctx, h, cols, cols)?,
            chunks,
            expand: ctx.kernel(&format!("{key}.expand"), &src, "expand", &BINDINGS)?,
            gather: ctx.kernel(&format!("{key}.gather"), &src, "gather", &BINDINGS)?,
        })
    }

    /// `Pᵀ(M · H)` (`with_h`) or `Pᵀ M`, `M` per chunk expanded from
    /// codebook values or uploaded from a host matrix: one submission per
    /// chunk.
    fn product(&self, m: Input, with_h: bool) -> Result<Vec<f64>> {
        let ctx = self.ctx;
        let s = &self.t.scheme;
        let (cols, len, spans) = (self.t.cols, s.codebook_len(), s.spans(self.t.cols));
        let cb = match m {
            Input::Codebooks(c) => Some(ctx.upload("vq_codebook.c", f32_bytes(c))?),
            Input::Dense(_) => None,
        };
        let mut out = vec![0f64; self.t.codebooks.len()];
        for ch in &self.chunks {
            let n = ch.rows.len() * cols;
            let mut enc = ctx.encoder();
            let m = match (&cb, m) {
                (Some(cb), _) => {
                    let q = ctx.storage("vq_codebook.q", (n * 4) as u64)?;
                    let groups = ctx.grid(n.div_ceil(WG) as u32);
                    let bufs: [&wgpu::Buffer; 5] = [&ch.params, &ch.idx, cb, &q, &ch.scales];
                    ctx.encode(&mut enc, &self.expand, &bufs, groups);
                    q
                }
                (None, Input::Dense(w) | Input::Codebooks(w)) => ctx.upload(
                    "vq_codebook.m",
                    f32_bytes(&w[ch.rows.start * cols..ch.rows.end * cols]),
                )?,
            };
            let g = if with_h {
                let g = ctx.storage("vq_codebook.g", (n * 4) as u64)?;
                encode_dense(ctx, &mut enc, &self.h, &m, &g, ch.rows.len())?;
                g
            } else {
                m
            };
            let codebooks = ch.rows.len().div_ceil(s.rows_per_codebook()) * spans;
            let sums = ctx.storage("vq_codebook.sums", (codebooks * len * 4) as u64)?;
            let grid = [s.centroids() as u32, codebooks as u32, 1];
            let bufs: [&wgpu::Buffer; 5] = [&ch.params, &ch.idx, &g, &sums, &ch.scales];
            ctx.encode(&mut enc, &self.gather, &bufs, grid);
            ctx.submit_and_wait(enc)?;
            let at = ch.rows.start / s.rows_per_codebook() * spans * len;
            let values = ctx.read::<f32>(&sums, codebooks * len)?;
            for (o, v) in out[at..].iter_mut().zip(values) {
                *o = v as f64;
            }
        }
        Ok(out)
    }
}

/// What a product multiplies: codebook values (expanded through `P` on the
/// GPU) or a dense `[rows, cols]` host matrix.
#[derive(Clone, Copy)]
enum Input<'b> {
    Codebooks(&'b [f32]),
    Dense(&'b [f32]),
}

impl CodebookSystem for GpuCodebookSystem<'_> {
    fn apply(&mut self, c: &[f32]) -> Result<Vec<f64>> {
        self.product(Input::Codebooks(c), true)
    }

    fn apply_dense(&mut self, w: &[f32]) -> Result<Vec<f64>> {
        self.product(Input::Dense(w), true)
    }

    fn gather(&mut self, g: &[f32]) -> Result<Vec<f64>> {
        self.product(Input::Dense(g), false)
    }
}
