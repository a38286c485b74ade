//! The llmq-gpu output format: a folder holding
//!
//! - `model.safetensors` (or shards `model-0000i-of-0000n.safetensors` plus
//!   `model.safetensors.index.json`): for each quantized tensor `NAME`,
//!   the parts its encoding stores (for linear integer codes `NAME.qweight`,
//!   `NAME.scales` and, asymmetric only, `NAME.zeros`: see
//!   [`crate::encoding::affine`], which owns them). Kept tensors are F16
//!   under their own name.
//! - `llmq.json`: format, version, source, architecture, per-tensor schemes
//!   and the caller's report.
//! - `config.json` (the [`ArchConfig`]), `source_metadata.json` (the source
//!   file's metadata pairs) and the source's companion files.
//!
//! [`LlmqWriter`] builds the folder atomically (see [`super::atomic`]);
//! [`LlmqModel`] reads it back.

use super::atomic::{sync_file, StagingDir};
use super::hf_config::companion_files_in;
use super::safetensors_model::{SafetensorsFiles, INDEX_FILE, SINGLE_FILE};
use crate::encoding::{to_f16, Encoding, Granularity, QuantScheme, QuantizedTensor};
use crate::error::{Error, Result};
use crate::model::{ArchConfig, TensorInfo, TensorSource};
use half::f16;
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// Name of the metadata file that marks an llmq-gpu output folder.
pub const METADATA_FILE: &str = "llmq.json";
/// Source metadata pairs (a GGUF's tokenizer among them).
pub const SOURCE_METADATA_FILE: &str = "source_metadata.json";
/// Version written to and accepted from `llmq.json`.
pub const FORMAT_VERSION: u32 = 1;
/// Tensor bytes per safetensors file before a new shard is started.
pub const DEFAULT_SHARD_BYTES: u64 = 2 << 30;

/// Files the writer produces itself; companions by these names are skipped.
const RESERVED: &[&str] = &[
    METADATA_FILE,
    SOURCE_METADATA_FILE,
    "config.json",
    SINGLE_FILE,
    INDEX_FILE,
];

/// How one tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredKind {
    Quantized,
    Kept,
}

/// One entry of `llmq.json`'s `tensors` map.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlmqTensorMeta {
    pub kind: StoredKind,
    /// Quantization method (`rtn`, `gptq`, ...); absent for kept tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<u32>,
    /// Group length for grouped schemes, null otherwise.
    #[serde(default)]
    pub group_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub granularity: Option<Granularity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// Shape of the original tensor, PyTorch order.
    pub shape: Vec<usize>,
    /// `int4 g128 asym` for quantized tensors, `F16` for kept ones.
    pub dtype: String,
}

impl LlmqTensorMeta {
    /// The scheme of a quantized tensor; `None` for kept ones or incomplete entries.
    pub fn scheme(&self) -> Option<QuantScheme> {
        match (self.kind, self.bits, self.symmetric, self.granularity) {
            (StoredKind::Quantized, Some(bits), Some(symmetric), Some(granularity)) => {
                QuantScheme::new(bits, symmetric, granularity).ok()
            }
            _ => None,
        }
    }
}

/// The whole `llmq.json`.
#[derive(Debug, Serialize, Deserialize)]
struct LlmqFile {
    format: String,
    version: u32,
    #[serde(default)]
    source: Value,
    architecture: ArchConfig,
    tensors: BTreeMap<String, LlmqTensorMeta>,
    #[serde(default)]
    report: Value,
}

/// The first part of a quantized tensor, which orders it among the others.
fn first_part_name(name: &str, m: &LlmqTensorMeta) -> Option<String> {
    let (scheme, rows, cols) = quantized_shape(m)?;
    let part = Encoding::Affine(scheme)
        .parts(rows, cols)
        .into_iter()
        .next()?;
    Some(part.name(name))
}

/// The scheme and `[rows, cols]` of a quantized entry.
fn quantized_shape(m: &LlmqTensorMeta) -> Option<(QuantScheme, usize, usize)> {
    let scheme = m.scheme()?;
    let cols = *m.shape.last()?;
    let rows = m.shape.iter().product::<usize>() / cols.max(1);
    Some((scheme, rows, cols))
}

// ---------------------------------------------------------------- writer

