//! [`GgufLayout`]: any model llmq-gpu reads as the GGUF file it becomes
//! before any tensor changes type: GGUF names and dimensions, q/k rows in
//! llama.cpp's order, the tensors' own types, and the file's metadata. A
//! GGUF source is itself (its bytes and keys as stored); a Hugging Face or
//! llmq folder is laid out as llama.cpp's converter lays a model out (see
//! [`super::from_source`]). The writers (`export`, `to_gguf`) work on this.

use super::from_source::{self, FloatType};
use super::writer::TensorPlan;
use super::{GgmlType, GgufModel, GgufValue, DEFAULT_ALIGNMENT};
use crate::encoding::ggml::{affine_type, from_affine};
use crate::encoding::{EncodedTensor, Encoding};
use crate::error::{Error, Result};
use crate::formats::hf_export::HfDtype;
use crate::formats::source::{TensorInfo, TensorSource};
use crate::formats::tensor_names::{gather_rows, gguf_name, gguf_row_order};

const ROPE_FREQS: &str = "rope_freqs.weight";

/// Where a tensor's bytes in its own type come from.
enum Data {
    /// A GGUF source's bytes as stored.
    Stored,
    /// The source's values in the tensor's float type.
    Float,
    /// An llmq folder's codes (ggml blocks, or linear codes with a block type).
    Codes,
    /// Computed from the architecture (Llama 3.1's `rope_freqs.weight`).
    Values(Vec<f32>),
}

/// One tensor of the file.
pub struct LaidTensor {
    /// GGUF name, dimensions (innermost first) and the tensor's own type.
    pub plan: TensorPlan,
    /// Its name in the source (and in llmq folders quantized from it).
    pub source: String,
    rows: usize,
    /// q/k heads whose rows to permute from the source's into llama.cpp's order.
    permute: Option<usize>,
    data: Data,
}

impl LaidTensor {
    /// True when its bytes come from codes the source already holds.
    pub fn from_codes(&self) -> bool {
        matches!(self.data, Data::Codes)
    }
}

pub struct GgufLayout<'a> {
    src: &'a dyn TensorSource,
    gguf: Option<&'a GgufModel>,
    pub tensors: Vec<LaidTensor>,
    /// The file's keys (a GGUF source's as stored).
    pub metadata: Vec<(String, GgufValue)>,
    pub alignment: u64,
}

impl<'a> GgufLayout<'a> {
    /// A GGUF file as itself.
    pub fn of_gguf(m: &'a GgufModel) -> Self {
        let tensors = m
            .raw_tensors()
            .iter()
            .map(|t| LaidTensor {
                plan: TensorPlan {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                },
                source: t.name.clone(),
                rows: t
                    .dims
                    .get(1..)
                    .map_or(1, |d| d.iter().product::<u64>() as usize),
                permute: None,
                data: Data::Stored,
            })
            .collect();
        Self {
            src: m,
            gguf: Some(m),
            tensors,
            metadata: m.metadata_values().to_vec(),
            alignment: m.alignment().max(1),
        }
    }

    /// A Hugging Face or llmq folder as llama.cpp's converter lays it out,
    /// float tensors in `float`'s types.
    pub fn of_source(src: &'a dyn TensorSource, float: FloatType) -> Result<Self> {
        let tensors = laid_tensors(src, float)?;
        let metadata = from_source::metadata(src, &tensors)?;
        Ok(Self {
            src,
            gguf: None,
            tensors,
            metadata,
            alignment: DEFAULT_ALIGNMENT,
        })
    }

