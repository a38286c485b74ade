//! [`ModelView`]: architecture + lazily loaded tensors over any input format.

use super::arch::{ArchConfig, SUPPORTED_ARCHITECTURES};
use crate::error::{Error, Result};
use crate::formats;
pub use crate::formats::source::{TensorInfo, TensorSource};
use std::path::{Path, PathBuf};

/// What a tensor is for, from its name in either naming convention
/// (GGUF `blk.N.attn_q.weight` or Hugging Face `model.layers.N.self_attn.q_proj.weight`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorKind {
    Embedding,
    OutputHead,
    Norm,
    AttnQ,
    AttnK,
    AttnV,
    AttnOutput,
    MlpGate,
    MlpUp,
    MlpDown,
    /// Biases and anything not listed above.
    Other,
}

impl TensorKind {
    pub fn of(name: &str) -> TensorKind {
        let n = name.strip_suffix(".weight").unwrap_or(name);
        let last = n.rsplit('.').next().unwrap_or(n);
        if name.ends_with(".bias") {
            return TensorKind::Other;
        }
        match last {
            "token_embd" | "embed_tokens" | "wte" => TensorKind::Embedding,
            "output" | "lm_head" => TensorKind::OutputHead,
            "attn_q" | "q_proj" => TensorKind::AttnQ,
            "attn_k" | "k_proj" => TensorKind::AttnK,
            "attn_v" | "v_proj" => TensorKind::AttnV,
            "attn_output" | "o_proj" => TensorKind::AttnOutput,
            "ffn_gate" | "gate_proj" => TensorKind::MlpGate,
            "ffn_up" | "up_proj" => TensorKind::MlpUp,
            "ffn_down" | "down_proj" => TensorKind::MlpDown,
            s if s.contains("norm") => TensorKind::Norm,
            _ => TensorKind::Other,
        }
    }

    /// The linear layers of a decoder block, the ones quantized by default.
    pub fn is_block_linear(self) -> bool {
        matches!(
            self,
            TensorKind::AttnQ
                | TensorKind::AttnK
                | TensorKind::AttnV
                | TensorKind::AttnOutput
                | TensorKind::MlpGate
                | TensorKind::MlpUp
                | TensorKind::MlpDown
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            TensorKind::Embedding => "embedding",
            TensorKind::OutputHead => "output",
            TensorKind::Norm => "norm",
            TensorKind::AttnQ => "attn_q",
            TensorKind::AttnK => "attn_k",
            TensorKind::AttnV => "attn_v",
            TensorKind::AttnOutput => "attn_output",
            TensorKind::MlpGate => "ffn_gate",
            TensorKind::MlpUp => "ffn_up",
            TensorKind::MlpDown => "ffn_down",
            TensorKind::Other => "other",
        }
    }
}

/// A model opened from a GGUF file, a Hugging Face safetensors folder (or a
/// single `.safetensors` file with `config.json` beside it), or an llmq-gpu
/// output folder.
pub struct ModelView {
    source: Box<dyn TensorSource>,
}

impl ModelView {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let source: Box<dyn TensorSource> = if meta.is_dir() {
            if path.join(formats::llmq::METADATA_FILE).exists() {
                Box::new(formats::llmq::LlmqModel::open(path)?)
            } else {
                Box::new(formats::safetensors_model::SafetensorsModel::open(path)?)
            }
        } else if formats::gguf::has_gguf_magic(path)? {
            Box::new(formats::gguf::GgufModel::open(path)?)
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            Box::new(formats::safetensors_model::SafetensorsModel::open(path)?)
        } else {
            return Err(Error::format(
                path,
                "not a GGUF file (bad magic), a .safetensors file, or a model folder",
            ));
        };
        check_architecture(source.path(), source.arch())?;
        Ok(Self { source })
    }

    pub fn from_source(source: Box<dyn TensorSource>) -> Self {
        Self { source }
    }

    pub fn path(&self) -> &Path {
        self.source.path()
    }
    pub fn format_name(&self) -> &'static str {
        self.source.format_name()
    }
    pub fn arch(&self) -> &ArchConfig {
        self.source.arch()
    }
    pub fn tensors(&self) -> &[TensorInfo] {
        self.source.tensors()
    }
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors()
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::MissingTensor {
                path: self.path().to_path_buf(),
                name: name.to_string(),
            })
    }
    pub fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.source.load_f32(name)
    }
    pub fn load_quantized(&self, name: &str) -> Result<Option<crate::encoding::QuantizedTensor>> {
        self.source.load_quantized(name)
    }
    /// The tensor still packed in any encoding ([`crate::formats::source::TensorSource::load_encoded`]).
    pub fn load_encoded(&self, name: &str) -> Result<Option<crate::encoding::EncodedTensor>> {
        self.source.load_encoded(name)
    }
    /// How the linear `name` quantizes its input (W8A8 models).
    pub fn input_quant(&self, name: &str) -> Option<crate::encoding::act8::InputQuant> {
        self.source.input_quant(name)
    }
    pub fn metadata(&self) -> Vec<(String, serde_json::Value)> {
        self.source.metadata()
    }
    pub fn companion_files(&self) -> Vec<PathBuf> {
        self.source.companion_files()
    }
    pub fn source(&self) -> &dyn TensorSource {
        self.source.as_ref()
    }
}

/// Clear error for architectures outside the Llama family.
pub fn check_architecture(path: &Path, arch: &ArchConfig) -> Result<()> {
    if SUPPORTED_ARCHITECTURES.contains(&arch.architecture.as_str()) {
        Ok(())
    } else {
        Err(Error::unsupported(
            path,
            format!(
                "architecture '{}' is not supported; llmq-gpu handles {}",
                arch.architecture,
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ))
    }
}
