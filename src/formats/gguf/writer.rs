//! GGUF writer (ggml docs/gguf.md, version 3): header, metadata, tensor
//! infos, then each tensor's data at an aligned offset. Tensors are
//! produced one at a time by the caller while the file is written, so a
//! model is never held whole in memory; the file appears under its name
//! only once complete (written beside it, synced, renamed).

use super::reader::{GgufValue, MAGIC};
use super::GgmlType;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// The GGUF version written.
pub const VERSION: u32 = 3;

/// A tensor to write: dims innermost first, as GGUF stores them.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorPlan {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of the tensor's data; an error when the innermost dimension
    /// is not a whole number of the type's blocks.
    pub fn bytes(&self) -> Result<u64> {
        let (block, row) = (
            self.ty.block_size() as u64,
            self.dims.first().copied().unwrap_or(1),
        );
        if !row.is_multiple_of(block) {
            return Err(Error::Config(format!(
                "tensor '{}': rows of {row} values do not split into {} blocks of {block}",
                self.name,
                self.ty.name()
            )));
        }
        Ok(self.elements() / block * self.ty.type_size() as u64)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &GgufValue) -> Result<()> {
    match v {
        GgufValue::U8(x) => out.push(*x),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_string(out, s),
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        GgufValue::Array(items) => {
            // An empty array's element type is not kept by the reader;
            // any type reads back as the same empty array.
            let ty = items.first().map_or(0, GgufValue::type_id);
            if let Some(other) = items.iter().find(|i| GgufValue::type_id(i) != ty) {
                return Err(Error::Config(format!(
                    "GGUF metadata '{key}': an array mixes {:?} with {other:?}",
                    items[0]
                )));
            }
            out.extend(ty.to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(out, key, i)?;
            }
        }
    }
    Ok(())
}

fn pad(n: u64, alignment: u64) -> u64 {
    n.div_ceil(alignment) * alignment
}

/// The header bytes up to the (unpadded) start of the data section, and
/// each tensor's offset within the data section.
fn header(
    metadata: &[(String, GgufValue)],
    tensors: &[TensorPlan],
    alignment: u64,
) -> Result<(Vec<u8>, Vec<u64>)> {
    let mut out = Vec::new();
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_string(&mut out, k);
        out.extend(GgufValue::type_id(v).to_le_bytes());
        put_value(&mut out, k, v)?;
    }
    let mut offsets = Vec::with_capacity(tensors.len());
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(t.ty.id().to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset = pad(offset + t.bytes()?, alignment);
    }
    Ok((out, offsets))
}

/// Writes `tensors` with `metadata` to `out`. `data(i)` returns tensor
/// `i`'s bytes, asked for in order; a wrong byte count is an error. With
/// `overwrite` false an existing `out` is refused. On any error nothing
/// is left at `out` (nor beside it).
pub fn write(
    out: &Path,
    overwrite: bool,
    metadata: &[(String, GgufValue)],
    tensors: &[TensorPlan],
    alignment: u64,
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<()> {
    if alignment == 0 || !alignment.is_power_of_two() {
        return Err(Error::Config(format!(
            "GGUF alignment {alignment} is not a power of two"
        )));
    }
    let (head, offsets) = header(metadata, tensors, alignment)?;
    crate::formats::atomic::write_file(out, overwrite, |w, tmp| {
        let io = |e| Error::io(tmp, e);
        w.write_all(&head).map_err(io)?;
        let data_start = pad(head.len() as u64, alignment);
        w.write_all(&vec![0u8; (data_start - head.len() as u64) as usize])
            .map_err(io)?;
        let mut written = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != t.bytes()? {
                return Err(Error::Config(format!(
                    "tensor '{}': {} bytes given for {} {} elements ({} expected)",
                    t.name,
                    bytes.len(),
                    t.elements(),
                    t.ty.name(),
                    t.bytes()?
                )));
            }
            w.write_all(&vec![0u8; (offsets[i] - written) as usize])
                .map_err(io)?;
            w.write_all(&bytes).map_err(io)?;
            written = offsets[i] + bytes.len() as u64;
        }
        let end = pad(written, alignment);
        w.write_all(&vec![0u8; (end - written) as usize])
            .map_err(io)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let md = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".into()),
            ),
            (
                "a.list".to_string(),
                GgufValue::Array(vec![GgufValue::I32(-1), GgufValue::I32(2)]),
            ),
            ("general.alignment".to_string(), GgufValue::U32(64)),
        ];
        let tensors = vec![
            TensorPlan {
                name: "x".into(),
                dims: vec![3],
                ty: GgmlType::F32,
            },
            TensorPlan {
                name: "y".into(),
                dims: vec![32, 2],
                ty: GgmlType::Q8_0,
            },
        ];
        let data = [vec![1u8; 12], vec![2u8; 68]];
        write(&path, false, &md, &tensors, 64, |i| Ok(data[i].clone())).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let h = super::super::reader::parse(&path, &bytes).unwrap();
        assert_eq!(h.metadata, md);
        assert_eq!(h.alignment, 64);
        assert_eq!(h.tensors[1].offset, 64);
        let start = h.data_start + h.tensors[1].offset as usize;
        assert_eq!(&bytes[start..start + 68], &data[1][..]);
        // A wrong byte count fails and leaves the old file as it was.
        let err = write(&path, true, &md, &tensors, 64, |_| Ok(vec![0u8; 5]));
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
