//! Parser for the GGUF container (ggml docs/gguf.md): header, metadata
//! key/values and tensor infos. Every read is bounds-checked against the
//! file so that a truncated or corrupt file gives an error, never a panic
//! or a huge allocation.

use super::GgmlType;
use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::Path;

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most 4 dimensions (GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; cap the nesting so a crafted file cannot
/// overflow the stack.
const MAX_NESTING: usize = 16;

/// One metadata value, typed as the file stores it.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    /// The value type's id in the file (gguf.md's `gguf_metadata_value_type`).
    pub fn type_id(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::String(_) => 8,
            GgufValue::Array(_) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// Any integer type as u64 (negative values give None).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any numeric type as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Full JSON form; non-finite floats become `null` (JSON has no NaN).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            GgufValue::U8(v) => (*v).into(),
            GgufValue::I8(v) => (*v).into(),
            GgufValue::U16(v) => (*v).into(),
            GgufValue::I16(v) => (*v).into(),
            GgufValue::U32(v) => (*v).into(),
            GgufValue::I32(v) => (*v).into(),
            GgufValue::U64(v) => (*v).into(),
            GgufValue::I64(v) => (*v).into(),
            GgufValue::F32(v) => {
                serde_json::Number::from_f64(f64::from(*v)).map_or(Value::Null, Value::Number)
            }
            GgufValue::F64(v) => {
                serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number)
            }
            GgufValue::Bool(v) => (*v).into(),
            GgufValue::String(s) => s.clone().into(),
            GgufValue::Array(a) => Value::Array(a.iter().map(GgufValue::to_json).collect()),
        }
    }
}

/// A tensor as listed in the file: dims innermost first, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of the data section.
    pub offset: u64,
    pub n_elements: usize,
    pub n_bytes: usize,
}

/// Everything before the tensor data.
#[derive(Clone, Debug)]
pub struct Header {
    pub version: u32,
    pub metadata: Vec<(String, GgufValue)>,
    pub tensors: Vec<RawTensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_start: usize,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::format(
                self.path,
                format!(
                    "GGUF truncated: reading {what} needs {n} bytes at offset {} but the file is {} bytes",
                    self.pos,
                    self.buf.len()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A length or count that must fit in the rest of the file, assuming
    /// each item takes at least `min_item` bytes: guards allocations.
    fn count(&mut self, min_item: usize, what: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        let fits = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(min_item.max(1)))
            .is_some_and(|bytes| bytes <= self.remaining());
        if !fits {
            return Err(Error::format(
                self.path,
                format!(
                    "GGUF {what} {n} at offset {at} is larger than the rest of the file ({} bytes)",
                    self.remaining()
                ),
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.count(1, &format!("{what} length"))?;
        let bytes = self.take(len, what)?;
        // Tokenizer pieces are meant to be UTF-8; keep going if one is not.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue> {
        let what = key;
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => {
                let at = self.pos;
                match self.array::<1>(what)?[0] {
                    0 => GgufValue::Bool(false),
                    1 => GgufValue::Bool(true),
                    b => {
                        return Err(Error::format(
                            self.path,
                            format!(
                                "GGUF metadata '{key}': bool byte {b} at offset {at} is not 0 or 1"
                            ),
                        ))
                    }
                }
            }
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(Error::format(
                        self.path,
                        format!("GGUF metadata '{key}': arrays nested deeper than {MAX_NESTING}"),
                    ));
                }
                let elem_ty = self.u32(what)?;
                let min = min_value_size(elem_ty)
                    .ok_or_else(|| bad_value_type(self.path, key, elem_ty))?;
                let n = self.count(min, &format!("metadata '{key}' array length"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(bad_value_type(self.path, key, t)),
        })
    }
}

fn bad_value_type(path: &Path, key: &str, ty: u32) -> Error {
    Error::format(
        path,
        format!("GGUF metadata '{key}' has unknown value type {ty}"),
    )
}

/// Smallest encoding of a value of type `ty`, for allocation guards.
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,
        9 => 12,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parses everything up to the data section and checks that every tensor
/// lies inside the file.
pub fn parse(path: &Path, buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.array::<4>("magic")?;
    if &magic != MAGIC {
        return Err(Error::format(
            path,
            format!("not a GGUF file: bad magic {magic:02x?}, expected \"GGUF\""),
        ));
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::unsupported(
                path,
                "GGUF version 1 (32-bit lengths) is obsolete; convert the model again with a current llama.cpp",
            ))
        }
        v if v.swap_bytes() <= 3 => {
            return Err(Error::unsupported(path, "big-endian GGUF files are not supported"))
        }
        v => return Err(Error::unsupported(path, format!("GGUF version {v}"))),
    }
    // Minimum sizes: tensor info = name len + n_dims + 1 dim + type + offset.
    let n_tensors = c.count(8 + 4 + 8 + 4 + 8, "tensor count")?;
    let n_kv = c.count(8 + 4 + 1, "metadata count")?;

    let mut metadata = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&format!("type of metadata '{key}'"))?;
        let value = c.value(ty, &key, 0)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(Error::format(
                    path,
                    format!("GGUF general.alignment {v:?} is not a power of two"),
                ))
            }
        },
    };

    let mut tensors = Vec::with_capacity(n_tensors);
    let mut seen = HashSet::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let t = tensor_info(&mut c, alignment)?;
        if !seen.insert(t.name.clone()) {
            return Err(Error::format(
                path,
                format!("GGUF duplicate tensor name '{}'", t.name),
            ));
        }
        tensors.push(t);
    }

    let data_start = align_up(c.pos as u64, alignment)
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| Error::format(path, "GGUF data section offset overflows"))?;
    let data_len = buf.len().saturating_sub(data_start);
    for t in &tensors {
        let end = (t.offset as usize).checked_add(t.n_bytes);
        if end.is_none_or(|end| end > data_len) {
            return Err(Error::format(
                path,
                format!(
                    "GGUF tensor '{}' data (offset {}, {} bytes) runs past the end of the file (data section holds {data_len} bytes)",
                    t.name, t.offset, t.n_bytes
                ),
            ));
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_start,
    })
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    Some(v.checked_add(a - 1)? / a * a)
}

