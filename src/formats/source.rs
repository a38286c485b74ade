//! What every reader gives [`crate::model::ModelView`]: the tensor list and
//! the tensors, by name.

use crate::error::Result;
use crate::model::arch::ArchConfig;
use std::path::{Path, PathBuf};

/// Name, shape and stored type of one tensor. Shapes are in PyTorch order
/// (outermost first): a linear weight is `[out_features, in_features]`,
/// whatever order the file stores its dimensions in.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    /// Stored type as the file names it (`F32`, `BF16`, `Q4_1`, `int4 g128` ...).
    pub dtype: String,
}

/// No model tensor has more elements; a file that claims more is corrupt,
/// and below this every size computed from a shape fits in `usize`.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 48;

/// The element count of `shape`, or `None` when it overflows or passes
/// [`MAX_TENSOR_ELEMENTS`] (shapes read from files go through this first).
pub fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

/// `[rows, cols]` of a shape read as a matrix (the last dimension is the
/// columns), checked as [`checked_numel`].
pub fn matrix_shape(shape: &[usize]) -> Option<(usize, usize)> {
    let cols = *shape.last()?;
    Some((checked_numel(shape)? / cols.max(1), cols))
}

impl TensorInfo {
    /// Readers check shapes with [`checked_numel`] when they open a file.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A file format that holds a model.
pub trait TensorSource: Send + Sync {
    /// The file or folder the model was read from.
    fn path(&self) -> &Path;
    /// `gguf`, `safetensors` or `llmq`.
    fn format_name(&self) -> &'static str;
    fn arch(&self) -> &ArchConfig;
    fn tensors(&self) -> &[TensorInfo];
    /// The tensor as f32, dequantized if stored quantized.
    fn load_f32(&self, name: &str) -> Result<Vec<f32>>;
    /// The tensor still packed, for formats that store llmq-gpu's own packed
    /// layout; `None` when it is stored unquantized (or the format has no
    /// such layout), so callers fall back to [`TensorSource::load_f32`].
    fn load_quantized(&self, _name: &str) -> Result<Option<crate::encoding::QuantizedTensor>> {
        Ok(None)
    }
    /// The tensor still packed in any of llmq-gpu's encodings (linear
    /// integer codes, VQ codebooks); `None` as for
    /// [`TensorSource::load_quantized`].
    fn load_encoded(&self, name: &str) -> Result<Option<crate::encoding::EncodedTensor>> {
        Ok(self
            .load_quantized(name)?
            .map(crate::encoding::EncodedTensor::Affine))
    }
    /// The encoding tensor `name` is stored in, known without loading it;
    /// `None` when it is stored unquantized or the format keeps no encodings.
    fn encoding_of(&self, _name: &str) -> Option<crate::encoding::Encoding> {
        None
    }
    /// How the linear `name` quantizes its input when the model runs
    /// (W8A8 models); `None`: f32 inputs.
    fn input_quant(&self, _name: &str) -> Option<crate::encoding::act8::InputQuant> {
        None
    }
    /// File-level metadata as `(key, printable value)` pairs, for `inspect`
    /// and to carry along (the tokenizer of a GGUF file lives here).
    fn metadata(&self) -> Vec<(String, serde_json::Value)>;
    /// Files that belong with the model and are copied to quantized outputs
    /// (`tokenizer.json`, `tokenizer_config.json`, ...).
    fn companion_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}
