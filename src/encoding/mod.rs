//! Stored encodings of weights: how a `[rows, cols]` linear weight is kept
//! on disk and in memory, one module per encoding.
//!
//! Each encoding owns the parts it stores (name suffix, dtype, shape), its
//! exact byte counts, its reference dequantization and, through [`Grid`],
//! the grid GPTQ rounds onto. Everything else (the llmq writer and reader,
//! the forward pass's linears, `bench`, `eval`'s size report) asks
//! [`Encoding`] instead of knowing a layout:
//!
//! - [`Encoding::stored_bytes`]: bytes in a file (what `quantize`,
//!   `inspect`, `eval` and `bench` report as the stored size);
//! - [`Encoding::resident_bytes`]: bytes a matmul reads when the weight is
//!   resident on a backend (what bandwidth figures count).
//!
//! Encodings: linear integer codes with a scale and zero-point per group
//! ([`affine`]), vector-quantized codebooks ([`vq`]) and llama.cpp's block
//! types ([`ggml`], as GGUF stores them). This module is a leaf of the crate:
//! it depends on nothing else in it but the error type.

pub mod act8;
pub mod affine;
pub mod ggml;
pub mod grid;
pub mod vq;

pub use affine::{AffineGrid, Granularity, QuantScheme, QuantizedTensor};
pub use grid::{Grid, GridCodes};
pub use safetensors::Dtype;
pub use vq::{VqScheme, VqTensor};

use crate::error::{Error, Result};

/// One stored part of an encoded weight, e.g. `NAME.qweight`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Part {
    /// Appended to the weight's name after a dot.
    pub suffix: &'static str,
    pub dtype: Dtype,
    pub shape: [usize; 2],
}

impl Part {
    /// The tensor name this part is stored under for weight `weight`.
    pub fn name(&self, weight: &str) -> String {
        format!("{weight}.{}", self.suffix)
    }

    /// Bytes the part stores.
    pub fn bytes(&self) -> u64 {
        (self.shape[0] * self.shape[1] * self.dtype.bitsize() / 8) as u64
    }
}

/// Whether the CPU's AVX2+FMA kernels (`affine/simd.rs`, `vq/simd.rs`) can
/// run here (std caches the CPUID result).
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`avx2_fma`] plus F16C, for the kernels that read f16 scales or weights
/// (`ggml/gemv.rs`, the f16 head).
pub(crate) fn avx2_fma_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        avx2_fma() && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Checks that `x` holds `tokens` rows of `cols` activations for a matmul.
pub(crate) fn check_activations(x: &[f32], tokens: usize, cols: usize) -> Result<()> {
    if x.len() != tokens * cols {
        return Err(Error::Config(format!(
            "matmul input has {} values, expected {tokens} tokens x {cols} columns",
            x.len()
        )));
    }
    Ok(())
}

/// `v` as f16, or an error naming `tensor` when it is not finite or
/// overflows f16 (so nothing is stored as infinity).
pub fn to_f16(tensor: &str, v: f32) -> Result<half::f16> {
    if !v.is_finite() {
        return Err(Error::BadTensor {
            name: tensor.into(),
            msg: format!("value {v} is not finite"),
        });
    }
    let h = half::f16::from_f32(v);
    if h.is_infinite() {
        return Err(Error::BadTensor {
            name: tensor.into(),
            msg: format!("value {v} overflows f16 (largest is 65504); it cannot be stored"),
        });
    }
    Ok(h)
}

/// How one stored weight is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// Linear integer codes, `w = scale · (q − zero)` per group.
    Affine(QuantScheme),
    /// Vector quantization: each vector of `dim` weights is an index into
    /// its group's codebook.
    Vq(VqScheme),
    /// llama.cpp's blocks of one ggml type, as a GGUF file stores them.
    Ggml(ggml::GgmlType),
}

impl Encoding {
    /// Short human label such as `W4 g128 asym`.
    pub fn label(&self) -> String {
        match self {
            Encoding::Affine(s) => s.label(),
            Encoding::Vq(s) => s.label(),
            Encoding::Ggml(t) => t.name().to_string(),
        }
    }

    /// The parts a `[rows, cols]` weight stores, in the order they are written.
    pub fn parts(&self, rows: usize, cols: usize) -> Vec<Part> {
        match self {
            Encoding::Affine(s) => affine::parts(s, rows, cols),
            Encoding::Vq(s) => vq::parts(s, rows, cols),
            Encoding::Ggml(t) => ggml::parts(*t, rows, cols),
        }
    }

    /// Bytes a `[rows, cols]` weight stores in a file: the sum of its parts.
    pub fn stored_bytes(&self, rows: usize, cols: usize) -> u64 {
        self.parts(rows, cols).iter().map(Part::bytes).sum()
    }

    /// Bits per weight as stored: [`Encoding::stored_bytes`] over the weights.
    pub fn stored_bits_per_weight(&self, rows: usize, cols: usize) -> f64 {
        self.stored_bytes(rows, cols) as f64 * 8.0 / (rows * cols).max(1) as f64
    }

