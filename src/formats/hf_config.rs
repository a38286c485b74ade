//! Hugging Face `config.json` → [`ArchConfig`], and the names of the files
//! that travel with a model (tokenizer and generation settings).

use crate::error::{Error, Result};
use crate::model::arch::SUPPORTED_ARCHITECTURES;
use crate::model::arch::{ArchConfig, RopeScaling};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Files beside the weights that a quantized copy needs to be usable.
pub const COMPANION_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
];

/// The companion files that exist in `dir`, in [`COMPANION_FILES`] order.
pub fn companion_files_in(dir: &Path) -> Vec<PathBuf> {
    COMPANION_FILES
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| p.is_file())
        .collect()
}

/// Reads `config.json` as a JSON object.
pub fn read_config(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Error::format(path, "config.json is not a JSON object")),
        Err(e) => Err(Error::format(
            path,
            format!("config.json is not valid JSON: {e}"),
        )),
    }
}

/// Architecture name from `model_type`, else from the first `architectures` entry.
fn architecture_name(path: &Path, cfg: &Map<String, Value>) -> Result<String> {
    if let Some(t) = cfg.get("model_type").and_then(Value::as_str) {
        return Ok(t.to_string());
    }
    let first = cfg
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str);
    match first {
        Some("LlamaForCausalLM") => Ok("llama".into()),
        Some("MistralForCausalLM") => Ok("mistral".into()),
        Some("Qwen2ForCausalLM") => Ok("qwen2".into()),
        Some(other) => Ok(other.to_string()),
        None => Err(Error::format(
            path,
            "config.json has neither 'model_type' nor 'architectures'",
        )),
    }
}

/// Builds the architecture from a parsed `config.json`. `has_lm_head` says
/// whether the weights contain `lm_head.weight`; without it the head is tied.
///
/// An architecture outside the Llama family still yields a config (missing
/// sizes read as 0) so that [`crate::model::view::check_architecture`] can
/// reject it with a clear message instead of a missing-key error.
pub fn arch_from_config(
    path: &Path,
    cfg: &Map<String, Value>,
    has_lm_head: bool,
) -> Result<ArchConfig> {
    let architecture = architecture_name(path, cfg)?;
    let known = SUPPORTED_ARCHITECTURES.contains(&architecture.as_str());
    let int = |key: &str| -> Result<usize> {
        match cfg.get(key).and_then(Value::as_u64) {
            Some(v) => Ok(v as usize),
            None if !known => Ok(0),
            None => Err(Error::format(
                path,
                format!("config.json: missing or non-integer required key '{key}'"),
            )),
        }
    };
    let num_heads = int("num_attention_heads")?;
    let num_kv_heads = match cfg.get("num_key_value_heads") {
        Some(Value::Null) | None => num_heads,
        Some(_) => int("num_key_value_heads")?,
    };
    // Newer transformers nest rope_theta in `rope_parameters`.
    let rope_theta = cfg
        .get("rope_theta")
        .and_then(Value::as_f64)
        .or_else(|| {
            cfg.get("rope_parameters")
                .and_then(|r| r.get("rope_theta"))
                .and_then(Value::as_f64)
        })
        .unwrap_or(10000.0);
    let rms_norm_eps = cfg
        .get("rms_norm_eps")
        .and_then(Value::as_f64)
        .unwrap_or(1e-6);
    let tied = cfg
        .get("tie_word_embeddings")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ArchConfig {
        architecture,
        hidden_size: int("hidden_size")?,
        intermediate_size: int("intermediate_size")?,
        num_layers: int("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        vocab_size: int("vocab_size")?,
        context_length: int("max_position_embeddings")?,
        rope_theta: rope_theta as f32,
        rms_norm_eps: rms_norm_eps as f32,
        tied_embeddings: tied || !has_lm_head,
        rope_adjacent_pairs: false,
        rope_scaling: rope_scaling(path, cfg)?,
    })
}

/// `rope_scaling` (or newer transformers' `rope_parameters`) of a config.
fn rope_scaling(path: &Path, cfg: &Map<String, Value>) -> Result<Option<RopeScaling>> {
    let Some(r) = cfg
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| cfg.get("rope_parameters"))
        .and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let kind = r
        .get("rope_type")
        .or_else(|| r.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        r.get(key).and_then(Value::as_f64).ok_or_else(|| {
            Error::format(
                path,
                format!("config.json: rope scaling '{kind}' needs a number '{key}'"),
            )
        })
    };
    match kind {
        "default" | "none" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")? as f32,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")? as f32,
            low_freq_factor: num("low_freq_factor")? as f32,
            high_freq_factor: num("high_freq_factor")? as f32,
            original_context_length: num("original_max_position_embeddings")? as usize,
        })),
        other => Ok(Some(RopeScaling::Unsupported {
            name: other.to_string(),
        })),
    }
}
