//! PLACEHOLDER (replaced by the dequant-matmul kernels).
use super::GpuContext;
use crate::error::{Error, Result};
use crate::quant::packed::QuantizedTensor;

pub fn matmul(
    _ctx: &GpuContext,
    _q: &QuantizedTensor,
    _x: &[f32],
    _tokens: usize,
) -> Result<Vec<f32>> {
    Err(Error::Gpu("dequant-matmul not built yet".into()))
}