/// One safetensors header entry.
struct HeaderEntry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// A shard whose tensor data is being spooled to a side file; the header
/// (which must come first) is written when the shard is closed, so memory
/// stays bounded by one tensor whatever the model size.
struct OpenShard {
    data_path: PathBuf,
    data: BufWriter<File>,
    entries: Vec<HeaderEntry>,
    len: u64,
}

/// Writes an llmq-gpu model folder. See the module docs for the layout.
///
/// Everything goes into a temporary folder beside the target; dropping the
/// writer without [`LlmqWriter::finish`] deletes it, so a failed or
/// interrupted run leaves nothing behind.
pub struct LlmqWriter {
    // Declared before `staging` so files are closed before the folder is removed.
    shard: Option<OpenShard>,
    /// Closed shard files (temporary names) and the tensors in each.
    closed: Vec<(PathBuf, Vec<String>)>,
    tensors: BTreeMap<String, LlmqTensorMeta>,
    bytes: u64,
    shard_limit: u64,
    staging: StagingDir,
}

impl LlmqWriter {
    /// Starts writing `out`. Fails if `out` exists and `overwrite` is false.
    pub fn create(out: &Path, overwrite: bool) -> Result<Self> {
        Ok(Self {
            shard: None,
            closed: Vec::new(),
            tensors: BTreeMap::new(),
            bytes: 0,
            shard_limit: DEFAULT_SHARD_BYTES,
            staging: StagingDir::create(out, overwrite)?,
        })
    }

    /// Sets the tensor bytes per shard (default [`DEFAULT_SHARD_BYTES`]).
    pub fn with_shard_bytes(mut self, bytes: u64) -> Self {
        self.shard_limit = bytes.max(1);
        self
    }

