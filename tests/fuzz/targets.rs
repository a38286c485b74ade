//! The readers under fuzz, each fed by its own mutator: GGUF files, and
//! model folders whose safetensors, shard index, `config.json`,
//! `tokenizer.json` or `llmq.json` is the mutated file.

use super::gguf_seed::Gguf;
use super::mutate::{self, Field};
use super::{Files, Target};
use llmq_gpu::formats::gguf::GgufModel;
use llmq_gpu::formats::source::TensorSource;
use llmq_gpu::model::tokenizer::Tokenizer;
use llmq_gpu::ModelView;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;
use std::path::Path;

/// What a reader run reaches, for the report (bit k of [`read_source`]).
pub const STAGES: &[&str] = &[
    "opened",
    "every tensor read",
    "tokenizer built",
    "text round trip",
    "architecture accepted",
];

/// Everything a user's command would read: each tensor as f32 and as
/// stored (dequantized), the metadata, the tokenizer and a round trip.
fn read_source(src: Box<dyn TensorSource>) -> u32 {
    let mut reached = 1;
    let names: Vec<String> = src.tensors().iter().map(|t| t.name.clone()).collect();
    let mut all = true;
    for n in &names {
        all &= src.load_f32(n).is_ok();
        if let Ok(Some(e)) = src.load_encoded(n) {
            let _ = e.dequantize();
        }
        let _ = src.input_quant(n);
        let _ = src.encoding_of(n);
    }
    if all {
        reached |= 2;
    }
    let view = ModelView::from_source(src);
    let _ = view.metadata();
    if let Ok(tok) = Tokenizer::from_model(&view) {
        reached |= 4;
        let text = "Hello, world! It's 2026; \u{00e9}t\u{00e9} <|im_start|> 123\n";
        if let Ok(ids) = tok.encode(text, true) {
            let _ = tok.token_str(ids.first().copied().unwrap_or(0));
            if tok.decode(&ids).is_ok() {
                reached |= 8;
            }
        }
        let _ = tok.decode(&[u32::MAX, 0, 1, tok.vocab_size() as u32]);
    }
    reached
}

/// The GGUF reader: structural edits, then field and byte edits.
pub struct GgufTarget {
    pub seeds: Vec<Gguf>,
}

impl Target for GgufTarget {
    fn name(&self) -> &'static str {
        "gguf"
    }
    fn stages(&self) -> &'static [&'static str] {
        STAGES
    }
    fn next(&mut self, rng: &mut StdRng) -> Files {
        let mut g = self.seeds.choose(rng).unwrap().clone();
        if rng.gen_bool(0.5) {
            for _ in 0..rng.gen_range(1..=3) {
                g.mutate(rng);
            }
        }
        let e = g.encode();
        let mut bytes = e.bytes;
        if rng.gen_bool(0.6) {
            for _ in 0..rng.gen_range(1..=4) {
                mutate::field(rng, &mut bytes, &e.fields);
            }
        }
        if rng.gen_bool(0.3) {
            for _ in 0..rng.gen_range(1..=3) {
                mutate::bytes(rng, &mut bytes, e.header_end);
            }
        }
        vec![("model.gguf".into(), bytes)]
    }
    fn run(&self, dir: &Path) -> u32 {
        let path = dir.join("model.gguf");
        let Ok(m) = GgufModel::open(&path) else {
            return 0;
        };
        let mut reached = read_source(Box::new(m));
        if ModelView::open(&path).is_ok() {
            reached |= 16;
        }
        reached
    }
}

/// How one file of a folder seed is mutated.
#[derive(Clone, Copy)]
pub enum Edit {
    /// Its JSON tree edited.
    Json,
    /// A safetensors file: its header JSON edited, its length prefix and
    /// its bytes sometimes.
    Safetensors,
    /// A shard index: JSON edits plus shard names that leave the folder.
    Index,
}

/// A model folder with some of its files mutated.
pub struct FolderTarget {
    pub name: &'static str,
    pub seeds: Vec<Files>,
    pub edits: Vec<(String, Edit)>,
}

