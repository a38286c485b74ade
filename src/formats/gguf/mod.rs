//! GGUF model files (llama.cpp), versions 2 and 3: memory-mapped, parsed
//! up front, tensors dequantized to f32 on demand.

pub mod export;
pub mod from_source;
pub mod layout;
pub mod mix;
pub mod model_keys;
pub mod presets;
mod reader;
pub mod tokenizer_keys;
pub mod writer;

pub use crate::encoding::ggml::GgmlType;
pub use reader::{GgufValue, RawTensorInfo, DEFAULT_ALIGNMENT};

use crate::error::{Error, Result};
use crate::formats::source::{TensorInfo, TensorSource};
use crate::model::arch::SUPPORTED_ARCHITECTURES;
use crate::model::arch::{ArchConfig, RopeScaling};
use memmap2::Mmap;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// True when the file starts with the GGUF magic. Short files are not GGUF.
pub fn has_gguf_magic(path: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut m = [0u8; 4];
    Ok(f.read_exact(&mut m).is_ok() && &m == reader::MAGIC)
}

pub struct GgufModel {
    path: PathBuf,
    mmap: Mmap,
    header: reader::Header,
    arch: ArchConfig,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; like every mmap-based model reader we
        // assume the file is not truncated by another process while open.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let header = reader::parse(path, &mmap)?;
        let tensors: Vec<TensorInfo> = header
            .tensors
            .iter()
            .map(|t| TensorInfo {
                name: t.name.clone(),
                // GGUF stores the innermost dimension first.
                shape: t.dims.iter().rev().map(|&d| d as usize).collect(),
                dtype: t.ty.name().to_string(),
            })
            .collect();
        let index = tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        let arch = arch_config(path, &header.metadata, &tensors)?;
        Ok(Self {
            path: path.to_path_buf(),
            mmap,
            header,
            arch,
            tensors,
            index,
        })
    }

    /// GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }
    /// Metadata in file order, typed.
    pub fn metadata_values(&self) -> &[(String, GgufValue)] {
        &self.header.metadata
    }
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        lookup(&self.header.metadata, key)
    }
    /// Tensor infos as stored (dims innermost first, type, offset).
    pub fn raw_tensors(&self) -> &[RawTensorInfo] {
        &self.header.tensors
    }
    fn raw(&self, name: &str) -> Result<&RawTensorInfo> {
        self.index
            .get(name)
            .and_then(|&i| self.header.tensors.get(i))
            .ok_or_else(|| Error::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })
    }
    /// The stored bytes of one tensor.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let t = self.raw(name)?;
        // `parse` checked that every tensor lies inside the file.
        let start = self.header.data_start + t.offset as usize;
        self.mmap
            .get(start..start + t.n_bytes)
            .ok_or_else(|| Error::format(&self.path, format!("tensor '{name}' data out of bounds")))
    }
}

fn lookup<'a>(md: &'a [(String, GgufValue)], key: &str) -> Option<&'a GgufValue> {
    md.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

