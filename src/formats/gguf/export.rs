//! A model → GGUF with llama.cpp's block types, as `llama-quantize` does
//! it without an imatrix: the same tensors quantized (see
//! [`super::presets`]), each dequantized to f32 and requantized by the
//! block type's reference quantizer; tensors whose type does not change,
//! and those not quantized, copied byte for byte; the metadata carried
//! over with `general.file_type` and `general.quantization_version` set.
//! The source is a [`GgufLayout`]: a GGUF file as itself, or a Hugging
//! Face or llmq folder as llama.cpp's converter would write it.

use super::from_source::QUANTIZATION_VERSION;
pub use super::layout::GgufLayout;
use super::mix::{visit_order, Mix, ModelFacts};
use super::presets::{is_quantized_tensor, tensor_type, Fallback, Preset, TypeRule};
use super::writer;
pub use super::writer::TensorPlan;
use super::GgufValue;
use crate::encoding::ggml::GgmlType;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::formats::source::TensorSource;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

/// What to write.
#[derive(Clone, Debug)]
pub struct GgufExport {
    pub preset: Preset,
    /// `--tensor-type` overrides, first match wins.
    pub rules: Vec<TypeRule>,
    pub overwrite: bool,
}

/// One tensor of the written file.
#[derive(Clone, Debug, Serialize)]
pub struct ExportedTensor {
    pub name: String,
    pub from: &'static str,
    pub to: &'static str,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    pub preset: &'static str,
    pub tensors: Vec<ExportedTensor>,
    /// Tensor data bytes (the file adds its header and padding).
    pub tensor_bytes: u64,
    pub file_bytes: u64,
    /// Over every tensor of the file, as llama.cpp reports a model's size.
    pub bits_per_weight: f64,
    /// Tensors written from the codes of an llmq folder (GPTQ, calibrated
    /// RTN) rather than by llama.cpp's reference rounding.
    pub from_codes: usize,
    /// Rules that matched no tensor.
    pub unused_rules: Vec<String>,
    /// What a user should hear about: fallbacks taken, rules unused.
    pub notes: Vec<String>,
    pub seconds: f64,
}

/// Writes `src` to `out` under `opts`; `progress(done, total, name)` after
/// each tensor. Nothing is left at `out` on error.
pub fn export(
    src: &GgufLayout,
    out: &Path,
    opts: &GgufExport,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ExportReport> {
    export_codes(src, None, out, opts, progress)
}

/// The bytes of the calibrated tensor `q` as the type `ty` the plan gives
/// it: ggml blocks of that type as they are, linear integer codes of its
/// grid repacked.
fn coded_bytes(name: &str, q: EncodedTensor, ty: GgmlType) -> Result<Vec<u8>> {
    match q {
        EncodedTensor::Ggml(g) if g.ty == ty => Ok(g.data),
        EncodedTensor::Affine(q) => crate::encoding::ggml::from_affine(name, &q, ty),
        other => Err(Error::Config(format!(
            "tensor '{name}': the calibrated codes are {}, but the file gives it {}",
            other.encoding().label(),
            ty.name()
        ))),
    }
}

/// Every tensor of `src` with the type the preset and rules give it,
/// and what the choice has to say (fallbacks taken, rules unused).
pub struct Plan {
    pub tensors: Vec<TensorPlan>,
    pub notes: Vec<String>,
    pub unused_rules: Vec<String>,
}

/// The types `export` writes `src`'s tensors as under `opts`: llama.cpp's
/// mix of the preset (its per-tensor choices and fallbacks), then the
/// `--tensor-type` rules.
pub fn plan(src: &GgufLayout, opts: &GgufExport) -> Result<Plan> {
    let raw: Vec<&TensorPlan> = src.tensors.iter().map(|t| &t.plan).collect();
    let names: Vec<&str> = raw.iter().map(|t| t.name.as_str()).collect();
    let get = |key: &str| src.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v);
    let arch = get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("llama");
    let facts = ModelFacts::from_metadata(arch, |k| get(k).and_then(|v| v.as_u64()));
    let mut mix = Mix::new(opts.preset, facts, &names);
    let mut plans: Vec<TensorPlan> = raw.iter().map(|&t| t.clone()).collect();
    // One note per kind of fallback, naming its tensors.
    let mut fallbacks: Vec<(Fallback, Vec<&str>)> = Vec::new();
    // llama.cpp's mix counts tensors in its own order.
    for i in visit_order(&names) {
        let t = &raw[i];
        if is_quantized_tensor(&t.name, &t.dims) {
            let row = t.dims.first().copied().unwrap_or(1);
            let (ty, fb) = tensor_type(&mut mix, &opts.rules, &t.name, row)?;
            if let Some(fb) = fb {
                match fallbacks.iter_mut().find(|f| f.0 == fb) {
                    Some(f) => f.1.push(&t.name),
                    None => fallbacks.push((fb, vec![&t.name])),
                }
            }
            plans[i].ty = ty;
        }
    }
    let mut notes: Vec<String> = fallbacks.iter().map(|(f, n)| f.note(n)).collect();
    let unused_rules: Vec<String> = opts
        .rules
        .iter()
        .filter(|r| !plans.iter().any(|p| r.pattern.is_match(&p.name)))
        .map(|r| r.pattern.as_str().to_string())
        .collect();
    for r in &unused_rules {
        notes.push(format!(
            "--tensor-type '{r}=...' matches no tensor of {}",
            src.source().path().display()
        ));
    }
    Ok(Plan {
        tensors: plans,
        notes,
        unused_rules,
    })
}

