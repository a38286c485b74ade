//! GGUF seeds held as structure, so the fuzzer can edit them as a GGUF
//! (types, keys, tensor infos) and then encode them with every numeric
//! field's place recorded for the field mutator.

use super::mutate::Field;
use llmq_gpu::formats::gguf::{GgmlType, GgufModel, GgufValue};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::path::Path;

#[derive(Clone)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub data: Vec<u8>,
}

#[derive(Clone)]
pub struct Gguf {
    pub kv: Vec<(String, GgufValue)>,
    pub tensors: Vec<Tensor>,
}

/// An encoded seed: the bytes, the numeric fields in them, and where the
/// header (everything before the tensor data) ends.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub fields: Vec<Field>,
    pub header_end: usize,
}

struct Out {
    b: Vec<u8>,
    fields: Vec<Field>,
}

impl Out {
    fn num(&mut self, le: &[u8]) {
        self.fields.push(Field {
            at: self.b.len(),
            width: le.len(),
        });
        self.b.extend_from_slice(le);
    }
    fn str(&mut self, s: &[u8]) {
        self.num(&(s.len() as u64).to_le_bytes());
        self.b.extend_from_slice(s);
    }
}

fn value(o: &mut Out, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => o.num(&x.to_le_bytes()),
        GgufValue::I8(x) => o.num(&x.to_le_bytes()),
        GgufValue::U16(x) => o.num(&x.to_le_bytes()),
        GgufValue::I16(x) => o.num(&x.to_le_bytes()),
        GgufValue::U32(x) => o.num(&x.to_le_bytes()),
        GgufValue::I32(x) => o.num(&x.to_le_bytes()),
        GgufValue::F32(x) => o.num(&x.to_le_bytes()),
        GgufValue::Bool(x) => o.num(&[u8::from(*x)]),
        GgufValue::String(s) => o.str(s.as_bytes()),
        GgufValue::Array(a) => {
            let elem = a.first().map_or(4, GgufValue::type_id);
            o.num(&elem.to_le_bytes());
            o.num(&(a.len() as u64).to_le_bytes());
            // Long arrays (vocabularies) would drown the field list: keep
            // the fields of the first elements only.
            let keep = o.fields.len();
            for x in a {
                value(o, x);
            }
            o.fields.truncate(keep + 8);
        }
        GgufValue::U64(x) => o.num(&x.to_le_bytes()),
        GgufValue::I64(x) => o.num(&x.to_le_bytes()),
        GgufValue::F64(x) => o.num(&x.to_le_bytes()),
    }
}

const ALIGN: usize = 32;

