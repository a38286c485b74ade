//! llmq folder of linear integer codes → GPTQ checkpoint, the Hugging Face
//! layout transformers, GPTQModel/AutoGPTQ and vLLM load
//! (`quant_method: gptq`, `checkpoint_format: gptq`, i.e. the v1 zero
//! convention). Per quantized linear `X.weight` of `[out, in]`:
//!
//! - `X.qweight` int32 `[in / (32/bits), out]`: codes packed along the
//!   input dimension, code `k` of a word at bit `bits·k`;
//! - `X.qzeros` int32 `[groups, out / (32/bits)]`: zero-points minus one
//!   (v1), packed the same way along the output dimension;
//! - `X.scales` f16 `[groups, out]`; `X.g_idx` int32 `[in]` = column /
//!   group size (llmq-gpu's act-order keeps codes in column order, so
//!   `desc_act` is false and `g_idx` is plain);
//!
//! so that `W[o, i] = scales[g, o] · (q[o, i] − (qzeros[g, o] + 1))`, the
//! values llmq-gpu's own dequantization gives. Everything else is f16.
//! q/k rows of models read from GGUF are un-permuted back to transformers'
//! layout, codes, scales and zeros together.

use super::atomic::StagingDir;
use super::hf_export::{config_json, hf_name, hf_tensor, write_companions, HfDtype};
use super::safetensors_writer::{self, Entry};
use super::tensor_names::hf_row_order;
use crate::encoding::affine::packing::unpack_codes;
use crate::encoding::{Granularity, QuantScheme, QuantizedTensor};
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::model::view::ModelView;
use serde_json::json;
use std::path::{Path, PathBuf};

/// What was written.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GptqExportReport {
    pub out: PathBuf,
    pub bits: u32,
    /// -1: one group per row (per channel).
    pub group_size: i64,
    pub symmetric: bool,
    pub quantized_linears: usize,
    pub tensors: usize,
    pub bytes: u64,
}

/// One output tensor: its transformers name and where its data comes from.
enum Part {
    /// Not quantized: f16 of the source tensor.
    Plain(usize, Option<usize>),
    /// Quantized linear `i` of `linears`: 0 qweight, 1 qzeros, 2 scales, 3 g_idx.
    Linear(usize, u8),
}

/// A quantized linear in transformers' row order.
struct Linear {
    q: QuantizedTensor,
    /// `order[r]`: the source row that is row `r` here (q/k un-permuted).
    order: Vec<usize>,
}

/// The one scheme every quantized linear shares, checked against what a
/// GPTQ checkpoint can hold.
fn common_scheme(name: &str, q: &QuantizedTensor, seen: &mut Option<QuantScheme>) -> Result<()> {
    let s = q.scheme;
    if !matches!(s.bits, 2 | 4 | 8) {
        return Err(Error::Config(format!(
            "tensor '{name}': {}-bit codes; GPTQ checkpoints are written for 2, 4 and 8 bits \
             (their 3-bit packing crosses words and is not written yet)",
            s.bits
        )));
    }
    if matches!(s.granularity, Granularity::PerTensor) {
        return Err(Error::Config(format!(
            "tensor '{name}': per-tensor scales have no GPTQ form; quantize per channel or group"
        )));
    }
    match seen {
        Some(prev) if *prev != s => Err(Error::Config(format!(
            "tensor '{name}' is {} but another linear is {}; a GPTQ checkpoint has one \
             quantization_config for all",
            s.label(),
            prev.label()
        ))),
        _ => {
            *seen = Some(s);
            Ok(())
        }
    }
}

impl Linear {
    fn pack(&self) -> usize {
        32 / self.q.scheme.bits as usize
    }

    /// Part `what` (0 qweight, 1 qzeros, 2 scales, 3 g_idx) as bytes.
    fn bytes(&self, what: u8) -> Vec<u8> {
        let (q, bits) = (&self.q, self.q.scheme.bits);
        let (rows, cols, pack) = (q.rows, q.cols, self.pack());
        let groups = q.scheme.groups_per_row(cols);
        let group_len = q.scheme.group_len(cols);
        let words: Vec<u32> = match what {
            0 => {
                let codes = unpack_codes(&q.packed, rows, cols, bits);
                let mut w = vec![0u32; cols / pack * rows];
                for (r, &src) in self.order.iter().enumerate() {
                    for c in 0..cols {
                        w[(c / pack) * rows + r] |=
                            codes[src * cols + c] << (bits as usize * (c % pack));
                    }
                }
                w
            }
            1 => {
                let mask = (1u32 << bits) - 1;
                let mut w = vec![0u32; groups * rows / pack];
                for (r, &src) in self.order.iter().enumerate() {
                    for g in 0..groups {
                        let z = (u32::from(q.zeros[src * groups + g]).wrapping_sub(1)) & mask;
                        w[g * (rows / pack) + r / pack] |= z << (bits as usize * (r % pack));
                    }
                }
                w
            }
            2 => {
                return (0..groups)
                    .flat_map(|g| self.order.iter().map(move |&src| src * groups + g))
                    .flat_map(|i| half::f16::from_f32(q.scales[i]).to_le_bytes())
                    .collect()
            }
            _ => (0..cols).map(|c| (c / group_len) as u32).collect(),
        };
        bytemuck::cast_slice(&words).to_vec()
    }
}