fn tensor_info(c: &mut Cursor<'_>, alignment: u64) -> Result<RawTensorInfo> {
    let path = c.path;
    let name = c.string("tensor name")?;
    let err = |msg: String| Error::format(path, format!("GGUF tensor '{name}': {msg}"));
    let n_dims = c.u32(&format!("dims count of tensor '{name}'"))?;
    if n_dims == 0 || n_dims > MAX_DIMS {
        return Err(err(format!(
            "has {n_dims} dimensions, expected 1 to {MAX_DIMS}"
        )));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(c.u64(&format!("dims of tensor '{name}'"))?);
    }
    let type_id = c.u32(&format!("type of tensor '{name}'"))?;
    let offset = c.u64(&format!("offset of tensor '{name}'"))?;

    let ty =
        GgmlType::from_id(type_id).ok_or_else(|| err(format!("unknown ggml type id {type_id}")))?;
    let n_elements = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
        .filter(|&n| n <= i64::MAX as usize)
        .ok_or_else(|| err(format!("shape {dims:?} overflows")))?;
    let block = ty.block_size();
    // ggml quantizes rows: the innermost dimension must be whole blocks.
    if dims[0] % block as u64 != 0 {
        return Err(err(format!(
            "shape {dims:?} (innermost first): innermost dimension {} is not a multiple of the {} block size {block}",
            dims[0],
            ty.name()
        )));
    }
    let n_bytes = (n_elements / block)
        .checked_mul(ty.type_size())
        .ok_or_else(|| err(format!("shape {dims:?} overflows")))?;
    if offset % alignment != 0 {
        return Err(err(format!(
            "data offset {offset} is misaligned (general.alignment is {alignment})"
        )));
    }
    Ok(RawTensorInfo {
        name,
        dims,
        ty,
        offset,
        n_elements,
        n_bytes,
    })
}
