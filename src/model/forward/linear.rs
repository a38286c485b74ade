//! [`Linear`]: the weight of one linear layer as the forward pass holds it,
//! either dense f32 (reference models) or packed (models written by
//! `llmq-gpu quantize`, which run through the dequant-matmul kernels and are
//! never expanded to a full f32 copy).

use super::ops::matmul_t;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub enum Linear {
    /// Row-major `[rows, cols]` f32.
    Dense {
        rows: usize,
        cols: usize,
        w: Vec<f32>,
    },
    /// Any stored encoding (linear integer codes, VQ codebooks).
    Packed(EncodedTensor),
}

impl Linear {
    pub fn dense(rows: usize, cols: usize, w: Vec<f32>) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(Error::Config(format!(
                "dense weight has {} values, expected {rows} x {cols}",
                w.len()
            )));
        }
        Ok(Linear::Dense { rows, cols, w })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Linear::Dense { rows, .. } => *rows,
            Linear::Packed(q) => q.rows(),
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Dense { cols, .. } => *cols,
            Linear::Packed(q) => q.cols(),
        }
    }

    /// Bytes a matmul reads from the weight as held: f32 when dense, the
    /// encoding's [`crate::encoding::Encoding::resident_bytes`] when packed.
    pub fn resident_bytes(&self) -> usize {
        match self {
            Linear::Dense { w, .. } => w.len() * 4,
            Linear::Packed(q) => q.encoding().resident_bytes(q.rows(), q.cols()) as usize,
        }
    }

    pub fn is_packed(&self) -> bool {
        matches!(self, Linear::Packed(_))
    }

    /// The dense weights, if this linear is dense.
    pub fn as_dense(&self) -> Option<&[f32]> {
        match self {
            Linear::Dense { w, .. } => Some(w),
            Linear::Packed(_) => None,
        }
    }

    /// `y = x · Wᵀ` on the CPU: `x` `[m, cols]` → `[m, rows]`.
    pub fn apply(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        match self {
            Linear::Dense { rows, cols, w } => {
                if x.len() != m * cols {
                    return Err(Error::Config(format!(
                        "linear input has {} values, expected {m} x {cols}",
                        x.len()
                    )));
                }
                Ok(matmul_t(x, w, m, *cols, *rows))
            }
            Linear::Packed(q) => q.matmul(x, m),
        }
    }
}
