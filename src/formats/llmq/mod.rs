//! The llmq-gpu output format: a folder holding
//!
//! - `model.safetensors` (or shards `model-0000i-of-0000n.safetensors` plus
//!   `model.safetensors.index.json`): for each quantized tensor `NAME`,
//!   the parts its encoding stores (for linear integer codes `NAME.qweight`,
//!   `NAME.scales` and, asymmetric only, `NAME.zeros`: see
//!   [`crate::encoding::affine`], which owns them). Kept tensors are F16
//!   under their own name.
//! - `llmq.json`: format, version, source, architecture, per-tensor schemes
//!   and the caller's report.
//! - `config.json` (the [`ArchConfig`]), `source_metadata.json` (the source
//!   file's metadata pairs) and the source's companion files.
//!
//! [`LlmqWriter`] (`writer.rs`) builds the folder atomically (see
//! [`super::atomic`]); [`LlmqModel`] (`reader.rs`) reads it back.

pub mod from_gguf;
mod reader;
mod writer;

pub use reader::LlmqModel;
pub use writer::{LlmqWriter, StagedLlmq};

use super::safetensors_model::{INDEX_FILE, SINGLE_FILE};
use crate::encoding::ggml::GgmlType;
use crate::encoding::{Encoding, Granularity, QuantScheme, VqScheme};
use crate::model::arch::ArchConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Name of the metadata file that marks an llmq-gpu output folder.
pub const METADATA_FILE: &str = "llmq.json";
/// Source metadata pairs (a GGUF's tokenizer among them).
pub const SOURCE_METADATA_FILE: &str = "source_metadata.json";
/// Version written to and accepted from `llmq.json`.
pub const FORMAT_VERSION: u32 = 1;
/// Tensor bytes per safetensors file before a new shard is started.
pub const DEFAULT_SHARD_BYTES: u64 = 2 << 30;

/// Files the writer produces itself; companions by these names are skipped.
const RESERVED: &[&str] = &[
    METADATA_FILE,
    SOURCE_METADATA_FILE,
    "config.json",
    SINGLE_FILE,
    INDEX_FILE,
];

/// How one tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredKind {
    Quantized,
    Kept,
}

/// One entry of `llmq.json`'s `tensors` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmqTensorMeta {
    pub kind: StoredKind,
    /// Quantization method (`rtn`, `gptq`, ...); absent for kept tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    /// Group length for grouped schemes, null otherwise.
    #[serde(default)]
    pub group_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<Granularity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// Shape of the original tensor, PyTorch order.
    pub shape: Vec<usize>,
    /// `int4 g128 asym` for quantized tensors, `F16` for kept ones.
    pub dtype: String,
    /// Vector-quantized tensors: the codebook scheme (then `bits` is the
    /// bits per weight of the indices and the affine fields are absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vq: Option<VqScheme>,
    /// Tensors kept as llama.cpp's blocks: the ggml type (`Q4_K`, ...),
    /// stored as one `NAME.blocks` part of raw bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ggml: Option<String>,
    /// Linears run with INT8 inputs (W8A8): how their input is quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<crate::encoding::act8::InputQuant>,
}

impl LlmqTensorMeta {
    /// The scheme of a quantized tensor; `None` for kept ones or incomplete entries.
    pub fn scheme(&self) -> Option<QuantScheme> {
        match (self.kind, self.bits, self.symmetric, self.granularity) {
            (StoredKind::Quantized, Some(bits), Some(symmetric), Some(granularity)) => {
                QuantScheme::new(bits, symmetric, granularity).ok()
            }
            _ => None,
        }
    }
}

/// The whole `llmq.json`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LlmqFile {
    format: String,
    version: u32,
    #[serde(default)]
    source: Value,
    architecture: ArchConfig,
    tensors: BTreeMap<String, LlmqTensorMeta>,
    #[serde(default)]
    report: Value,
}

impl LlmqTensorMeta {
    /// The encoding of a quantized tensor; `None` for kept ones or
    /// incomplete entries.
    pub fn encoding(&self) -> Option<Encoding> {
        if let (StoredKind::Quantized, Some(t)) = (self.kind, &self.ggml) {
            return GgmlType::from_name(t).map(Encoding::Ggml);
        }
        match (self.kind, self.vq) {
            (StoredKind::Quantized, Some(vq)) => {
                // Rebuilt through the validating constructors, options included.
                let mut s = VqScheme::new(vq.dim, vq.bits, vq.group, vq.codebook_bits).ok()?;
                if vq.svd_rank > 0 {
                    s = s.with_svd_rank(vq.svd_rank).ok()?;
                }
                if vq.scale_block > 0 {
                    s = s.with_scale_block(vq.scale_block).ok()?;
                }
                Some(Encoding::Vq(s))
            }
            _ => self.scheme().map(Encoding::Affine),
        }
    }
}

/// The first part of a quantized tensor, which orders it among the others.
pub(super) fn first_part_name(name: &str, m: &LlmqTensorMeta) -> Option<String> {
    let (encoding, rows, cols) = quantized_shape(m)?;
    let part = encoding.parts(rows, cols).into_iter().next()?;
    Some(part.name(name))
}

/// The encoding and `[rows, cols]` of a quantized entry.
pub(super) fn quantized_shape(m: &LlmqTensorMeta) -> Option<(Encoding, usize, usize)> {
    let encoding = m.encoding()?;
    let (rows, cols) = crate::formats::source::matrix_shape(&m.shape)?;
    Some((encoding, rows, cols))
}
