//! [`LlmqModel`]: an llmq folder read back, every tensor's parts checked
//! against `llmq.json` when it is opened.

use super::{first_part_name, quantized_shape, LlmqFile, LlmqTensorMeta, StoredKind};
use super::{FORMAT_VERSION, METADATA_FILE, SOURCE_METADATA_FILE};
use crate::encoding::{EncodedTensor, QuantizedTensor};
use crate::error::{Error, Result};
use crate::formats::hf_config::companion_files_in;
use crate::formats::safetensors_model::SafetensorsFiles;
use crate::formats::source::{matrix_shape, TensorInfo, TensorSource};
use crate::model::arch::ArchConfig;
use safetensors::Dtype;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
                // W8A8 linears say how their input runs (`inspect`).
                dtype: match m.input {
                    Some(i) if i.scale.is_some() => format!("{}, A8 static", m.dtype),
                    Some(_) => format!("{}, A8 per token", m.dtype),
                    None => m.dtype.clone(),
                },
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

    /// The tensor as written if it is linear integer codes; `None` for
    /// kept tensors and other encodings.
    pub fn load_quantized(&self, name: &str) -> Result<Option<QuantizedTensor>> {
        Ok(match self.load_encoded(name)? {
            Some(EncodedTensor::Affine(q)) => Some(q),
            _ => None,
        })
    }

    /// The encoded tensor as written; `None` for kept tensors.
    pub fn load_encoded(&self, name: &str) -> Result<Option<EncodedTensor>> {
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
        let (encoding, rows, cols) = quantized_shape(m)
            .ok_or_else(|| bad("incomplete or invalid quantization settings".into()))?;
        let q = EncodedTensor::from_stored_parts(name, encoding, rows, cols, |part| {
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
    let Some((rows, cols)) = matrix_shape(&m.shape) else {
        return Err(Error::format(
            dir.join(METADATA_FILE),
            format!(
                "tensor '{name}': shape {:?} has more elements than any model (or overflows)",
                m.shape
            ),
        ));
    };
    match m.kind {
        StoredKind::Kept => want(name, Dtype::F16, &m.shape),
        StoredKind::Quantized => {
            let Some(encoding) = m.encoding() else {
                return Err(Error::format(
                    dir.join(METADATA_FILE),
                    format!("tensor '{name}': quantized but bits/symmetric/granularity missing or invalid"),
                ));
            };
            if rows == 0 || cols == 0 {
                return Err(Error::format(
                    dir.join(METADATA_FILE),
                    format!(
                        "tensor '{name}': shape {:?} does not fit {}",
                        m.shape,
                        encoding.label()
                    ),
                ));
            }
            encoding
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
    fn load_encoded(&self, name: &str) -> Result<Option<EncodedTensor>> {
        LlmqModel::load_encoded(self, name)
    }
    fn encoding_of(&self, name: &str) -> Option<crate::encoding::Encoding> {
        self.tensor_meta(name).and_then(LlmqTensorMeta::encoding)
    }
    fn input_quant(&self, name: &str) -> Option<crate::encoding::act8::InputQuant> {
        self.tensor_meta(name).and_then(|m| m.input)
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        match LlmqModel::load_encoded(self, name)? {
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
