//! [`LlmqWriter`]: an llmq folder written into a staging folder and renamed
//! into place when complete.

use super::{LlmqFile, LlmqTensorMeta, StoredKind, DEFAULT_SHARD_BYTES, FORMAT_VERSION};
use super::{METADATA_FILE, RESERVED, SOURCE_METADATA_FILE};
use crate::encoding::{to_f16, EncodedTensor, Granularity, QuantizedTensor};
use crate::error::{Error, Result};
use crate::formats::atomic::{sync_file, StagingDir};
use crate::formats::safetensors_model::{INDEX_FILE, SINGLE_FILE};
use crate::model::arch::ArchConfig;
use half::f16;
use safetensors::Dtype;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

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
        self.add_encoded(name, shape, &EncodedTensor::Affine(q.clone()), method)
    }

    /// Adds a tensor of any encoding whose original shape is `shape`.
    pub fn add_encoded(
        &mut self,
        name: &str,
        shape: &[usize],
        q: &EncodedTensor,
        method: &str,
    ) -> Result<()> {
        self.check_new(name)?;
        q.validate(name)?;
        check_shape_matches(name, shape, q.rows(), q.cols())?;
        let parts = q.stored_parts(name)?;
        self.reserve(parts.iter().map(|(p, _)| p.bytes()).sum())?;
        for (part, bytes) in &parts {
            self.write_tensor(&part.name(name), part.dtype, &part.shape, |w| {
                w.write_all(bytes)
            })?;
        }
        let meta = match q {
            EncodedTensor::Affine(q) => {
                let s = q.scheme;
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
                    vq: None,
                    ggml: None,
                    input: None,
                }
            }
            EncodedTensor::Vq(v) => LlmqTensorMeta {
                kind: StoredKind::Quantized,
                method: Some(method.to_string()),
                bits: Some(v.scheme.bits),
                group_size: Some(v.scheme.group),
                granularity: None,
                symmetric: None,
                shape: shape.to_vec(),
                dtype: v.scheme.label(),
                vq: Some(v.scheme),
                ggml: None,
                input: None,
            },
            EncodedTensor::Ggml(g) => LlmqTensorMeta {
                kind: StoredKind::Quantized,
                method: Some(method.to_string()),
                bits: None,
                group_size: None,
                granularity: None,
                symmetric: None,
                shape: shape.to_vec(),
                dtype: g.ty.name().to_string(),
                vq: None,
                ggml: Some(g.ty.name().to_string()),
                input: None,
            },
        };
        self.tensors.insert(name.to_string(), meta);
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
                vq: None,
                ggml: None,
                input: None,
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
        self,
        arch: &ArchConfig,
        source_path: &Path,
        source_metadata: Vec<(String, Value)>,
        companions: &[PathBuf],
        report: Value,
    ) -> Result<PathBuf> {
        self.finish_staged(arch, source_path, source_metadata, companions, report)?
            .commit()
    }

    /// [`LlmqWriter::finish`] up to the move: the complete folder, still in
    /// its staging place, where it can be opened as a model (to calibrate
    /// its activations) and its metadata amended before
    /// [`StagedLlmq::commit`].
    pub fn finish_staged(
        mut self,
        arch: &ArchConfig,
        source_path: &Path,
        source_metadata: Vec<(String, Value)>,
        companions: &[PathBuf],
        report: Value,
    ) -> Result<StagedLlmq> {
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
        Ok(StagedLlmq {
            meta,
            staging: self.staging,
        })
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
fn check_shape_matches(name: &str, shape: &[usize], rows: usize, cols: usize) -> Result<()> {
    let numel: usize = shape.iter().product();
    if shape.last() != Some(&cols) || numel != rows * cols {
        return Err(Error::BadTensor {
            name: name.into(),
            msg: format!("shape {shape:?} does not match the quantized [{rows}, {cols}]"),
        });
    }
    Ok(())
}

/// A complete llmq folder not yet moved into place
/// ([`LlmqWriter::finish_staged`]); dropped without
/// [`StagedLlmq::commit`], it is deleted.
pub struct StagedLlmq {
    meta: LlmqFile,
    staging: StagingDir,
}

impl StagedLlmq {
    /// Where the folder is now.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Records how each named linear quantizes its input, and replaces the
    /// report, in `llmq.json`.
    pub fn set_inputs(
        &mut self,
        inputs: &[(String, crate::encoding::act8::InputQuant)],
        report: Value,
    ) -> Result<()> {
        for (name, input) in inputs {
            input.check(name)?;
            let m = self
                .meta
                .tensors
                .get_mut(name)
                .ok_or_else(|| Error::BadTensor {
                    name: name.clone(),
                    msg: "is not in the output".into(),
                })?;
            if m.kind != StoredKind::Quantized {
                return Err(Error::BadTensor {
                    name: name.clone(),
                    msg: "INT8 inputs need a quantized weight".into(),
                });
            }
            m.input = Some(*input);
        }
        self.meta.report = report;
        write_json(&self.staging.path().join(METADATA_FILE), &self.meta)
    }

    /// Syncs the folder and moves it into place; returns the final path.
    pub fn commit(self) -> Result<PathBuf> {
        self.staging.commit()
    }
}
