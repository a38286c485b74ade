//! Hugging Face safetensors models: a folder with `config.json` and either
//! `model.safetensors` or shards listed in `model.safetensors.index.json`,
//! or a single `.safetensors` file with `config.json` beside it.
//!
//! Files are memory-mapped and only headers are parsed at open, so opening a
//! 70B model costs a few kilobytes; tensors are converted when loaded.

use super::hf_config;
use crate::error::{Error, Result};
use crate::formats::source::{TensorInfo, TensorSource};
use crate::model::arch::ArchConfig;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Name of the single-file weights in a model folder.
pub const SINGLE_FILE: &str = "model.safetensors";
/// Name of the shard index in a sharded model folder.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// One mapped safetensors file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_metadata: Option<HashMap<String, String>>,
}

/// Where one tensor lives: shard, type, shape and absolute byte range.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    shard: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// The safetensors files of one model, headers parsed, data mapped.
/// Shared by the Hugging Face reader and the llmq reader.
pub(crate) struct SafetensorsFiles {
    shards: Vec<Shard>,
    entries: HashMap<String, Entry>,
    /// Tensor names in file order (shard, then offset).
    order: Vec<String>,
}

impl SafetensorsFiles {
    /// Opens `dir/model.safetensors.index.json` with its shards, else
    /// `dir/model.safetensors`, else the only `.safetensors` file in `dir`.
    pub fn open_folder(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(dir, &index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        let found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        match found.as_slice() {
            [one] => Self::open_files(std::slice::from_ref(one)),
            [] => Err(Error::format(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} in this folder"),
            )),
            _ => Err(Error::format(
                dir,
                format!("several .safetensors files but no {INDEX_FILE} saying how they fit"),
            )),
        }
    }

    fn open_index(dir: &Path, index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(index, format!("not valid JSON: {e}")))?;
        let Some(map) = json.get("weight_map").and_then(Value::as_object) else {
            return Err(Error::format(index, "no 'weight_map' object"));
        };
        let mut shard_names: Vec<&str> = Vec::new();
        let mut wanted: Vec<(&str, &str)> = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let Some(file) = file.as_str() else {
                return Err(Error::format(
                    index,
                    format!("weight_map entry for '{tensor}' is not a file name"),
                ));
            };
            if !is_plain_file_name(file) {
                return Err(Error::format(
                    index,
                    format!(
                        "weight_map entry for '{tensor}' names '{file}': shards must be plain \
                         file names in the model folder (no '/', '\\' or '..'), so an index \
                         cannot point outside it"
                    ),
                ));
            }
            if !shard_names.contains(&file) {
                shard_names.push(file);
            }
            wanted.push((tensor, file));
        }
        shard_names.sort_unstable();
        let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
        for p in &paths {
            if !p.is_file() {
                return Err(Error::format(
                    p,
                    format!("shard listed in {INDEX_FILE} is missing"),
                ));
            }
        }
        let mut files = Self::open_files(&paths)?;
        // The index decides which shard holds a tensor.
        for (tensor, file) in wanted {
            let shard = shard_names.iter().position(|n| *n == file).unwrap_or(0);
            let present = match files.entries.get(tensor).map(|e| e.shard) {
                Some(s) if s == shard => true,
                Some(_) => files.in_shard(shard, tensor),
                None => false,
            };
            if !present {
                return Err(Error::format(
                    &paths[shard],
                    format!(
                        "tensor '{tensor}' is listed in {INDEX_FILE} but missing from this shard"
                    ),
                ));
            }
        }
        Ok(files)
    }

    /// Whether shard `shard`'s own header lists `name` (for duplicates).
    fn in_shard(&mut self, shard: usize, name: &str) -> bool {
        match parse_header(&self.shards[shard]) {
            Ok(list) => match list.into_iter().find(|(n, _)| n == name) {
                Some((n, e)) => {
                    self.entries.insert(n, e);
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// Maps and parses each file in turn.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Self {
            shards: Vec::with_capacity(paths.len()),
            entries: HashMap::new(),
            order: Vec::new(),
        };
        for (i, path) in paths.iter().enumerate() {
            let shard = map_shard(path)?;
            let mut list = parse_header(&shard)?;
            list.sort_by_key(|(_, e)| e.start);
            for (name, mut e) in list {
                e.shard = i;
                if files.entries.insert(name.clone(), e).is_none() {
                    files.order.push(name);
                }
            }
            files.shards.push(shard);
        }
        Ok(files)
    }

    pub fn names(&self) -> &[String] {
        &self.order
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Path of the file holding `name` (for error messages).
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.entries
            .get(name)
            .map(|e| self.shards[e.shard].path.as_path())
    }

    /// The raw little-endian bytes of a tensor.
    pub fn bytes(&self, name: &str) -> Option<(&Entry, &[u8])> {
        let e = self.entries.get(name)?;
        // Ranges were checked against the file length when the header was parsed.
        let bytes = self.shards[e.shard].mmap.get(e.start..e.end)?;
        Some((e, bytes))
    }

    /// The tensor converted to f32; F32, F16 and BF16 only.
    pub fn load_f32(&self, name: &str, folder: &Path) -> Result<Vec<f32>> {
        let Some((e, bytes)) = self.bytes(name) else {
            return Err(Error::MissingTensor {
                path: folder.to_path_buf(),
                name: name.into(),
            });
        };
        to_f32(e.dtype, bytes).ok_or_else(|| {
            Error::unsupported(
                &self.shards[e.shard].path,
                format!(
                    "tensor '{name}' has dtype {}; only F32, F16 and BF16 can be loaded",
                    e.dtype
                ),
            )
        })
    }

    /// The `__metadata__` maps of all shards, merged.
    pub fn header_metadata(&self) -> Option<serde_json::Map<String, Value>> {
        let mut out = serde_json::Map::new();
        let mut any = false;
        for s in &self.shards {
            if let Some(m) = &s.header_metadata {
                any = true;
                for (k, v) in m {
                    out.insert(k.clone(), Value::String(v.clone()));
                }
            }
        }
        any.then_some(out)
    }
}

fn map_shard(path: &Path) -> Result<Shard> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 8 {
        return Err(Error::format(
            path,
            format!("truncated safetensors file: {len} bytes, the header length alone takes 8"),
        ));
    }
    // SAFETY: the map is read-only; like every mmap reader we rely on the
    // file not being truncated by another process while it is open.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let (_, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| Error::format(path, format!("bad safetensors header: {e}")))?;
    Ok(Shard {
        path: path.to_path_buf(),
        header_metadata: meta.metadata().clone(),
        mmap,
    })
}