/// As [`export`], with the tensors that `codes` (an llmq folder quantized
/// from `src`, by GPTQ or calibrated RTN) holds as linear integer codes
/// written from those codes ([`crate::encoding::ggml::from_affine`])
/// instead of llama.cpp's reference rounding of `src`: their type must be
/// the one the preset gives them.
pub fn export_codes(
    src: &GgufLayout,
    codes: Option<&dyn TensorSource>,
    out: &Path,
    opts: &GgufExport,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ExportReport> {
    let start = Instant::now();
    crate::formats::atomic::refuse_source_as_target(src.source().path(), out)?;
    let Plan {
        tensors: plans,
        notes,
        unused_rules,
    } = plan(src, opts)?;
    let alignment = src.alignment;
    let metadata = carried_metadata(&src.metadata, opts.preset, alignment);
    let total = plans.len();
    let mut from_codes = 0;
    writer::write(out, opts.overwrite, &metadata, &plans, alignment, |i| {
        let (t, p) = (&src.tensors[i], &plans[i]);
        let coded = match codes {
            Some(c) if c.tensors().iter().any(|i| i.name == t.source) => {
                c.load_encoded(&t.source)?
            }
            _ => None,
        };
        // A tensor the plan keeps in a float type is written from the source.
        let coded = coded.filter(|_| p.ty.is_quantized());
        let bytes = match (coded, t.plan.ty == p.ty) {
            (Some(q), _) => {
                from_codes += 1;
                src.reorder(i, coded_bytes(&t.source, q, p.ty)?)?
            }
            (None, true) => src.stored_bytes(i)?,
            (None, false) => {
                let x = src.load_f32(i)?;
                crate::encoding::ggml::quantize(&p.name, p.ty, &x, p.dims[0] as usize)?
            }
        };
        progress(i + 1, total, &p.name);
        Ok(bytes)
    })?;
    let tensors: Vec<ExportedTensor> = plans
        .iter()
        .zip(&src.tensors)
        .map(|(p, t)| {
            Ok(ExportedTensor {
                name: p.name.clone(),
                from: t.plan.ty.name(),
                to: p.ty.name(),
                bytes: p.bytes()?,
            })
        })
        .collect::<Result<_>>()?;
    let tensor_bytes = tensors.iter().map(|t| t.bytes).sum();
    let weights: u64 = plans.iter().map(TensorPlan::elements).sum();
    let file_bytes = std::fs::metadata(out).map_err(|e| Error::io(out, e))?.len();
    Ok(ExportReport {
        preset: opts.preset.name(),
        tensors,
        tensor_bytes,
        file_bytes,
        bits_per_weight: tensor_bytes as f64 * 8.0 / weights.max(1) as f64,
        from_codes,
        unused_rules,
        notes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The source's keys in their order, with the file type, quantization
/// version and alignment set (replaced where present, else appended).
fn carried_metadata(
    md: &[(String, GgufValue)],
    preset: Preset,
    alignment: u64,
) -> Vec<(String, GgufValue)> {
    let mut out: Vec<(String, GgufValue)> = md.to_vec();
    let mut set = |key: &str, v: GgufValue| match out.iter_mut().find(|(k, _)| k == key) {
        Some(e) => e.1 = v,
        None => out.push((key.to_string(), v)),
    };
    set(
        "general.quantization_version",
        GgufValue::U32(QUANTIZATION_VERSION),
    );
    set("general.file_type", GgufValue::U32(preset.file_type()));
    set("general.alignment", GgufValue::U32(alignment as u32));
    out
}