impl Gguf {
    /// Reads a GGUF file back into structure (a valid file).
    pub fn read(path: &Path) -> Gguf {
        let m = GgufModel::open(path).expect("seed GGUF opens");
        let tensors = m
            .raw_tensors()
            .iter()
            .map(|t| Tensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty.id(),
                data: m.tensor_bytes(&t.name).unwrap().to_vec(),
            })
            .collect();
        Gguf {
            kv: m.metadata_values().to_vec(),
            tensors,
        }
    }

    pub fn encode(&self) -> Encoded {
        let mut o = Out {
            b: b"GGUF".to_vec(),
            fields: Vec::new(),
        };
        o.num(&3u32.to_le_bytes());
        o.num(&(self.tensors.len() as u64).to_le_bytes());
        o.num(&(self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            o.str(k.as_bytes());
            o.num(&v.type_id().to_le_bytes());
            value(&mut o, v);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            o.str(t.name.as_bytes());
            o.num(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                o.num(&d.to_le_bytes());
            }
            o.num(&t.ty.to_le_bytes());
            o.num(&(offset as u64).to_le_bytes());
            offset = (offset + t.data.len()).next_multiple_of(ALIGN);
        }
        o.b.resize(o.b.len().next_multiple_of(ALIGN), 0);
        let header_end = o.b.len();
        for t in &self.tensors {
            o.b.extend_from_slice(&t.data);
            o.b.resize(o.b.len().next_multiple_of(ALIGN), 0);
        }
        Encoded {
            bytes: o.b,
            fields: o.fields,
            header_end,
        }
    }

    /// One edit made as a GGUF: a tensor's type, shape or presence, a key's
    /// presence, type or value, an array's length. The file stays well
    /// formed; what it says becomes unusual.
    pub fn mutate(&mut self, rng: &mut StdRng) {
        match rng.gen_range(0..7) {
            0 if !self.tensors.is_empty() => {
                let t = self.tensors.choose_mut(rng).unwrap();
                let ty = ALL_TYPES.choose(rng).unwrap();
                t.ty = ty.id();
                // Sized for the new type, unless the shape is absurd (a
                // shape edit may have made it so): then short data.
                let n = t.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d)).max(1);
                let bytes = n.div_ceil(ty.block_size() as u64) * ty.type_size() as u64;
                t.data.resize(bytes.min(1 << 16) as usize, 0x3c);
                if rng.gen_bool(0.5) {
                    rng.fill(&mut t.data[..]);
                }
            }
            1 if !self.tensors.is_empty() => {
                let t = self.tensors.choose_mut(rng).unwrap();
                match rng.gen_range(0..3) {
                    0 => t.dims.reverse(),
                    1 => t.dims.push(1),
                    _ => {
                        let i = rng.gen_range(0..t.dims.len());
                        t.dims[i] = [0, 1, 2, 255, 256, 257, 1 << 32][rng.gen_range(0..7)];
                    }
                }
            }
            2 if !self.tensors.is_empty() => {
                let i = rng.gen_range(0..self.tensors.len());
                if rng.gen_bool(0.5) {
                    self.tensors.remove(i);
                } else {
                    let t = self.tensors[i].clone();
                    self.tensors.push(t);
                }
            }
            3 if !self.kv.is_empty() => {
                let i = rng.gen_range(0..self.kv.len());
                if rng.gen_bool(0.5) {
                    self.kv.remove(i);
                } else {
                    let kv = self.kv[i].clone();
                    self.kv.push(kv);
                }
            }
            4 if !self.kv.is_empty() => {
                let (_, v) = self.kv.choose_mut(rng).unwrap();
                *v = hostile(rng, v);
            }
            5 => {
                // Arrays: shorten, lengthen or empty one (vocab vs scores vs types).
                let arrays: Vec<usize> = (0..self.kv.len())
                    .filter(|&i| matches!(self.kv[i].1, GgufValue::Array(_)))
                    .collect();
                if let Some(&i) = arrays.choose(rng) {
                    if let GgufValue::Array(a) = &mut self.kv[i].1 {
                        match rng.gen_range(0..3) {
                            0 => a.truncate(rng.gen_range(0..=a.len())),
                            1 => {
                                if let Some(x) = a.choose(rng).cloned() {
                                    a.push(x);
                                }
                            }
                            _ => a.clear(),
                        }
                    }
                }
            }
            _ => {
                let key = KEYS.choose(rng).unwrap().to_string();
                let v = hostile(rng, &GgufValue::U32(0));
                self.kv.retain(|(k, _)| *k != key);
                self.kv.push((key, v));
            }
        }
    }
}

/// Keys the readers act on, to be planted with odd values.
const KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "llama.embedding_length",
    "llama.block_count",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.feed_forward_length",
    "llama.context_length",
    "llama.rope.dimension_count",
    "llama.rope.freq_base",
    "llama.rope.scaling.type",
    "llama.rope.scaling.factor",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
];

/// A value of another type or an edge value of the same.
fn hostile(rng: &mut StdRng, v: &GgufValue) -> GgufValue {
    match rng.gen_range(0..10) {
        0 => GgufValue::U32(u32::MAX),
        1 => GgufValue::U64(1 << 40),
        2 => GgufValue::I32(-1),
        3 => GgufValue::F32(f32::NAN),
        4 => GgufValue::String(
            ["llama", "gpt2", "bert", "", "mistral", "qwen2"][rng.gen_range(0..6)].into(),
        ),
        5 => GgufValue::Bool(true),
        6 => GgufValue::U32(0),
        7 => GgufValue::Array(vec![]),
        8 => GgufValue::Array(vec![GgufValue::String("a b c".into()), GgufValue::I8(-1)]),
        _ => match v {
            GgufValue::U32(x) => GgufValue::U32(x.wrapping_mul(1 << 16)),
            GgufValue::String(s) => GgufValue::String(format!("{s}{s}")),
            GgufValue::F32(_) => GgufValue::F32(-0.0),
            other => other.clone(),
        },
    }
}

