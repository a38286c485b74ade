//! PLACEHOLDER (replaced by the llmq reader).
use crate::error::{Error, Result};
use crate::model::{ArchConfig, TensorInfo, TensorSource};
use std::path::{Path, PathBuf};

/// Name of the metadata file that marks an llmq-gpu output folder.
pub const METADATA_FILE: &str = "llmq.json";

pub struct LlmqModel {
    path: PathBuf,
    arch: ArchConfig,
    tensors: Vec<TensorInfo>,
}

impl LlmqModel {
    pub fn open(path: &Path) -> Result<Self> {
        Err(Error::unsupported(path, "llmq reader not built yet"))
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
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        Err(Error::MissingTensor {
            path: self.path.clone(),
            name: name.into(),
        })
    }
    fn metadata(&self) -> Vec<(String, serde_json::Value)> {
        Vec::new()
    }
}

/// PLACEHOLDER writer (replaced by the llmq format).
pub struct LlmqWriter;
impl LlmqWriter {
    pub fn create(out: &Path, _overwrite: bool) -> Result<Self> {
        Err(Error::unsupported(out, "writer not built yet"))
    }
    pub fn add_quantized(
        &mut self,
        _name: &str,
        _shape: &[usize],
        _q: &crate::quant::QuantizedTensor,
        _method: &str,
    ) -> Result<()> {
        Ok(())
    }
    pub fn add_kept(&mut self, _name: &str, _shape: &[usize], _data: &[f32]) -> Result<()> {
        Ok(())
    }
    pub fn finish(
        self,
        _arch: &ArchConfig,
        _source_path: &Path,
        _source_metadata: Vec<(String, serde_json::Value)>,
        _companions: &[PathBuf],
        _report: serde_json::Value,
    ) -> Result<PathBuf> {
        Ok(PathBuf::new())
    }
    pub fn bytes_written(&self) -> u64 {
        0
    }
}