fn edit_json(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.to_vec();
    };
    for _ in 0..*[1, 1, 1, 2, 3].choose(rng).unwrap() {
        mutate::json(rng, &mut v);
    }
    let mut out = serde_json::to_vec(&v).unwrap();
    if rng.gen_bool(0.1) {
        mutate::bytes(rng, &mut out, usize::MAX);
    }
    out
}

fn edit_safetensors(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    let Some(n) = n
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= bytes.len() - 8)
    else {
        // Already broken by an earlier edit: raw damage only.
        let mut out = bytes.to_vec();
        mutate::bytes(rng, &mut out, 4096);
        return out;
    };
    let header = &bytes[8..8 + n];
    let data = &bytes[8 + n..];
    let mut h = if rng.gen_bool(0.8) {
        edit_json(rng, header)
    } else {
        header.to_vec()
    };
    // Keep the data 8-aligned as writers do, so offsets stay meaningful.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    if rng.gen_bool(0.15) {
        mutate::field(rng, &mut out, &[Field { at: 0, width: 8 }]);
    }
    if rng.gen_bool(0.2) {
        mutate::bytes(rng, &mut out, 8 + h.len());
    }
    out
}

const SHARD_NAMES: &[&str] = &[
    "../model-00001-of-00002.safetensors",
    "/etc/passwd",
    "sub/../../model.safetensors",
    "missing.safetensors",
    "",
    ".",
    "model.safetensors.index.json",
    "config.json",
];

fn edit_index(rng: &mut StdRng, bytes: &[u8]) -> Vec<u8> {
    let Ok(mut v) = serde_json::from_slice::<Value>(bytes) else {
        return bytes.to_vec();
    };
    if rng.gen_bool(0.5) {
        if let Some(Value::Object(map)) = v.get_mut("weight_map") {
            let keys: Vec<String> = map.keys().cloned().collect();
            if let Some(k) = keys.choose(rng) {
                map.insert(
                    k.clone(),
                    SHARD_NAMES.choose(rng).unwrap().to_string().into(),
                );
            }
        }
        serde_json::to_vec(&v).unwrap()
    } else {
        edit_json(rng, bytes)
    }
}

impl Target for FolderTarget {
    fn name(&self) -> &'static str {
        self.name
    }
    fn stages(&self) -> &'static [&'static str] {
        STAGES
    }
    fn next(&mut self, rng: &mut StdRng) -> Files {
        let mut files = self.seeds.choose(rng).unwrap().clone();
        // One file of the seed, mostly: deep paths need the rest intact.
        let edits: Vec<&(String, Edit)> = self
            .edits
            .iter()
            .filter(|(f, _)| files.iter().any(|(n, _)| n == f))
            .collect();
        let n = if rng.gen_bool(0.8) { 1 } else { 2 };
        for _ in 0..n {
            let (file, edit) = edits.choose(rng).unwrap();
            let (_, bytes) = files.iter_mut().find(|(n, _)| n == file).unwrap();
            *bytes = match *edit {
                Edit::Json => edit_json(rng, bytes),
                Edit::Safetensors => edit_safetensors(rng, bytes),
                Edit::Index => edit_index(rng, bytes),
            };
        }
        files
    }
    fn run(&self, dir: &Path) -> u32 {
        let mut reached = 0;
        if let Ok(view) = ModelView::open(dir) {
            reached |= 16;
            drop(view);
        }
        let src: Box<dyn TensorSource> = if dir.join("llmq.json").exists() {
            match llmq_gpu::formats::llmq::LlmqModel::open(dir) {
                Ok(m) => Box::new(m),
                Err(_) => return reached,
            }
        } else {
            match llmq_gpu::formats::safetensors_model::SafetensorsModel::open(dir) {
                Ok(m) => Box::new(m),
                Err(_) => return reached,
            }
        };
        reached | read_source(src)
    }
}

/// A folder's files as a seed (sub-folders not included).
pub fn folder_files(dir: &Path) -> Files {
    let mut files: Files = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}