/// Every block type the reader knows.
pub const ALL_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::F64,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::I64,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Q8K,
    GgmlType::Iq2Xxs,
    GgmlType::Iq2Xs,
    GgmlType::Iq3Xxs,
    GgmlType::Iq1S,
    GgmlType::Iq4Nl,
    GgmlType::Iq3S,
    GgmlType::Iq2S,
    GgmlType::Iq4Xs,
    GgmlType::Iq1M,
    GgmlType::Tq1_0,
    GgmlType::Tq2_0,
    GgmlType::Mxfp4,
];

/// The real SmolLM2 file made small: its metadata as is, except the
/// vocabulary cut to its first `vocab` tokens (and the merges among them),
/// and its first block's tensors as two 256-wide rows of every block type
/// in turn, filled with random bytes.
pub fn smollm2_small(real: &Path, vocab: usize, rng: &mut StdRng) -> Gguf {
    let m = GgufModel::open(real).expect("the SmolLM2 fixture opens");
    let mut kv = m.metadata_values().to_vec();
    let tokens: Vec<String> = match m.get("tokenizer.ggml.tokens") {
        Some(GgufValue::Array(a)) => a
            .iter()
            .take(vocab)
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => panic!("SmolLM2 has tokens"),
    };
    let known: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    for (k, v) in kv.iter_mut() {
        let GgufValue::Array(a) = v else { continue };
        if k == "tokenizer.ggml.merges" {
            a.retain(|m| {
                let Some((l, r)) = m.as_str().and_then(|s| s.split_once(' ')) else {
                    return false;
                };
                known.contains(l) && known.contains(r) && known.contains(format!("{l}{r}").as_str())
            });
        } else if k.starts_with("tokenizer.") {
            a.truncate(vocab);
        }
    }
    let tensors = m
        .raw_tensors()
        .iter()
        .filter(|t| !t.name.starts_with("blk.") || t.name.starts_with("blk.0."))
        .enumerate()
        .map(|(i, t)| {
            let ty = ALL_TYPES[i % ALL_TYPES.len()];
            let dims = if t.dims.len() == 1 {
                vec![256]
            } else {
                vec![256, 2]
            };
            let n = dims.iter().product::<u64>() as usize;
            let mut data = vec![0u8; n / ty.block_size() * ty.type_size()];
            rng.fill(&mut data[..]);
            Tensor {
                name: t.name.clone(),
                dims,
                ty: ty.id(),
                data,
            }
        })
        .collect();
    Gguf { kv, tensors }
}

/// `g` with a hand-built SentencePiece tokenizer (`tokenizer.ggml.model`
/// `llama`: scores, byte-fallback tokens, control tokens) in place of its
/// byte-level BPE, so the fuzzer reaches the SentencePiece builder too.
pub fn with_sentencepiece(g: &Gguf) -> Gguf {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2i32, 3, 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for piece in [
        "\u{2581}",
        "\u{2581}t",
        "he",
        "\u{2581}the",
        "\u{2581}a",
        "in",
        "\u{2581}w",
        "or",
        "ld",
    ] {
        tokens.push(piece.into());
        types.push(1);
    }
    for c in 'a'..='z' {
        tokens.push(c.to_string());
        types.push(1);
    }
    let scores: Vec<GgufValue> = (0..tokens.len())
        .map(|i| GgufValue::F32(-(i as f32)))
        .collect();
    let mut kv: Vec<(String, GgufValue)> =
        g.kv.iter()
            .filter(|(k, _)| !k.starts_with("tokenizer.ggml."))
            .cloned()
            .collect();
    kv.extend([
        (
            "tokenizer.ggml.model".to_string(),
            GgufValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.tokens".to_string(),
            GgufValue::Array(tokens.into_iter().map(GgufValue::String).collect()),
        ),
        (
            "tokenizer.ggml.scores".to_string(),
            GgufValue::Array(scores),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".to_string(), GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id".to_string(), GgufValue::U32(2)),
        (
            "tokenizer.ggml.unknown_token_id".to_string(),
            GgufValue::U32(0),
        ),
    ]);
    Gguf {
        kv,
        tensors: g.tensors.clone(),
    }
}