    /// Tensor bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes
    }

    /// Adds a quantized tensor whose original shape is `shape`.
    pub fn add_quantized(
        &mut self,
        name: &str,
        shape: &[usize],
        q: &QuantizedTensor,
        method: &str,
    ) -> Result<()> {
        self.check_new(name)?;
        q.validate(name)?;
        check_shape_matches(name, shape, q)?;
        let parts = q.stored_parts(name)?;
        self.reserve(parts.iter().map(|(p, _)| p.bytes()).sum())?;
        for (part, bytes) in &parts {
            self.write_tensor(&part.name(name), part.dtype, &part.shape, |w| {
                w.write_all(bytes)
            })?;
        }
        let s = q.scheme;
        self.tensors.insert(
            name.to_string(),
            LlmqTensorMeta {
                kind: StoredKind::Quantized,
                method: Some(method.to_string()),
                bits: Some(s.bits),
                group_size: match s.granularity {
                    Granularity::Group(g) => Some(g),
                    _ => None,
                },
                granularity: Some(s.granularity),
                symmetric: Some(s.symmetric),
                shape: shape.to_vec(),
                dtype: s.dtype_label(),
            },
        );
        Ok(())
    }

    /// Adds a tensor kept unquantized, stored as f16.
    pub fn add_kept(&mut self, name: &str, shape: &[usize], data: &[f32]) -> Result<()> {
        self.check_new(name)?;
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "shape {shape:?} holds {numel} values but {} were given",
                    data.len()
                ),
            });
        }
        // Check everything first so a bad value never leaves half a tensor in the shard.
        for &v in data {
            to_f16(name, v)?;
        }
        self.reserve(data.len() as u64 * 2)?;
        self.write_tensor(name, Dtype::F16, shape, |w| {
            data.iter()
                .try_for_each(|&v| w.write_all(&f16::from_f32(v).to_bits().to_le_bytes()))
        })?;
        self.tensors.insert(
            name.to_string(),
            LlmqTensorMeta {
                kind: StoredKind::Kept,
                method: None,
                bits: None,
                group_size: None,
                granularity: None,
                symmetric: None,
                shape: shape.to_vec(),
                dtype: "F16".into(),
            },
        );
        Ok(())
    }

    /// Adds a side file (a report, say) to the folder, written with it
    /// atomically. `name` is a plain file name that is not one the format uses.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let plain = !name.is_empty()
            && !name.contains(['/', '\\'])
            && name != "."
            && name != ".."
            && !name.ends_with(".safetensors")
            && !name.ends_with(".data");
        if !plain || RESERVED.contains(&name) {
            return Err(Error::Config(format!(
                "'{name}' cannot be added to an llmq folder: not a plain, unreserved file name"
            )));
        }
        let path = self.staging.path().join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        sync_file(&path)
    }

    /// Writes the metadata files, copies `companions`, syncs everything and
    /// moves the folder into place. Returns the final path.
    pub fn finish(
        mut self,
        arch: &ArchConfig,
        source_path: &Path,
        source_metadata: Vec<(String, Value)>,
        companions: &[PathBuf],
        report: Value,
    ) -> Result<PathBuf> {
        self.close_shard()?;
        if self.closed.is_empty() {
            // A model with no tensors still gets a (valid, empty) weights file.
            self.open_shard()?;
            self.close_shard()?;
        }
        let dir = self.staging.path().to_path_buf();
        self.name_shards(&dir)?;

        let meta = LlmqFile {
            format: "llmq".into(),
            version: FORMAT_VERSION,
            source: json!({
                "path": source_path.display().to_string(),
                "llmq_gpu_version": env!("CARGO_PKG_VERSION"),
            }),
            architecture: arch.clone(),
            tensors: std::mem::take(&mut self.tensors),
            report,
        };
        write_json(&dir.join(METADATA_FILE), &meta)?;
        write_json(&dir.join("config.json"), arch)?;
        write_json(&dir.join(SOURCE_METADATA_FILE), &source_metadata)?;
        for c in companions {
            let Some(fname) = c.file_name() else { continue };
            if RESERVED.iter().any(|r| fname == *r) {
                log::warn!("not copying {}: the output has its own", c.display());
                continue;
            }
            let dst = dir.join(fname);
            std::fs::copy(c, &dst).map_err(|e| Error::io(c, e))?;
            sync_file(&dst)?;
        }
        self.staging.commit()
    }

    fn check_new(&self, name: &str) -> Result<()> {
        if self.tensors.contains_key(name) {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: "added twice to the output".into(),
            });
        }
        Ok(())
    }

    /// Starts a new shard if `bytes` more would push a non-empty one past the limit.
    fn reserve(&mut self, bytes: u64) -> Result<()> {
        let full = self
            .shard
            .as_ref()
            .is_some_and(|s| s.len > 0 && s.len + bytes > self.shard_limit);
        if full {
            self.close_shard()?;
        }
        if self.shard.is_none() {
            self.open_shard()?;
        }
        Ok(())
    }

    fn open_shard(&mut self) -> Result<()> {
        let data_path = self
            .staging
            .path()
            .join(format!("shard-{:05}.data", self.closed.len() + 1));
        let file = File::create(&data_path).map_err(|e| Error::io(&data_path, e))?;
        self.shard = Some(OpenShard {
            data_path,
            data: BufWriter::new(file),
            entries: Vec::new(),
            len: 0,
        });
        Ok(())
    }

    fn write_tensor(
        &mut self,
        name: &str,
        dtype: Dtype,
        shape: &[usize],
        write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> Result<()> {
        let Some(shard) = self.shard.as_mut() else {
            return Err(Error::format(
                self.staging.path(),
                "internal: no open shard",
            ));
        };
        let len = (shape.iter().product::<usize>() * dtype.bitsize() / 8) as u64;
        write(&mut shard.data).map_err(|e| Error::io(&shard.data_path, e))?;
        shard.entries.push(HeaderEntry {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            start: shard.len,
            end: shard.len + len,
        });
        shard.len += len;
        self.bytes += len;
        Ok(())
    }

    /// Writes header + spooled data as `model-0000i.safetensors`.
    fn close_shard(&mut self) -> Result<()> {
        let Some(shard) = self.shard.take() else {
            return Ok(());
        };
        let OpenShard {
            data_path,
            data,
            entries,
            ..
        } = shard;
        data.into_inner()
            .map_err(|e| Error::io(&data_path, e.into_error()))?;
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({ "format": "pt" }));
        for e in &entries {
            header.insert(
                e.name.clone(),
                json!({
                    "dtype": e.dtype.to_string(),
                    "shape": e.shape,
                    "data_offsets": [e.start, e.end],
                }),
            );
        }
        let mut header_bytes = serde_json::to_vec(&Value::Object(header))
            .map_err(|e| Error::format(&data_path, format!("header: {e}")))?;
        // The spec pads the header with spaces to 8-byte alignment.
        while !header_bytes.len().is_multiple_of(8) {
            header_bytes.push(b' ');
        }
        let path = self
            .staging
            .path()
            .join(format!("model-{:05}.safetensors", self.closed.len() + 1));
        let io = |e| Error::io(&path, e);
        let mut out = BufWriter::new(File::create(&path).map_err(io)?);
        out.write_all(&(header_bytes.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&header_bytes).map_err(io)?;
        let mut src = File::open(&data_path).map_err(|e| Error::io(&data_path, e))?;
        std::io::copy(&mut src, &mut out).map_err(io)?;
        let file = out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(src);
        std::fs::remove_file(&data_path).map_err(|e| Error::io(&data_path, e))?;
        self.closed
            .push((path, entries.into_iter().map(|e| e.name).collect()));
        Ok(())
    }

    /// One shard becomes `model.safetensors`; several get Hugging Face
    /// names and an index.
    fn name_shards(&mut self, dir: &Path) -> Result<()> {
        let n = self.closed.len();
        if n == 1 {
            let dst = dir.join(SINGLE_FILE);
            return std::fs::rename(&self.closed[0].0, &dst).map_err(|e| Error::io(&dst, e));
        }
        let mut weight_map = serde_json::Map::new();
        for (i, (path, names)) in self.closed.iter().enumerate() {
            let fname = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
            let dst = dir.join(&fname);
            std::fs::rename(path, &dst).map_err(|e| Error::io(&dst, e))?;
            for t in names {
                weight_map.insert(t.clone(), Value::String(fname.clone()));
            }
        }
        let index = json!({
            "metadata": { "total_size": self.bytes },
            "weight_map": weight_map,
        });
        write_json(&dir.join(INDEX_FILE), &index)
    }
}

