//! How big a model is: bytes on disk and stored bits per weight of the
//! decoder blocks' linear layers (the ones quantization changes).

pub use crate::encoding::LinearStorage;
use crate::error::{Error, Result};
use crate::formats::gguf::GgmlType;
use crate::formats::llmq::{LlmqModel, StoredKind};
use crate::model::{ModelView, TensorKind};
use std::path::Path;

/// Bytes of the model's weight files: the file itself for a single file;
/// for a folder its `.safetensors` and `.gguf` files (tokenizer and JSON
/// metadata left out).
pub fn size_on_disk(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_dir() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path).map_err(|e| Error::io(path, e))? {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        let weights = p
            .extension()
            .is_some_and(|x| x == "safetensors" || x == "gguf");
        if weights {
            total += entry.metadata().map_err(|e| Error::io(&p, e))?.len();
        }
    }
    Ok(total)
}

/// Stored bits per weight of a tensor type as a file names it: GGUF block
/// types by their block geometry (Q4_1 5.0, Q8_0 8.5, Q4_K 4.5 ...), plain
/// floats by width.
pub fn dtype_bits(dtype: &str) -> Option<f64> {
    match dtype.to_ascii_uppercase().as_str() {
        "F64" => return Some(64.0),
        "F32" => return Some(32.0),
        "F16" | "BF16" => return Some(16.0),
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" => return Some(8.0),
        _ => {}
    }
    (0..64)
        .filter_map(GgmlType::from_id)
        .find(|t| t.name().eq_ignore_ascii_case(dtype))
        .map(|t| t.type_size() as f64 * 8.0 / t.block_size() as f64)
}

/// [`LinearStorage`] of a model file, from its tensor list (llmq folders:
/// each quantized tensor's encoding; GGUF and safetensors: each tensor's
/// stored type).
pub fn linear_storage(view: &ModelView) -> Result<LinearStorage> {
    let llmq = match view.format_name() {
        "llmq" => Some(LlmqModel::open(view.path())?),
        _ => None,
    };
    let (mut weights, mut bits) = (0u64, 0f64);
    for t in view.tensors() {
        if !TensorKind::of(&t.name).is_block_linear() {
            continue;
        }
        let n = t.numel() as u64;
        let stored = llmq
            .as_ref()
            .and_then(|m| m.tensor_meta(&t.name))
            .filter(|m| m.kind == StoredKind::Quantized)
            .map(|m| {
                let (rows, cols) = crate::formats::source::matrix_shape(&m.shape)?;
                Some(m.encoding()?.stored_bytes(rows, cols) as f64 * 8.0)
            });
        let b = match stored {
            Some(b) => b,
            None => dtype_bits(&t.dtype).map(|b| b * n as f64),
        }
        .ok_or_else(|| {
            Error::unsupported(
                view.path(),
                format!("tensor '{}': unknown size of type '{}'", t.name, t.dtype),
            )
        })?;
        weights += n;
        bits += b;
    }
    if weights == 0 {
        return Err(Error::format(
            view.path(),
            "no linear layers of decoder blocks found",
        ));
    }
    Ok(LinearStorage {
        weights,
        stored_bytes: (bits / 8.0).ceil() as u64,
    })
}

/// Stored bits per weight of the block linears (see [`linear_storage`]).
pub fn bits_per_weight(view: &ModelView) -> Result<f64> {
    Ok(linear_storage(view)?.bits_per_weight())
}

#[cfg(test)]
mod tests {
    use super::dtype_bits;

    #[test]
    fn gguf_and_float_types_have_their_stored_bits() {
        for (t, bits) in [
            ("Q4_1", 5.0),
            ("Q4_0", 4.5),
            ("Q8_0", 8.5),
            ("Q4_K", 4.5),
            ("Q6_K", 6.5625),
            ("F16", 16.0),
            ("BF16", 16.0),
            ("F32", 32.0),
        ] {
            assert_eq!(dtype_bits(t), Some(bits), "{t}");
        }
        assert_eq!(
            dtype_bits("int4 g128 asym"),
            None,
            "llmq labels go through llmq.json"
        );
    }
}
