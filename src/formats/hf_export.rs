//! GGUF → Hugging Face folder (`llmq-gpu convert`): `config.json`, one
//! `model.safetensors` of f32, f16 or bf16 weights under the transformers
//! names (q/k rows un-permuted back to the half-split RoPE layout that
//! llama.cpp's converter permuted them out of), `tokenizer.json` and
//! `tokenizer_config.json` built from the GGUF tokenizer, and
//! `generation_config.json`. Quantized GGUF tensors are dequantized; the
//! folder is written all or nothing.

use super::atomic::{self, StagingDir};
use super::gguf::GgufModel;
use super::safetensors_writer::{self, Entry};
use super::source::TensorSource;
pub(crate) use super::tensor_names::hf_name;
use super::tensor_names::unpermute;
use crate::error::{Error, Result};
use crate::model::arch::{ArchConfig, RopeScaling};
use crate::model::tokenizer::Tokenizer;
use half::{bf16, f16};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// The stored type of the written weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfDtype {
    F32,
    F16,
    Bf16,
}

impl HfDtype {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(Error::Config(format!(
                "unknown --dtype '{s}'; use f32, f16 or bf16"
            ))),
        }
    }
    pub(crate) fn safetensors_name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
        }
    }
    fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }
    pub(crate) fn encode(self, x: &[f32]) -> Vec<u8> {
        match self {
            Self::F32 => bytemuck::cast_slice(x).to_vec(),
            Self::F16 => x
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            Self::Bf16 => x
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

/// The stored type of each written tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    /// Float tensors keep their type (F32, F16, BF16): a GGUF → Hugging
    /// Face → GGUF round trip keeps them bit for bit; quantized ones become
    /// f16 (exact only in f32).
    Auto,
    Fixed(HfDtype),
}

impl FloatType {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            other => HfDtype::parse(other).map(Self::Fixed).map_err(|_| {
                Error::Config(format!(
                    "unknown --dtype '{s}'; use auto (keep each float tensor's type), f32, f16 or bf16"
                ))
            }),
        }
    }

    /// The type of a tensor stored as `stored` (`F32`, `BF16`, `Q4_K`, ...).
    pub fn for_stored(self, stored: &str) -> HfDtype {
        match self {
            Self::Fixed(d) => d,
            Self::Auto => match stored.to_ascii_uppercase().as_str() {
                "F32" => HfDtype::F32,
                "BF16" => HfDtype::Bf16,
                _ => HfDtype::F16,
            },
        }
    }
}

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HfExportReport {
    pub out: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// Tensors of the GGUF file left out, with why.
    pub skipped: Vec<String>,
}

/// An f32 as the f64 of its shortest decimal form (1e-5, not
/// 9.999999747378752e-6).
fn shortest(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// transformers' `config.json` for `arch`.
pub(crate) fn config_json(arch: &ArchConfig, dtype: HfDtype, tok: &Tokenizer) -> Result<Value> {
    let class = match arch.architecture.as_str() {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        other => {
            return Err(Error::Config(format!(
                "convert writes Llama, Mistral and Qwen2 models, not '{other}'"
            )))
        }
    };
    let mut c = json!({
        "architectures": [class],
        "model_type": arch.architecture,
        "hidden_size": arch.hidden_size,
        "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.hidden_size / arch.num_heads.max(1),
        "vocab_size": arch.vocab_size,
        "max_position_embeddings": arch.context_length,
        "rope_theta": shortest(arch.rope_theta),
        "rms_norm_eps": shortest(arch.rms_norm_eps),
        "tie_word_embeddings": arch.tied_embeddings,
        "hidden_act": "silu",
        "torch_dtype": dtype.torch_name(),
        "bos_token_id": tok.bos_id(),
        "eos_token_id": tok.eos_id(),
    });
    let scaling = match &arch.rope_scaling {
        None => Value::Null,
        Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context_length,
        }) => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_context_length,
        }),
        Some(RopeScaling::Unsupported { name }) => {
            return Err(Error::Config(format!(
                "the model's RoPE scaling '{name}' has no config.json form llmq-gpu writes"
            )))
        }
    };
    c["rope_scaling"] = scaling;
    Ok(c)
}