/// Streams `value` as JSON to `path` and syncs it.
fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let file = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(file);
    serde_json::to_writer_pretty(&mut w, value)
        .map_err(|e| Error::format(path, format!("writing JSON: {e}")))?;
    let file = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// The original shape must flatten to `[rows, cols]` with `cols` innermost.
fn check_shape_matches(name: &str, shape: &[usize], q: &QuantizedTensor) -> Result<()> {
    let numel: usize = shape.iter().product();
    if shape.last() != Some(&q.cols) || numel != q.rows * q.cols {
        return Err(Error::BadTensor {
            name: name.into(),
            msg: format!(
                "shape {shape:?} does not match the quantized [{}, {}]",
                q.rows, q.cols
            ),
        });
    }
    Ok(())
}

// ---------------------------------------------------------------- reader

/// An llmq-gpu output folder, read back.
pub struct LlmqModel {
    path: PathBuf,
    arch: ArchConfig,
    tensors: Vec<TensorInfo>,
    meta: BTreeMap<String, LlmqTensorMeta>,
    files: SafetensorsFiles,
    source: Value,
    report: Value,
}

impl LlmqModel {
    /// Opens the folder and checks that every tensor in `llmq.json` has its
    /// components with the right types and shapes.
    pub fn open(path: &Path) -> Result<Self> {
        let meta_path = path.join(METADATA_FILE);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let file: LlmqFile = serde_json::from_str(&text)
            .map_err(|e| Error::format(&meta_path, format!("not a valid llmq.json: {e}")))?;
        if file.format != "llmq" {
            return Err(Error::format(
                &meta_path,
                format!("format is '{}', expected 'llmq'", file.format),
            ));
        }
        if file.version != FORMAT_VERSION {
            return Err(Error::unsupported(
                &meta_path,
                format!(
                    "llmq format version {} (this build reads version {FORMAT_VERSION})",
                    file.version
                ),
            ));
        }
        let files = SafetensorsFiles::open_folder(path)?;
        let mut tensors = Vec::with_capacity(file.tensors.len());
        for (name, m) in &file.tensors {
            check_components(path, &files, name, m)?;
            tensors.push(TensorInfo {
                name: name.clone(),
                shape: m.shape.clone(),
                dtype: m.dtype.clone(),
            });
        }
        // File order reads better than alphabetical (layer 10 before layer 2).
        let pos: std::collections::HashMap<&str, usize> = files
            .names()
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let key = |t: &TensorInfo| {
            let first = file
                .tensors
                .get(&t.name)
                .and_then(|m| first_part_name(&t.name, m));
            pos.get(t.name.as_str())
                .or_else(|| first.and_then(|q| pos.get(q.as_str())))
                .copied()
                .unwrap_or(usize::MAX)
        };
        tensors.sort_by_key(|t| key(t));
        Ok(Self {
            path: path.to_path_buf(),
            arch: file.architecture,
            tensors,
            meta: file.tensors,
            files,
            source: file.source,
            report: file.report,
        })
    }