    pub fn source(&self) -> &'a dyn TensorSource {
        self.src
    }

    /// Tensor `i`'s bytes in its own type.
    pub fn stored_bytes(&self, i: usize) -> Result<Vec<u8>> {
        let t = &self.tensors[i];
        let bytes = match (&t.data, self.gguf) {
            (Data::Stored, Some(g)) => return Ok(g.tensor_bytes(&t.source)?.to_vec()),
            (Data::Values(v), _) => return Ok(bytemuck::cast_slice(v).to_vec()),
            (Data::Codes, _) => match self.src.load_encoded(&t.source)? {
                Some(EncodedTensor::Ggml(g)) => g.data,
                Some(EncodedTensor::Affine(q)) => from_affine(&t.source, &q, t.plan.ty)?,
                _ => {
                    return Err(Error::format(
                        self.src.path(),
                        format!("tensor '{}' is no longer stored as codes", t.source),
                    ))
                }
            },
            _ => {
                let x = self.src.load_f32(&t.source)?;
                check_finite(self.src, &t.source, &x)?;
                match t.plan.ty {
                    GgmlType::F32 => HfDtype::F32.encode(&x),
                    GgmlType::Bf16 => HfDtype::Bf16.encode(&x),
                    _ => HfDtype::F16.encode(&x),
                }
            }
        };
        self.reorder(i, bytes)
    }

    /// Tensor `i`'s values in llama.cpp's row order, all finite.
    pub fn load_f32(&self, i: usize) -> Result<Vec<f32>> {
        let t = &self.tensors[i];
        let x = match &t.data {
            Data::Values(v) => v.clone(),
            _ => self.src.load_f32(&t.source)?,
        };
        check_finite(self.src, &t.source, &x)?;
        let bytes = self.reorder(i, bytemuck::cast_slice(&x).to_vec())?;
        Ok(bytemuck::cast_slice(&bytes).to_vec())
    }

    /// Rows of tensor `i` (whole rows of any type, in the source's order)
    /// in llama.cpp's order.
    pub fn reorder(&self, i: usize, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let t = &self.tensors[i];
        let Some(heads) = t.permute else {
            return Ok(bytes);
        };
        let order = gguf_row_order(t.rows, heads)
            .map_err(|e| Error::Config(format!("tensor '{}': {e}", t.source)))?;
        Ok(gather_rows(&bytes, bytes.len() / t.rows.max(1), &order))
    }
}

fn check_finite(src: &dyn TensorSource, name: &str, x: &[f32]) -> Result<()> {
    crate::quant::rtn::check_finite(name, x).map_err(|e| Error::format(src.path(), e.to_string()))
}

/// The GGUF type of a tensor stored unquantized.
fn float_type(t: &TensorInfo, float: FloatType) -> GgmlType {
    if t.shape.len() < 2 {
        return GgmlType::F32;
    }
    match float.for_stored(&t.dtype) {
        HfDtype::F32 => GgmlType::F32,
        HfDtype::F16 => GgmlType::F16,
        HfDtype::Bf16 => GgmlType::Bf16,
    }
}

/// The GGUF type of tensor `t` of `src` and where its bytes come from.
fn tensor_type(
    src: &dyn TensorSource,
    t: &TensorInfo,
    float: FloatType,
) -> Result<(GgmlType, Data)> {
    match src.encoding_of(&t.name) {
        None => Ok((float_type(t, float), Data::Float)),
        Some(Encoding::Ggml(ty)) => Ok((ty, Data::Codes)),
        Some(Encoding::Affine(s)) => match affine_type(&s) {
            Some(ty) if t.shape.last().is_some_and(|c| c % 32 == 0) => Ok((ty, Data::Codes)),
            _ => Err(Error::Config(format!(
                "tensor '{}' holds {} codes, which no GGUF block type stores (Q8_0, Q4_0, Q4_1, \
                 Q5_0 and Q5_1 store 8/4/5-bit codes in groups of 32); quantize the source with \
                 `llmq-gpu quantize --format gguf` instead",
                t.name,
                s.label()
            ))),
        },
        Some(Encoding::Vq(_)) => Err(Error::Config(format!(
            "tensor '{}' is vector-quantized; GPTVQ's codebooks have no GGUF block type (keep \
             the llmq format for GPTVQ models)",
            t.name
        ))),
    }
}

/// Every tensor of `src` as the file will hold it.
fn laid_tensors(src: &dyn TensorSource, float: FloatType) -> Result<Vec<LaidTensor>> {
    let arch = src.arch();
    // llmq folders of GGUF sources keep GGUF names and rows; others are transformers'.
    let gguf_named = src.tensors().iter().any(|t| t.name.starts_with("blk."));
    let mut out = Vec::new();
    for t in src.tensors() {
        let (name, permute) = match gguf_named {
            true => (t.name.clone(), None),
            false => gguf_name(&t.name, arch)?,
        };
        let (ty, data) = tensor_type(src, t, float)?;
        out.push(LaidTensor {
            plan: TensorPlan {
                name,
                dims: t.shape.iter().rev().map(|&d| d as u64).collect(),
                ty,
            },
            source: t.name.clone(),
            rows: t.shape.first().copied().unwrap_or(1),
            permute,
            data,
        });
    }
    let freqs = super::model_keys::rope_freqs(arch);
    if let Some(f) = freqs.filter(|_| !out.iter().any(|t| t.plan.name == ROPE_FREQS)) {
        out.push(LaidTensor {
            plan: TensorPlan {
                name: ROPE_FREQS.into(),
                dims: vec![f.len() as u64],
                ty: GgmlType::F32,
            },
            source: String::new(),
            rows: 1,
            permute: None,
            data: Data::Values(f),
        });
    }
    Ok(out)
}
