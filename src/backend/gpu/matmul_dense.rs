//! Thin wrapper over `shaders/matmul_dense.wgsl`: `y = x · Wᵀ` with a dense
//! f32 weight (reference models, the output head). Like the packed
//! [`super::matmul::GpuQuantWeights`], the weight is uploaded once, split by
//! rows so no buffer exceeds the binding limit (SmolLM2's tied head is
//! 113 MB, a 4096-wide model's more than 128 MiB), and stays resident.

use super::context::{Binding, GpuContext};
use super::{check_buffer, f32_bytes, row_chunks, GpuBuffer};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/matmul_dense.wgsl");
// Must match RB and TB in matmul_dense.wgsl.
const RB: usize = 4;
const TB: usize = 4;
const SHARED_BYTES: u32 = (TB * 64 * 16) as u32;

/// Mirrors `Params` in matmul_dense.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    rows: u32,
    cols: u32,
    out_stride: u32,
    row0: u32,
    row_blocks: u32,
    _pad: [u32; 2],
}

const BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// A dense `[rows, cols]` f32 weight resident on the GPU, in row chunks.
pub struct GpuDenseWeights {
    pub rows: usize,
    pub cols: usize,
    /// (first row, rows, buffer) per chunk.
    chunks: Vec<(usize, usize, GpuBuffer)>,
}

impl GpuDenseWeights {
    pub fn upload(ctx: &GpuContext, w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        if w.len() != rows * cols || cols == 0 {
            return Err(Error::Config(format!(
                "dense weight has {} values, expected {rows} x {cols}",
                w.len()
            )));
        }
        let chunks = row_chunks(ctx, rows, cols * 4)?
            .into_iter()
            .map(|r| {
                let buf = ctx.upload(
                    "matmul_dense.w",
                    f32_bytes(&w[r.start * cols..r.end * cols]),
                )?;
                Ok((r.start, r.len(), buf))
            })
            .collect::<Result<_>>()?;
        Ok(Self { rows, cols, chunks })
    }

    /// Row chunks (buffers, dispatches per matmul).
    pub fn n_chunks(&self) -> usize {
        self.chunks.len()
    }

    pub fn bytes(&self) -> u64 {
        (self.rows * self.cols * 4) as u64
    }
}

/// Records `y = x · Wᵀ` for `tokens` rows: `x` `[tokens, cols]`, `y`
/// `[tokens, rows]`, one dispatch per weight chunk.
pub fn encode_dense(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    w: &GpuDenseWeights,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    tokens: usize,
) -> Result<()> {
    if tokens == 0 {
        return Err(Error::Config("dense matmul of 0 tokens".into()));
    }
    check_buffer("dense matmul input", x, tokens * w.cols)?;
    check_buffer("dense matmul output", y, tokens * w.rows)?;
    let limit = ctx.limits().max_compute_workgroup_storage_size;
    if SHARED_BYTES > limit {
        return Err(Error::Gpu(format!(
            "dense matmul needs {SHARED_BYTES} bytes of workgroup memory; {} allows {limit}",
            ctx.adapter.short()
        )));
    }
    let k = ctx.kernel("matmul_dense", SOURCE, "dense", &BINDINGS)?;
    for (row0, rows, buf) in &w.chunks {
        let row_blocks = rows.div_ceil(RB);
        let groups = row_blocks * tokens.div_ceil(TB);
        let groups = u32::try_from(groups).map_err(|_| {
            Error::Gpu(format!(
                "dense matmul grid of {groups} workgroups is too large"
            ))
        })?;
        let params = Params {
            tokens: tokens as u32,
            rows: *rows as u32,
            cols: w.cols as u32,
            out_stride: w.rows as u32,
            row0: *row0 as u32,
            row_blocks: row_blocks as u32,
            _pad: [0; 2],
        };
        let uniform = ctx.uniform("matmul_dense.params", &params);
        ctx.encode(encoder, &k, &[&uniform, buf, x, y], ctx.grid(groups));
    }
    Ok(())
}

/// `y = x · Wᵀ` with a resident weight and host activations, the tokens
/// split so each chunk of `x` and `y` fits one binding.
pub fn dense_resident(
    ctx: &GpuContext,
    w: &GpuDenseWeights,
    x: &[f32],
    tokens: usize,
) -> Result<Vec<f32>> {
    if x.len() != tokens * w.cols {
        return Err(Error::Config(format!(
            "dense matmul input has {} values, expected {tokens} tokens x {} columns",
            x.len(),
            w.cols
        )));
    }
    let mut y = Vec::with_capacity(tokens * w.rows);
    for r in row_chunks(ctx, tokens, w.cols.max(w.rows) * 4)? {
        let xb = ctx.upload(
            "matmul_dense.x",
            f32_bytes(&x[r.start * w.cols..r.end * w.cols]),
        )?;
        let yb = ctx.storage("matmul_dense.y", (r.len() * w.rows * 4) as u64)?;
        let mut enc = ctx.encoder();
        encode_dense(ctx, &mut enc, w, &xb, &yb, r.len())?;
        ctx.submit_and_wait(enc)?;
        y.extend(ctx.read::<f32>(&yb, r.len() * w.rows)?);
    }
    Ok(y)
}

/// A dense weight uploaded once, as a [`crate::backend::ResidentLinear`].
pub struct ResidentDenseLinear<'a> {
    pub ctx: &'a GpuContext,
    pub w: GpuDenseWeights,
}

impl crate::backend::ResidentLinear for ResidentDenseLinear<'_> {
    fn shape(&self) -> [usize; 2] {
        [self.w.rows, self.w.cols]
    }

    fn apply(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        dense_resident(self.ctx, &self.w, x, tokens)
    }
}
