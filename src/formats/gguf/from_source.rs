//! A Hugging Face folder or an llmq folder as a GGUF file (`llmq-gpu
//! convert`), as llama.cpp's `convert_hf_to_gguf.py` writes a model: GGUF
//! tensor names, q/k rows permuted for llama.cpp's RoPE, the architecture
//! keys and the tokenizer (from `tokenizer.json`, or the GGUF keys an llmq
//! folder kept from its GGUF source), Llama 3.1's `rope_freqs.weight`.
//! Float tensors keep their stored type (or take the one asked for; 1-D
//! tensors are F32, as llama.cpp stores them); tensors an llmq folder
//! holds as codes keep them: ggml blocks byte for byte, linear integer
//! codes in the block type of their grid.

use super::layout::{GgufLayout, LaidTensor};
use super::model_keys::arch_keys;
use super::presets::Preset;
use super::writer::{self, TensorPlan};
use super::{tokenizer_keys, GgmlType, GgufValue, DEFAULT_ALIGNMENT};
use crate::error::{Error, Result};
pub use crate::formats::hf_export::FloatType;
use crate::formats::source::TensorSource;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// `general.quantization_version` (`GGML_QNT_VERSION`).
pub(super) const QUANTIZATION_VERSION: u32 = 2;

#[derive(Clone, Debug, Serialize)]
pub struct ToGgufReport {
    pub out: PathBuf,
    pub tensors: usize,
    /// Tensors written from an llmq folder's codes.
    pub from_codes: usize,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
}

/// The tokenizer keys: from `tokenizer.json` beside the model, else from
/// the GGUF keys an llmq folder kept.
fn tokenizer(src: &dyn TensorSource) -> Result<Vec<(String, GgufValue)>> {
    match crate::model::tokenizer::HfTokenizerFiles::of(src) {
        Some(f) => tokenizer_keys::from_hf_files(
            &f.tokenizer_json,
            f.tokenizer_config.as_deref(),
            f.config.as_deref(),
            src.arch().vocab_size,
        ),
        None => tokenizer_keys::from_json_metadata(src.path(), &src.metadata()),
    }
}

/// `general.file_type`: the preset of the type most weights have.
fn file_type(tensors: &[LaidTensor]) -> u32 {
    let mut by_type: Vec<(GgmlType, u64)> = Vec::new();
    for t in tensors.iter().filter(|t| t.plan.dims.len() >= 2) {
        match by_type.iter_mut().find(|b| b.0 == t.plan.ty) {
            Some(b) => b.1 += t.plan.elements(),
            None => by_type.push((t.plan.ty, t.plan.elements())),
        }
    }
    let top = by_type
        .iter()
        .max_by_key(|b| b.1)
        .map_or(GgmlType::F32, |b| b.0);
    Preset::for_type(top).map_or(0, Preset::file_type)
}

/// The model's name: the source's `general.name`, else its file name.
fn model_name(src: &dyn TensorSource) -> String {
    let kept = src
        .metadata()
        .into_iter()
        .find(|(k, _)| k == "general.name");
    match kept.as_ref().and_then(|(_, v)| v.as_str()) {
        Some(n) => n.to_string(),
        None => src
            .path()
            .file_name()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
    }
}

/// The descriptive `general.*` keys (license, languages, ...) an llmq
/// folder kept from its GGUF source and `set` does not already hold.
fn kept_general_keys(
    src: &dyn TensorSource,
    set: &[(String, GgufValue)],
) -> Vec<(String, GgufValue)> {
    let text = |v: &serde_json::Value| v.as_str().map(|s| GgufValue::String(s.into()));
    src.metadata()
        .into_iter()
        .filter(|(k, _)| k.starts_with("general.") && !set.iter().any(|(s, _)| s == k))
        .filter_map(|(k, v)| {
            let v = match &v {
                serde_json::Value::Array(items) => {
                    GgufValue::Array(items.iter().map(text).collect::<Option<_>>()?)
                }
                v => text(v)?,
            };
            Some((k, v))
        })
        .collect()
}

/// The keys of the GGUF file of `src` whose tensors are `tensors`.
pub(super) fn metadata(
    src: &dyn TensorSource,
    tensors: &[LaidTensor],
) -> Result<Vec<(String, GgufValue)>> {
    let mut md = arch_keys(src.arch(), &model_name(src))?;
    md.push((
        "general.file_type".into(),
        GgufValue::U32(file_type(tensors)),
    ));
    md.push((
        "general.quantization_version".into(),
        GgufValue::U32(QUANTIZATION_VERSION),
    ));
    md.push((
        "general.alignment".into(),
        GgufValue::U32(DEFAULT_ALIGNMENT as u32),
    ));
    md.extend(tokenizer(src)?);
    let general = kept_general_keys(src, &md);
    md.extend(general);
    Ok(md)
}

/// Writes `src` (a Hugging Face or llmq folder) as the GGUF file `out`;
/// `progress(done, total, name)` after each tensor. Nothing is left at
/// `out` on error.
pub fn to_gguf(
    src: &dyn TensorSource,
    out: &Path,
    float: FloatType,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ToGgufReport> {
    if src.format_name() == "gguf" {
        return Err(Error::Config(format!(
            "{} is already GGUF; `llmq-gpu quantize --format gguf --gguf-type F16` rewrites \
             its types",
            src.path().display()
        )));
    }
    crate::formats::atomic::refuse_source_as_target(src.path(), out)?;
    let layout = GgufLayout::of_source(src, float)?;
    let plans: Vec<TensorPlan> = layout.tensors.iter().map(|t| t.plan.clone()).collect();
    let tensor_bytes = plans.iter().map(TensorPlan::bytes).sum::<Result<u64>>()?;
    let total = plans.len();
    writer::write(
        out,
        overwrite,
        &layout.metadata,
        &plans,
        layout.alignment,
        |i| {
            let bytes = layout.stored_bytes(i)?;
            progress(i + 1, total, &plans[i].name);
            Ok(bytes)
        },
    )?;
    let weights: u64 = plans.iter().map(TensorPlan::elements).sum();
    Ok(ToGgufReport {
        out: out.to_path_buf(),
        tensors: total,
        from_codes: layout.tensors.iter().filter(|t| t.from_codes()).count(),
        file_bytes: std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len(),
        bits_per_weight: tensor_bytes as f64 * 8.0 / weights.max(1) as f64,
    })
}
