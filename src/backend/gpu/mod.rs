//! The GPU backend: WGSL kernels from `shaders/` driven through wgpu.
//! One thin wrapper module per kernel family.

/// The WGSL of `shaders/$file` after `shaders/tile_gemm.wgsl`, the tiled
/// GEMM it builds on (WGSL has no includes). Every wrapper lives in this
/// folder, so the relative paths hold wherever the macro is expanded.
macro_rules! with_tile_gemm {
    ($file:literal) => {
        concat!(
            include_str!("../../../shaders/tile_gemm.wgsl"),
            include_str!(concat!("../../../shaders/", $file))
        )
    };
}

pub mod adapter;
pub mod attention;
pub mod buffer;
pub mod cholesky;
pub mod context;
pub mod elementwise;
pub mod gptq;
pub mod hessian;
pub mod histogram;
pub mod matmul;
pub mod matmul_dense;
pub mod matmul_i8;
pub mod quantize;
pub mod rope;
pub mod trace;
pub mod vq_codebook;
pub mod vq_em;

/// Rows and columns of C per workgroup of the shared tiled GEMM (`TILE` in
/// `shaders/tile_gemm.wgsl`).
pub(crate) const GEMM_TILE: usize = 64;

pub use adapter::{list_adapters, AdapterSummary, DeviceChoice};
pub use buffer::GpuBuffer;
pub use context::GpuContext;

use super::check_vq_em_args;
use super::{
    check_attention_args, check_cholesky_args, check_gptq_args, check_hessian_start,
    check_trace_args, Backend, CodebookSystem, GptqColumns, GptqSpec, GroupParams, ResidentHessian,
    ResidentLinear,
};
use crate::backend::cpu::ops::AttnShape;
use crate::encoding::QuantizedTensor;
use crate::encoding::{EncodedTensor, VqTensor};
use crate::error::Result;
use std::ops::Range;
use std::sync::Arc;

#[derive(Clone)]
pub struct GpuBackend {
    pub ctx: Arc<GpuContext>,
}

impl GpuBackend {
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        Self { ctx }
    }
}

/// Splits `rows` into consecutive ranges whose largest per-binding footprint
/// (`bytes_per_row` of the widest buffer) fits the context's binding limit.
pub fn row_chunks(
    ctx: &GpuContext,
    rows: usize,
    bytes_per_row: usize,
) -> Result<Vec<Range<usize>>> {
    let limit = ctx.max_binding() as usize;
    if bytes_per_row > limit {
        return Err(crate::error::Error::Gpu(format!(
            "one row of {bytes_per_row} bytes exceeds the storage binding limit of {limit} bytes of {}",
            ctx.adapter.short()
        )));
    }
    let per = (limit / bytes_per_row.max(1)).max(1);
    Ok((0..rows)
        .step_by(per)
        .map(|s| s..(s + per).min(rows))
        .collect())
}

/// Errors unless `buffer` holds at least `values` f32 (or u32) values.
pub(crate) fn check_buffer(what: &str, buffer: &wgpu::Buffer, values: usize) -> Result<()> {
    let need = (values * 4) as u64;
    if buffer.size() < need {
        return Err(crate::error::Error::Gpu(format!(
            "{what}: buffer of {} bytes, need {need}",
            buffer.size()
        )));
    }
    Ok(())
}

pub(crate) fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        self.ctx.adapter.short()
    }

    fn group_ranges(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        group_len: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        quantize::group_ranges(&self.ctx, w, rows, cols, group_len)
    }

    fn quantize_codes(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        params: &GroupParams,
    ) -> Result<Vec<u32>> {
        quantize::quantize_codes(&self.ctx, w, rows, cols, params)
    }

    fn abs_histogram(&self, x: &[f32], bins: usize, inv_width: f32) -> Result<Vec<u32>> {
        histogram::abs_histogram(&self.ctx, x, bins, inv_width)
    }

    fn pack(&self, codes: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>> {
        quantize::pack(&self.ctx, codes, rows, cols, bits)
    }

    fn unpack(&self, packed: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>> {
        quantize::unpack(&self.ctx, packed, rows, cols, bits)
    }

    fn dequantize(&self, q: &QuantizedTensor) -> Result<Vec<f32>> {
        quantize::dequantize(&self.ctx, q)
    }

    fn matmul(&self, q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        matmul::matmul(&self.ctx, q, x, tokens)
    }

    fn resident_linear<'a>(&'a self, q: &'a EncodedTensor) -> Result<Box<dyn ResidentLinear + 'a>> {
        Ok(Box::new(matmul::ResidentQuantLinear {
            ctx: &self.ctx,
            w: matmul::GpuQuantWeights::upload_encoded(&self.ctx, q)?,
        }))
    }

    fn vq_em(
        &self,
        points: &[f32],
        weights: &[f32],
        groups: usize,
        k: usize,
        iters: usize,
        centroids: &mut [f32],
    ) -> Result<usize> {
        let d = check_vq_em_args(points, weights, groups, k, centroids)?;
        vq_em::vq_em(&self.ctx, points, weights, groups, d, k, iters, centroids)
    }

    fn vq_codebook_system<'a>(
        &'a self,
        t: &'a VqTensor,
        h: &'a [f32],
    ) -> Result<Box<dyn CodebookSystem + 'a>> {
        super::check_codebook_system_args(t, h)?;
        Ok(Box::new(vq_codebook::GpuCodebookSystem::new(
            &self.ctx, t, h,
        )?))
    }

    fn memory_peak(&self) -> Option<u64> {
        Some(self.ctx.gpu_bytes_peak())
    }

    fn reset_memory_peak(&self) {
        self.ctx.reset_gpu_peak();
    }

    fn transfer_bytes(&self) -> Option<(u64, u64)> {
        Some(self.ctx.transfer_bytes())
    }

    fn causal_attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        windows: usize,
        seq: usize,
        shape: AttnShape,
    ) -> Result<Vec<f32>> {
        check_attention_args(q, k, v, windows, seq, shape)?;
        attention::windows(&self.ctx, q, k, v, windows, seq, shape)
    }

    fn resident_hessian<'a>(
        &'a self,
        h: Vec<f32>,
        cols: usize,
        n_seen: usize,
    ) -> Result<Box<dyn ResidentHessian + 'a>> {
        check_hessian_start(&h, cols)?;
        Ok(Box::new(hessian::GpuHessian::new(
            &self.ctx, h, cols, n_seen,
        )?))
    }

    fn gptq_columns<'a>(
        &'a self,
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        spec: GptqSpec<'a>,
    ) -> Result<Box<dyn GptqColumns + 'a>> {
        check_gptq_args(&w, rows, cols, &spec)?;
        Ok(Box::new(gptq::GpuGptqColumns::new(
            &self.ctx, w, rows, cols, spec,
        )?))
    }

    fn inverse_cholesky_upper(&self, h: &[f32], n: usize) -> Result<Option<Vec<f32>>> {
        check_cholesky_args(h, n)?;
        cholesky::inverse_cholesky_upper(&self.ctx, h, n)
    }

    fn quadratic_traces(&self, h: &[f32], cols: usize, mats: &[&[f32]]) -> Result<Vec<f64>> {
        check_trace_args(h, cols, mats)?;
        trace::quadratic_traces(&self.ctx, h, cols, mats)
    }
}