    pub fn tensor_meta(&self, name: &str) -> Option<&LlmqTensorMeta> {
        self.meta.get(name)
    }

    /// The `source` object of `llmq.json`.
    pub fn source_info(&self) -> &Value {
        &self.source
    }

    /// The report the quantizer stored.
    pub fn report(&self) -> &Value {
        &self.report
    }

    /// The packed tensor as written; `None` for kept tensors.
    pub fn load_quantized(&self, name: &str) -> Result<Option<QuantizedTensor>> {
        let Some(m) = self.meta.get(name) else {
            return Err(Error::MissingTensor {
                path: self.path.clone(),
                name: name.into(),
            });
        };
        if m.kind == StoredKind::Kept {
            return Ok(None);
        }
        let bad = |msg: String| Error::format(&self.path, format!("tensor '{name}': {msg}"));
        let (scheme, rows, cols) = quantized_shape(m)
            .ok_or_else(|| bad("incomplete or invalid quantization settings".into()))?;
        let q = QuantizedTensor::from_stored_parts(name, scheme, rows, cols, |part| {
            let n = part.name(name);
            self.files
                .bytes(&n)
                .map(|(_, b)| b)
                .ok_or_else(|| bad(format!("component '{n}' is missing")))
        })?;
        Ok(Some(q))
    }
}

/// Checks the components of one `llmq.json` entry against the weights files.
fn check_components(
    dir: &Path,
    files: &SafetensorsFiles,
    name: &str,
    m: &LlmqTensorMeta,
) -> Result<()> {
    let want = |comp: &str, dtype: Dtype, shape: &[usize]| -> Result<()> {
        let Some(e) = files.entry(comp) else {
            return Err(Error::format(
                dir,
                format!("tensor '{name}': component '{comp}' listed in llmq.json is missing from the weights"),
            ));
        };
        if e.dtype != dtype || e.shape != shape {
            let file = files.file_of(comp).unwrap_or(dir);
            return Err(Error::format(
                file,
                format!(
                    "tensor '{comp}': stored as {} {:?}, expected {dtype} {shape:?}",
                    e.dtype, e.shape
                ),
            ));
        }
        Ok(())
    };
    match m.kind {
        StoredKind::Kept => want(name, Dtype::F16, &m.shape),
        StoredKind::Quantized => {
            let Some(scheme) = m.scheme() else {
                return Err(Error::format(
                    dir.join(METADATA_FILE),
                    format!("tensor '{name}': quantized but bits/symmetric/granularity missing or invalid"),
                ));
            };
            let cols = *m.shape.last().unwrap_or(&0);
            let rows = m.shape.iter().product::<usize>() / cols.max(1);
            if rows == 0 || cols == 0 {
                return Err(Error::format(
                    dir.join(METADATA_FILE),
                    format!(
                        "tensor '{name}': shape {:?} does not fit {}",
                        m.shape,
                        scheme.label()
                    ),
                ));
            }
            Encoding::Affine(scheme)
                .parts(rows, cols)
                .iter()
                .try_for_each(|p| want(&p.name(name), p.dtype, &p.shape))
        }
    }
}

impl TensorSource for LlmqModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format_name(&self) -> &'static str {
        "llmq"
    }
    fn arch(&self) -> &ArchConfig {
        &self.arch
    }
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn load_quantized(&self, name: &str) -> Result<Option<QuantizedTensor>> {
        LlmqModel::load_quantized(self, name)
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        match LlmqModel::load_quantized(self, name)? {
            Some(q) => q.dequantize(),
            None => self.files.load_f32(name, &self.path),
        }
    }
    fn metadata(&self) -> Vec<(String, Value)> {
        let p = self.path.join(SOURCE_METADATA_FILE);
        let read = std::fs::File::open(&p)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                serde_json::from_reader(std::io::BufReader::new(f)).map_err(|e| e.to_string())
            });
        match read {
            Ok(pairs) => pairs,
            Err(e) => {
                log::warn!("{}: {e}", p.display());
                Vec::new()
            }
        }
    }
    fn companion_files(&self) -> Vec<PathBuf> {
        companion_files_in(&self.path)
    }
}
