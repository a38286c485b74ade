//! PLACEHOLDER (replaced by the safetensors reader).
use crate::error::{Error, Result};
use crate::model::{ArchConfig, TensorInfo, TensorSource};
use std::path::{Path, PathBuf};

pub struct SafetensorsModel {
    path: PathBuf,
    arch: ArchConfig,
    tensors: Vec<TensorInfo>,
}

impl SafetensorsModel {
    pub fn open(path: &Path) -> Result<Self> {
        Err(Error::unsupported(path, "safetensors reader not built yet"))
    }
}

impl TensorSource for SafetensorsModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format_name(&self) -> &'static str {
        "safetensors"
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