/// The f32 values of GGUF tensor `t` as transformers stores them: finite,
/// q/k rows un-permuted when `perm` gives the heads.
pub(crate) fn hf_tensor(
    src: &dyn TensorSource,
    t: &crate::formats::source::TensorInfo,
    perm: Option<usize>,
) -> Result<Vec<f32>> {
    let x = src.load_f32(&t.name)?;
    crate::quant::rtn::check_finite(&t.name, &x)
        .map_err(|e| Error::format(src.path(), e.to_string()))?;
    match perm {
        Some(heads) => unpermute(&x, t.shape[0], heads)
            .map_err(|e| Error::format(src.path(), format!("tensor '{}': {e}", t.name))),
        None => Ok(x),
    }
}

/// `config.json`, `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json` into `dir`.
pub(crate) fn write_companions(
    dir: &Path,
    config: &Value,
    tok: &Tokenizer,
    chat_template: Option<&str>,
) -> Result<()> {
    let write_text = |name: &str, text: &str| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        atomic::sync_file(&p)
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write_text("config.json", &pretty(config))?;
    let (tok_json, tok_cfg) = tok.hf_files(chat_template)?;
    write_text("tokenizer.json", &tok_json)?;
    write_text("tokenizer_config.json", &tok_cfg)?;
    let mut gen = Map::new();
    if let Some(b) = tok.bos_id() {
        gen.insert("bos_token_id".into(), b.into());
    }
    if let Some(e) = tok.eos_id() {
        gen.insert("eos_token_id".into(), e.into());
    }
    write_text("generation_config.json", &pretty(&Value::Object(gen)))
}

/// Writes `src` as a Hugging Face folder at `out`; `progress(done, total,
/// name)` after each tensor.
pub fn gguf_to_hf(
    src: &GgufModel,
    out: &Path,
    dtype: FloatType,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<HfExportReport> {
    super::atomic::refuse_source_as_target(src.path(), out)?;
    let arch = src.arch().clone();
    let tok = Tokenizer::from_gguf_metadata(src.path(), &src.metadata().into_iter().collect())?;
    let template = src.get("tokenizer.chat_template").and_then(|v| v.as_str());
    let (mut plan, mut skipped) = (Vec::new(), Vec::new());
    for t in src.tensors() {
        match hf_name(&t.name, &arch)? {
            Some((hf, perm)) => plan.push((t.clone(), hf, perm)),
            None => skipped.push(format!(
                "{}: transformers computes it from config.json's rope_scaling",
                t.name
            )),
        }
    }
    // config.json names the type of the matrices (most of the weights).
    let main = plan
        .iter()
        .find(|(t, _, _)| t.shape.len() >= 2)
        .map_or(HfDtype::F16, |(t, _, _)| dtype.for_stored(&t.dtype));
    let stage = StagingDir::create(out, overwrite)?;
    let dir = stage.path().to_path_buf();
    write_companions(&dir, &config_json(&arch, main, &tok)?, &tok, template)?;

    let entries: Vec<Entry> = plan
        .iter()
        .map(|(t, hf, _)| Entry {
            name: hf.clone(),
            dtype: dtype.for_stored(&t.dtype).safetensors_name(),
            shape: t.shape.clone(),
        })
        .collect();
    let path = dir.join("model.safetensors");
    let bytes = safetensors_writer::write(&path, &entries, &[("format", "pt")], |i| {
        let (t, _, perm) = &plan[i];
        let x = hf_tensor(src, t, *perm)?;
        progress(i + 1, plan.len(), &t.name);
        Ok(dtype.for_stored(&t.dtype).encode(&x))
    })?;
    let out = stage.commit()?;
    Ok(HfExportReport {
        out,
        tensors: plan.len(),
        bytes,
        skipped,
    })
}