    /// Bytes one matmul reads from a `[rows, cols]` weight resident on a
    /// backend (the CPU and the GPU keep the same form): what bandwidth
    /// figures count.
    pub fn resident_bytes(&self, rows: usize, cols: usize) -> u64 {
        match self {
            Encoding::Affine(s) => affine::resident_bytes(s, rows, cols),
            Encoding::Vq(s) => vq::resident_bytes(s, rows, cols),
            // The blocks, as the CPU's matmul reads them (the GPU has no
            // block kernels yet and holds them dequantized).
            Encoding::Ggml(t) => (ggml::row_bytes(*t, cols) * rows) as u64,
        }
    }
}

/// What the decoder blocks' linear layers (`q/k/v/o/gate/up/down`, the
/// ones quantization changes) store in a model file.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LinearStorage {
    pub weights: u64,
    /// Bytes in the file: [`Encoding::stored_bytes`] of each quantized
    /// linear; from the tensor type for GGUF and safetensors
    /// (`crate::eval::size::linear_storage` reads it from a file).
    pub stored_bytes: u64,
}

impl LinearStorage {
    pub fn bits_per_weight(&self) -> f64 {
        if self.weights == 0 {
            0.0
        } else {
            self.stored_bytes as f64 * 8.0 / self.weights as f64
        }
    }
}

/// The line every command prints for it, e.g. `block linears: 4718592
/// weights, 2654208 bytes stored (4.5000 bits/weight)`.
impl std::fmt::Display for LinearStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block linears: {} weights, {} bytes stored ({:.4} bits/weight)",
            self.weights,
            self.stored_bytes,
            self.bits_per_weight()
        )
    }
}

/// A stored weight of any encoding: what writers take, readers return and
/// the pipeline hands on; each method dispatches to the encoding's module.
#[derive(Clone, Debug, PartialEq)]
pub enum EncodedTensor {
    Affine(QuantizedTensor),
    Vq(VqTensor),
    Ggml(ggml::GgmlTensor),
}

impl EncodedTensor {
    pub fn rows(&self) -> usize {
        match self {
            EncodedTensor::Affine(q) => q.rows,
            EncodedTensor::Vq(v) => v.rows,
            EncodedTensor::Ggml(g) => g.rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            EncodedTensor::Affine(q) => q.cols,
            EncodedTensor::Vq(v) => v.cols,
            EncodedTensor::Ggml(g) => g.cols,
        }
    }

    pub fn encoding(&self) -> Encoding {
        match self {
            EncodedTensor::Affine(q) => q.encoding(),
            EncodedTensor::Vq(v) => v.encoding(),
            EncodedTensor::Ggml(g) => g.encoding(),
        }
    }

    pub fn validate(&self, name: &str) -> Result<()> {
        match self {
            EncodedTensor::Affine(q) => q.validate(name),
            EncodedTensor::Vq(v) => v.validate(name),
            EncodedTensor::Ggml(g) => g.validate(name),
        }
    }

    /// Every weight as f32, `[rows, cols]` (the reference dequantization).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        match self {
            EncodedTensor::Affine(q) => q.dequantize(),
            EncodedTensor::Vq(v) => v.dequantize(),
            EncodedTensor::Ggml(g) => g.dequantize(),
        }
    }

    /// `x · Wᵀ` on the CPU without expanding W.
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        match self {
            EncodedTensor::Affine(q) => q.matmul(x, tokens),
            EncodedTensor::Vq(v) => v.matmul(x, tokens),
            EncodedTensor::Ggml(g) => g.matmul(x, tokens),
        }
    }

    pub fn stored_parts(&self, name: &str) -> Result<Vec<(Part, Vec<u8>)>> {
        match self {
            EncodedTensor::Affine(q) => q.stored_parts(name),
            EncodedTensor::Vq(v) => v.stored_parts(name),
            EncodedTensor::Ggml(g) => g.stored_parts(name),
        }
    }

    /// Reads a weight of `encoding` back from its stored parts.
    pub fn from_stored_parts<'a>(
        name: &str,
        encoding: Encoding,
        rows: usize,
        cols: usize,
        part: impl Fn(&Part) -> Result<&'a [u8]>,
    ) -> Result<Self> {
        Ok(match encoding {
            Encoding::Affine(s) => EncodedTensor::Affine(QuantizedTensor::from_stored_parts(
                name, s, rows, cols, part,
            )?),
            Encoding::Vq(s) => {
                EncodedTensor::Vq(VqTensor::from_stored_parts(name, s, rows, cols, part)?)
            }
            Encoding::Ggml(t) => EncodedTensor::Ggml(ggml::GgmlTensor::from_stored_parts(
                name, t, rows, cols, part,
            )?),
        })
    }

    pub fn stored_bytes(&self) -> u64 {
        self.encoding().stored_bytes(self.rows(), self.cols())
    }
}