/// Tensor entries of a mapped file, offsets made absolute and bounds-checked.
fn parse_header(shard: &Shard) -> Result<Vec<(String, Entry)>> {
    let (n, meta) = SafeTensors::read_metadata(&shard.mmap)
        .map_err(|e| Error::format(&shard.path, format!("bad safetensors header: {e}")))?;
    let base = 8 + n;
    let mut out = Vec::new();
    for (name, info) in meta.tensors() {
        if name == "__metadata__" {
            continue;
        }
        let (s, e) = info.data_offsets;
        let (start, end) = (base.saturating_add(s), base.saturating_add(e));
        if s > e || end > shard.mmap.len() {
            return Err(Error::format(
                &shard.path,
                format!(
                    "tensor '{name}': data offsets [{s}, {e}] run past the end of the file ({} data bytes)",
                    shard.mmap.len() - base
                ),
            ));
        }
        out.push((
            name,
            Entry {
                shard: 0,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            },
        ));
    }
    Ok(out)
}

/// Little-endian F32/F16/BF16 bytes to f32; `None` for other types.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::F16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        ),
        Dtype::BF16 => Some(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect(),
        ),
        _ => None,
    }
}

/// A Hugging Face model in safetensors format.
pub struct SafetensorsModel {
    path: PathBuf,
    arch: ArchConfig,
    tensors: Vec<TensorInfo>,
    files: SafetensorsFiles,
    config: serde_json::Map<String, Value>,
    companions: Vec<PathBuf>,
}

impl SafetensorsModel {
    /// Opens a model folder, or a `.safetensors` file with `config.json` beside it.
    pub fn open(path: &Path) -> Result<Self> {
        let (dir, files) = if path.is_dir() {
            (path.to_path_buf(), SafetensorsFiles::open_folder(path)?)
        } else {
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (dir, SafetensorsFiles::open_files(&[path.to_path_buf()])?)
        };
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::format(
                path,
                "no config.json beside the weights; it is needed for the architecture",
            ));
        }
        let config = hf_config::read_config(&config_path)?;
        let has_head = files.entry("lm_head.weight").is_some();
        let arch = hf_config::arch_from_config(&config_path, &config, has_head)?;
        let tensors = files
            .names()
            .iter()
            .filter_map(|n| {
                files.entry(n).map(|e| TensorInfo {
                    name: n.clone(),
                    shape: e.shape.clone(),
                    dtype: e.dtype.to_string(),
                })
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            arch,
            tensors,
            companions: hf_config::companion_files_in(&dir),
            files,
            config,
        })
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
        self.files.load_f32(name, &self.path)
    }
    fn metadata(&self) -> Vec<(String, Value)> {
        let mut out: Vec<(String, Value)> = self
            .config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(m) = self.files.header_metadata() {
            out.push(("__metadata__".into(), Value::Object(m)));
        }
        out
    }
    fn companion_files(&self) -> Vec<PathBuf> {
        self.companions.clone()
    }
}

/// A name that stays in its folder when joined to it: one normal path
/// component (not `..`, `.`, absolute, or with a separator of any platform).
fn is_plain_file_name(name: &str) -> bool {
    let mut parts = Path::new(name).components();
    matches!(parts.next(), Some(std::path::Component::Normal(_)))
        && parts.next().is_none()
        && !name.contains(['/', '\\'])
        && !name.contains('\0')
}
