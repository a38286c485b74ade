//! A weight stored as llama.cpp's blocks of one ggml type, rows after
//! rows exactly as a GGUF file holds them: what GPTQ onto a block type
//! produces ([`super::GgmlGrid`]), what the llmq format keeps of it (one
//! `NAME.blocks` part of raw bytes) and what the GGUF writer copies. On the
//! CPU its matmul dequantizes one row at a time, so the weight stays packed
//! (the GEMV of Q8_0, Q4_0, Q4_1, Q4_K and Q6_K decodes in registers,
//! [`super::gemv`]).

use super::GgmlType;
use crate::encoding::{check_activations, Encoding, Part};
use crate::error::{Error, Result};
use rayon::prelude::*;
use safetensors::Dtype;

/// `[rows, cols]` weights as blocks of `ty`.
#[derive(Clone, Debug, PartialEq)]
pub struct GgmlTensor {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// `rows · row_bytes(ty, cols)` bytes.
    pub data: Vec<u8>,
}

/// Bytes of one row of `cols` weights of `ty` (whole blocks).
pub fn row_bytes(ty: GgmlType, cols: usize) -> usize {
    cols / ty.block_size() * ty.type_size()
}

/// The one part a `[rows, cols]` weight of `ty` stores.
pub(crate) fn parts(ty: GgmlType, rows: usize, cols: usize) -> Vec<Part> {
    vec![Part {
        suffix: "blocks",
        dtype: Dtype::U8,
        shape: [rows, row_bytes(ty, cols)],
    }]
}

impl GgmlTensor {
    pub fn encoding(&self) -> Encoding {
        Encoding::Ggml(self.ty)
    }

    /// Checks the type (one llmq-gpu dequantizes, a quantized one), that
    /// its blocks tile the rows and the byte count.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::BadTensor {
                name: name.into(),
                msg,
            })
        };
        if !self.ty.is_quantized() || !self.ty.dequantizable() {
            return bad(format!(
                "{} is not a quantized type llmq-gpu reads",
                self.ty.name()
            ));
        }
        if self.rows == 0 || self.cols == 0 || !self.cols.is_multiple_of(self.ty.block_size()) {
            return bad(format!(
                "shape [{}, {}] does not split into {} blocks of {}",
                self.rows,
                self.cols,
                self.ty.name(),
                self.ty.block_size()
            ));
        }
        let want = self.rows * row_bytes(self.ty, self.cols);
        if self.data.len() != want {
            return bad(format!(
                "{} bytes of {} blocks, expected {want}",
                self.data.len(),
                self.ty.name()
            ));
        }
        Ok(())
    }

    /// Every weight as f32 (llama.cpp's dequantization).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.validate("ggml tensor")?;
        super::dequantize(self.ty, &self.data, self.rows * self.cols).ok_or_else(|| {
            Error::Config(format!(
                "{} blocks could not be dequantized",
                self.ty.name()
            ))
        })
    }

    /// `y = x · Wᵀ` (`x` `[tokens, cols]` → `[tokens, rows]`) with the
    /// blocks dequantized a few rows at a time: into the blocked SGEMM for
    /// batches, row by row against each token for GEMV-sized ones.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        self.validate("ggml tensor")?;
        check_activations(x, tokens, self.cols)?;
        let (rb, cols) = (row_bytes(self.ty, self.cols), self.cols);
        let dequant = |r0: usize, n: usize, out: &mut [f32]| {
            let bytes = &self.data[r0 * rb..(r0 + n) * rb];
            // validate() checked the byte count, so this cannot fail.
            if let Some(w) = super::dequantize(self.ty, bytes, n * cols) {
                out[..n * cols].copy_from_slice(&w);
            }
        };
        if tokens >= crate::gemm::MIN_TOKENS {
            return Ok(crate::gemm::blocked_xwt(
                x, tokens, cols, self.rows, &dequant,
            ));
        }
        if super::gemv::supported(self.ty) {
            // Blocks decoded in registers (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K on AVX2).
            return Ok(super::gemv::gemv(
                self.ty, &self.data, self.rows, cols, x, tokens,
            ));
        }
        let mut yt = vec![0f32; self.rows * tokens];
        yt.par_chunks_mut(tokens).enumerate().for_each_init(
            || vec![0f32; cols],
            |w, (r, out)| {
                dequant(r, 1, w);
                for (t, o) in out.iter_mut().enumerate() {
                    *o = crate::gemm::dot(w, &x[t * cols..(t + 1) * cols]);
                }
            },
        );
        Ok(crate::gemm::transpose(&yt, tokens, self.rows))
    }

    pub fn stored_parts(&self, name: &str) -> Result<Vec<(Part, Vec<u8>)>> {
        self.validate(name)?;
        Ok(parts(self.ty, self.rows, self.cols)
            .into_iter()
            .map(|p| (p, self.data.clone()))
            .collect())
    }

    pub fn from_stored_parts<'a>(
        name: &str,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        part: impl Fn(&Part) -> Result<&'a [u8]>,
    ) -> Result<Self> {
        let t = Self {
            ty,
            rows,
            cols,
            data: part(&parts(ty, rows, cols)[0])?.to_vec(),
        };
        t.validate(name)?;
        Ok(t)
    }
}