/// Llama-family hyper-parameters from `{arch}.*` keys. Files of other
/// architectures still open (with zeros where keys are missing) so that
/// `ModelView::open` can say the architecture is not supported.
fn arch_config(
    path: &Path,
    md: &[(String, GgufValue)],
    tensors: &[TensorInfo],
) -> Result<ArchConfig> {
    let architecture = lookup(md, "general.architecture")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| Error::format(path, "GGUF metadata has no string 'general.architecture'"))?
        .to_string();
    let known = SUPPORTED_ARCHITECTURES.contains(&architecture.as_str());
    // Some files store per-layer values as arrays; the first entry stands for all.
    let num = |suffix: &str| -> Option<&GgufValue> {
        let v = lookup(md, &format!("{architecture}.{suffix}"))?;
        match v {
            GgufValue::Array(a) => a.first(),
            v => Some(v),
        }
    };
    let int = |suffix: &str| -> Result<Option<usize>> {
        match num(suffix) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|v| usize::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    Error::format(
                        path,
                        format!("GGUF metadata '{architecture}.{suffix}' is not a non-negative integer: {v:?}"),
                    )
                }),
        }
    };
    let required = |suffix: &str| -> Result<usize> {
        match int(suffix)? {
            Some(v) => Ok(v),
            None if !known => Ok(0),
            None => Err(Error::format(
                path,
                format!("GGUF metadata is missing required key '{architecture}.{suffix}'"),
            )),
        }
    };
    let float = |suffix: &str, default: f32| -> f32 {
        num(suffix)
            .and_then(GgufValue::as_f64)
            .map_or(default, |v| v as f32)
    };

    let num_heads = required("attention.head_count")?;
    let vocab_size = match lookup(md, "tokenizer.ggml.tokens").and_then(GgufValue::as_array) {
        Some(tokens) => tokens.len(),
        None => match tensors.iter().find(|t| t.name == "token_embd.weight") {
            Some(t) => t.shape.first().copied().unwrap_or(0),
            None => int("vocab_size")?.unwrap_or(0),
        },
    };
    Ok(ArchConfig {
        hidden_size: required("embedding_length")?,
        intermediate_size: required("feed_forward_length")?,
        num_layers: required("block_count")?,
        num_heads,
        num_kv_heads: int("attention.head_count_kv")?.unwrap_or(num_heads),
        vocab_size,
        context_length: required("context_length")?,
        rope_theta: float("rope.freq_base", 10000.0),
        rms_norm_eps: float("attention.layer_norm_rms_epsilon", 1e-5),
        tied_embeddings: !tensors.iter().any(|t| t.name == "output.weight"),
        // llama.cpp permutes q/k for its Llama converter (adjacent-pair
        // RoPE); Qwen2 keeps transformers' rows and runs NeoX-style RoPE.
        rope_adjacent_pairs: architecture != "qwen2",
        rope_scaling: match num("rope.scaling.type").and_then(GgufValue::as_str) {
            None | Some("none") => None,
            Some("linear") => Some(RopeScaling::Linear {
                factor: float("rope.scaling.factor", 1.0),
            }),
            Some(other) => Some(RopeScaling::Unsupported {
                name: other.to_string(),
            }),
        },
        architecture,
    })
}

impl TensorSource for GgufModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format_name(&self) -> &'static str {
        "gguf"
    }
    fn arch(&self) -> &ArchConfig {
        &self.arch
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.raw(name)?;
        if !t.ty.dequantizable() {
            return Err(Error::unsupported(
                &self.path,
                format!(
                    "tensor '{name}' has ggml type {} (id {}), which llmq-gpu cannot dequantize",
                    t.ty.name(),
                    t.ty.id()
                ),
            ));
        }
        let bytes = self.tensor_bytes(name)?;
        crate::encoding::ggml::dequantize(t.ty, bytes, t.n_elements).ok_or_else(|| {
            Error::format(
                &self.path,
                format!(
                    "tensor '{name}': {} bytes do not hold {} {} elements",
                    bytes.len(),
                    t.n_elements,
                    t.ty.name()
                ),
            )
        })
    }
    /// Quantized matrices as their ggml blocks, so that `eval`, `generate`
    /// and `bench` run a GGUF file packed, as llama.cpp does; float
    /// tensors (and 1-D or 3-D ones) load as f32.
    fn load_encoded(&self, name: &str) -> Result<Option<crate::encoding::EncodedTensor>> {
        let t = self.raw(name)?;
        let &[cols, rows] = &t.dims[..] else {
            return Ok(None);
        };
        if !t.ty.is_quantized() || !t.ty.dequantizable() {
            return Ok(None);
        }
        let g = crate::encoding::ggml::GgmlTensor {
            ty: t.ty,
            rows: rows as usize,
            cols: cols as usize,
            data: self.tensor_bytes(name)?.to_vec(),
        };
        g.validate(name)
            .map_err(|e| Error::format(&self.path, e.to_string()))?;
        Ok(Some(crate::encoding::EncodedTensor::Ggml(g)))
    }
    /// Every key with its full value (tokenizer arrays included), in file order.
    fn metadata(&self) -> Vec<(String, serde_json::Value)> {
        self.header
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect()
    }
}
