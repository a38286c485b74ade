//! PLACEHOLDER reference dequant-matmul (replaced by the optimized one).
use super::CpuBackend;
use crate::backend::Backend;
use crate::error::Result;
use crate::quant::packed::QuantizedTensor;

pub fn matmul(q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
    let w = CpuBackend.dequantize(q)?;
    let mut y = vec![0f32; tokens * q.rows];
    for t in 0..tokens {
        for r in 0..q.rows {
            y[t * q.rows + r] = (0..q.cols)
                .map(|k| x[t * q.cols + k] * w[r * q.cols + k])
                .sum();
        }
    }
    Ok(y)
}
