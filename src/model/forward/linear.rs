//! [`Linear`]: the weight of one linear layer as the forward pass holds it,
//! either dense f32 (reference models) or packed (models written by
//! `llmq-gpu quantize`, which run through the dequant-matmul kernels and are
//! never expanded to a full f32 copy).

use super::half_linear::HalfWeights;
use super::ops::matmul_t;
use crate::encoding::act8;
use crate::encoding::ggml::{round_activations, ActivationRounding};
use crate::encoding::{EncodedTensor, QuantizedTensor};
use crate::error::{Error, Result};
use crate::quant::range::AbsHistogram;

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
    /// Float weights kept in their stored f16 (a head tied to an f16
    /// embedding table).
    Half(HalfWeights),
    /// A linear whose input is first rounded as llama.cpp's CPU backend
    /// rounds it for the file's tensor type (`eval
    /// --llama-cpp-activations`; CPU only).
    RoundedInput(ActivationRounding, Box<Linear>),
    /// 8-bit symmetric (or 4-bit) codes whose input is quantized to INT8 (with the
    /// static scale when given, else per token) and multiplied in integers
    /// (W8A8 and W4A8 models, `eval --int8-activations`; both backends).
    Int8Input(QuantizedTensor, Option<f32>),
    /// A linear whose inputs are also added to a histogram (range
    /// calibration of its activations).
    Observed(std::sync::Arc<std::sync::Mutex<AbsHistogram>>, Box<Linear>),
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
            Linear::Half(h) => h.rows,
            Linear::RoundedInput(_, l) => l.rows(),
            Linear::Int8Input(q, _) => q.rows,
            Linear::Observed(_, l) => l.rows(),
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Linear::Dense { cols, .. } => *cols,
            Linear::Packed(q) => q.cols(),
            Linear::Half(h) => h.cols,
            Linear::RoundedInput(_, l) => l.cols(),
            Linear::Int8Input(q, _) => q.cols,
            Linear::Observed(_, l) => l.cols(),
        }
    }

    /// Bytes a matmul reads from the weight as held: f32 when dense (f16
    /// when [`Linear::Half`]), the
    /// encoding's [`crate::encoding::Encoding::resident_bytes`] when packed.
    pub fn resident_bytes(&self) -> usize {
        match self {
            Linear::Dense { w, .. } => w.len() * 4,
            Linear::Packed(q) => q.encoding().resident_bytes(q.rows(), q.cols()) as usize,
            Linear::Half(h) => h.w.len() * 2,
            Linear::RoundedInput(_, l) => l.resident_bytes(),
            Linear::Int8Input(q, _) => q.encoding().resident_bytes(q.rows, q.cols) as usize,
            Linear::Observed(_, l) => l.resident_bytes(),
        }
    }

    pub fn is_packed(&self) -> bool {
        match self {
            Linear::RoundedInput(_, l) => l.is_packed(),
            Linear::Int8Input(..) => true,
            Linear::Observed(_, l) => l.is_packed(),
            l => matches!(l, Linear::Packed(_)),
        }
    }

    /// The weights as dense f32 (a packed linear is dequantized).
    pub fn dense_weights(&self) -> Result<Vec<f32>> {
        match self {
            Linear::Dense { w, .. } => Ok(w.clone()),
            Linear::Packed(q) => q.dequantize(),
            Linear::Half(h) => Ok(h.dense_weights()),
            Linear::RoundedInput(_, l) => l.dense_weights(),
            Linear::Int8Input(q, _) => q.dequantize(),
            Linear::Observed(_, l) => l.dense_weights(),
        }
    }

    /// The dense weights, if this linear is dense.
    pub fn as_dense(&self) -> Option<&[f32]> {
        match self {
            Linear::Dense { w, .. } => Some(w),
            _ => None,
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
            Linear::Half(h) => h.matmul(x, m),
            Linear::RoundedInput(r, l) => {
                let mut x = x.to_vec();
                round_activations(*r, &mut x);
                l.apply(&x, m)
            }
            Linear::Int8Input(q, scale) => {
                let a = match scale {
                    Some(s) => act8::quantize_static(x, m, q.cols, *s)?,
                    None => act8::quantize_dynamic(x, m, q.cols)?,
                };
                act8::matmul_i8(q, &a)
            }
            Linear::Observed(h, l) => {
                h.lock()
                    .map_err(|_| Error::Config("activation histogram lock poisoned".into()))?
                    .add(&crate::backend::CpuBackend, "linear input", x)?;
                l.apply(x, m)
            }
        }
    }
}
