//! A GGUF file as an llmq folder (`llmq-gpu convert --to llmq`): quantized
//! tensors keep their ggml blocks byte for byte (the llmq `ggml`
//! encoding), float tensors are kept as llmq keeps unquantized tensors
//! (f16), and the GGUF keys (the tokenizer among them) are kept as the
//! source metadata, so the folder converts back to the same blocks.

use super::writer::LlmqWriter;
use crate::encoding::ggml::GgmlTensor;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::formats::gguf::GgufModel;
use crate::formats::source::TensorSource;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct ToLlmqReport {
    pub out: PathBuf,
    pub tensors: usize,
    /// Tensors kept as ggml blocks.
    pub blocks: usize,
    pub bytes: u64,
}

/// Writes `src` as the llmq folder `out`; `progress(done, total, name)`
/// after each tensor. Nothing is left at `out` on error.
pub fn gguf_to_llmq(
    src: &GgufModel,
    out: &Path,
    overwrite: bool,
    progress: &mut dyn FnMut(usize, usize, &str),
) -> Result<ToLlmqReport> {
    crate::formats::atomic::refuse_source_as_target(src.path(), out)?;
    let mut w = LlmqWriter::create(out, overwrite)?;
    let raw = src.raw_tensors();
    let mut blocks = 0;
    for (i, (t, r)) in src.tensors().iter().zip(raw).enumerate() {
        if r.ty.is_quantized() {
            let (rows, cols) = match t.shape[..] {
                [rows, cols] => (rows, cols),
                _ => {
                    return Err(Error::unsupported(
                        src.path(),
                        format!(
                            "tensor '{}' is a {}-D {} tensor; llmq folders hold ggml blocks of \
                             matrices only",
                            t.name,
                            t.shape.len(),
                            r.ty.name()
                        ),
                    ))
                }
            };
            let g = GgmlTensor {
                ty: r.ty,
                rows,
                cols,
                data: src.tensor_bytes(&t.name)?.to_vec(),
            };
            w.add_encoded(&t.name, &t.shape, &EncodedTensor::Ggml(g), "gguf")?;
            blocks += 1;
        } else {
            let x = src.load_f32(&t.name)?;
            w.add_kept(&t.name, &t.shape, &x)?;
        }
        progress(i + 1, raw.len(), &t.name);
    }
    let bytes = w.bytes_written();
    let report = ToLlmqReport {
        out: out.to_path_buf(),
        tensors: raw.len(),
        blocks,
        bytes,
    };
    let json = serde_json::to_value(&report).map_err(|e| Error::Config(e.to_string()))?;
    let path = w.finish(src.arch(), src.path(), src.metadata(), &[], json)?;
    Ok(ToLlmqReport {
        out: path,
        ..report
    })
}