/// Writes the llmq folder `model` as a GPTQ checkpoint at `out`;
/// `progress(done, total, name)` after each tensor.
pub fn llmq_to_gptq(
    model: &ModelView,
    out: &Path,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<GptqExportReport> {
    super::atomic::refuse_source_as_target(model.path(), out)?;
    let arch = model.arch().clone();
    let (mut parts, mut entries, mut linears) = (Vec::new(), Vec::new(), Vec::new());
    let mut scheme = None;
    for (i, t) in model.tensors().iter().enumerate() {
        let (hf, perm) = match t.name.starts_with("model.") || t.name == "lm_head.weight" {
            true => (t.name.clone(), None),
            false => match hf_name(&t.name, &arch)? {
                Some(n) => n,
                None => continue,
            },
        };
        let Some(q) = model.load_quantized(&t.name)? else {
            if let Some(e) = model.load_encoded(&t.name)? {
                return Err(Error::Config(format!(
                    "tensor '{}' is stored as {}; GPTQ checkpoints hold linear integer codes \
                     only (quantize the model with --format gptq; keep the llmq format for \
                     GPTVQ models)",
                    t.name,
                    e.encoding().label()
                )));
            }
            entries.push(Entry {
                name: hf,
                dtype: "F16",
                shape: t.shape.clone(),
            });
            parts.push(Part::Plain(i, perm));
            continue;
        };
        common_scheme(&t.name, &q, &mut scheme)?;
        let pack = 32 / q.scheme.bits as usize;
        if !q.cols.is_multiple_of(pack) || !q.rows.is_multiple_of(pack) {
            return Err(Error::Config(format!(
                "tensor '{}' of {}×{}: GPTQ packs {pack} codes a word along both dimensions",
                t.name, q.rows, q.cols
            )));
        }
        let groups = q.scheme.groups_per_row(q.cols);
        if q.zeros.contains(&0) {
            return Err(Error::Config(format!(
                "tensor '{}' has a group with zero-point 0, which the GPTQ v1 format cannot \
                 store (readers add 1 to the stored z − 1); quantize with --symmetric, or keep \
                 the llmq format",
                t.name
            )));
        }
        let base = hf.strip_suffix(".weight").unwrap_or(&hf).to_string();
        let shapes: [(&str, &'static str, Vec<usize>); 4] = [
            ("qweight", "I32", vec![q.cols / pack, q.rows]),
            ("qzeros", "I32", vec![groups, q.rows / pack]),
            ("scales", "F16", vec![groups, q.rows]),
            ("g_idx", "I32", vec![q.cols]),
        ];
        for (k, (suffix, dtype, shape)) in shapes.into_iter().enumerate() {
            entries.push(Entry {
                name: format!("{base}.{suffix}"),
                dtype,
                shape,
            });
            parts.push(Part::Linear(linears.len(), k as u8));
        }
        let order = match perm {
            Some(heads) => hf_row_order(q.rows, heads)
                .map_err(|e| Error::Config(format!("tensor '{}': {e}", t.name)))?,
            None => (0..q.rows).collect(),
        };
        linears.push(Linear { q, order });
    }
    let Some(s) = scheme else {
        return Err(Error::Config(format!(
            "{} holds no quantized linear; quantize it first (llmq-gpu quantize --bits 4)",
            model.path().display()
        )));
    };
    let group_size = match s.granularity {
        Granularity::Group(g) => g as i64,
        _ => -1,
    };
    let tok = Tokenizer::from_model(model)?;
    let md: std::collections::HashMap<String, serde_json::Value> =
        model.metadata().into_iter().collect();
    let template = md.get("tokenizer.chat_template").and_then(|v| v.as_str());
    let mut config = config_json(&arch, HfDtype::F16, &tok)?;
    config["quantization_config"] = json!({
        "quant_method": "gptq",
        "checkpoint_format": "gptq",
        "bits": s.bits,
        "group_size": group_size,
        "desc_act": false,
        "sym": s.symmetric,
        "static_groups": false,
        "true_sequential": true,
    });
    let stage = StagingDir::create(out, overwrite)?;
    let dir = stage.path().to_path_buf();
    write_companions(&dir, &config, &tok, template)?;
    let total = parts.len();
    let path = dir.join("model.safetensors");
    let bytes = safetensors_writer::write(&path, &entries, &[("format", "pt")], |k| {
        let data = match &parts[k] {
            Part::Plain(i, perm) => {
                let t = &model.tensors()[*i];
                HfDtype::F16.encode(&hf_tensor(model.source(), t, *perm)?)
            }
            Part::Linear(l, what) => linears[*l].bytes(*what),
        };
        progress(k + 1, total, &entries[k].name);
        Ok(data)
    })?;
    let out = stage.commit()?;
    Ok(GptqExportReport {
        out,
        bits: s.bits,
        group_size,
        symmetric: s.symmetric,
        quantized_linears: linears.len(),
        tensors: entries.len(),
        bytes,
    })
}
