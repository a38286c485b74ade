//! A streaming safetensors writer: the 8-byte header length, the JSON
//! header (padded with spaces to 8 bytes), then the tensors back to back
//! in header order, each produced only when its turn comes so that a
//! model never sits in memory twice.

use super::atomic;
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::Path;

/// One tensor of the file.
pub struct Entry {
    pub name: String,
    /// safetensors dtype: `F32`, `F16`, `BF16`, `I32`, ...
    pub dtype: &'static str,
    pub shape: Vec<usize>,
}

impl Entry {
    fn bytes(&self) -> usize {
        let width = match self.dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        self.shape.iter().product::<usize>() * width
    }
}

/// Writes `entries` to `path` with `metadata` (string values) in
/// `__metadata__`; `data(i)` gives entry `i`'s little-endian bytes.
/// Returns the file's size. The caller makes the file all-or-nothing
/// (it lives in a [`atomic::StagingDir`]).
pub fn write(
    path: &Path,
    entries: &[Entry],
    metadata: &[(&str, &str)],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let mut header = Map::new();
    let md: Map<String, Value> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    header.insert("__metadata__".into(), Value::Object(md));
    let mut offset = 0usize;
    for e in entries {
        let end = offset + e.bytes();
        header.insert(
            e.name.clone(),
            json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| Error::Config(e.to_string()))?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    let io = |e| Error::io(path, e);
    w.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&head).map_err(io)?;
    for (i, e) in entries.iter().enumerate() {
        let bytes = data(i)?;
        if bytes.len() != e.bytes() {
            return Err(Error::Config(format!(
                "safetensors entry '{}': {} bytes for {:?} {}",
                e.name,
                bytes.len(),
                e.shape,
                e.dtype
            )));
        }
        w.write_all(&bytes).map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    atomic::sync_file(path)?;
    Ok((8 + head.len() + offset) as u64)
}
