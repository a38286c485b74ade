//! PLACEHOLDER (replaced by the GGUF reader).
use crate::error::{Error, Result};
use crate::model::{ArchConfig, TensorInfo, TensorSource};
use std::path::{Path, PathBuf};

pub fn has_gguf_magic(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut m = [0u8; 4];
    Ok(f.read_exact(&mut m).is_ok() && &m == b"GGUF")
}

pub struct GgufModel {
    path: PathBuf,
    arch: ArchConfig,
    tensors: Vec<TensorInfo>,
}

impl GgufModel {
    pub fn open(path: &Path) -> Result<Self> {
        Err(Error::unsupported(path, "GGUF reader not built yet"))
    }
}

impl TensorSource for GgufModel {
    fn path(&self) -> &Path {
        &self.path
    }
    fn format_name(&self) -> &'static str {
        "gguf"
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
