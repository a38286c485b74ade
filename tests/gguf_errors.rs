//! GGUF reader: exact values for small hand-built files, and a clear error
//! (never a panic) for each kind of broken file.

use llmq_gpu::error::Error;
use llmq_gpu::formats::gguf::{GgufModel, GgufValue};
use llmq_gpu::model::{ModelView, TensorSource};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};

/// Serializes a GGUF file; fields are public so tests can break them.
struct Gguf {
    magic: [u8; 4],
    version: u32,
    kv: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<T>,
    alignment: u64,
}

struct T {
    name: String,
    /// Innermost first, as GGUF stores them.
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
    /// Replaces the computed offset.
    offset: Option<u64>,
}

fn s(v: &str) -> Vec<u8> {
    let mut b = (v.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(v.as_bytes());
    b
}

impl Gguf {
    fn new(arch: &str) -> Self {
        let mut g = Gguf {
            magic: *b"GGUF",
            version: 3,
            kv: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
        };
        g.kv("general.architecture", 8, s(arch));
        for (k, v) in [
            ("embedding_length", 64u32),
            ("feed_forward_length", 128),
            ("block_count", 2),
            ("attention.head_count", 4),
            ("context_length", 256),
        ] {
            g.kv(&format!("{arch}.{k}"), 4, v.to_le_bytes().to_vec());
        }
        g
    }
    fn kv(&mut self, key: &str, ty: u32, value: Vec<u8>) -> &mut Self {
        self.kv.push((key.to_string(), ty, value));
        self
    }
    fn without(&mut self, key: &str) -> &mut Self {
        self.kv.retain(|(k, _, _)| k != key);
        self
    }
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(T {
            name: name.into(),
            dims: dims.to_vec(),
            ty,
            data,
            offset: None,
        });
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend(self.version.to_le_bytes());
        b.extend((self.tensors.len() as u64).to_le_bytes());
        b.extend((self.kv.len() as u64).to_le_bytes());
        for (k, ty, v) in &self.kv {
            b.extend(s(k));
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        let a = self.alignment as usize;
        let mut data = Vec::new();
        for t in &self.tensors {
            let offset = t.offset.unwrap_or(data.len() as u64);
            b.extend(s(&t.name));
            b.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(t.ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
            data.extend(&t.data);
            data.resize(data.len().div_ceil(a) * a, 0);
        }
        b.resize(b.len().div_ceil(a) * a, 0);
        b.extend(data);
        b
    }
    fn write(&self, dir: &tempfile::TempDir) -> PathBuf {
        write_bytes(dir, &self.bytes())
    }
}

fn write_bytes(dir: &tempfile::TempDir, b: &[u8]) -> PathBuf {
    let p = dir.path().join("model.gguf");
    std::fs::write(&p, b).expect("write test file");
    p
}

fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Error text of opening `path`, which must fail.
fn open_err(path: &Path) -> String {
    match GgufModel::open(path) {
        Ok(_) => panic!("{} opened but should not", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("model.gguf"),
                "error does not name the file: {msg}"
            );
            msg
        }
    }
}

fn assert_contains(msg: &str, want: &str) {
    assert!(msg.contains(want), "expected '{want}' in: {msg}");
}

/// A file with one tensor of each exactly testable type, and the values
/// each must dequantize to.
/// A tensor of the valid model: name, shape, expected values.
type Expected = (&'static str, Vec<usize>, Vec<f32>);

fn valid_model() -> (Gguf, Vec<Expected>) {
    let mut g = Gguf::new("llama");
    let tokens: Vec<u8> = {
        let mut b = 8u32.to_le_bytes().to_vec();
        b.extend(3u64.to_le_bytes());
        for t in ["<s>", "a", "é"] {
            b.extend(s(t));
        }
        b
    };
    g.kv("tokenizer.ggml.tokens", 9, tokens);
    g.kv(
        "llama.attention.head_count_kv",
        4,
        2u32.to_le_bytes().to_vec(),
    );
    g.kv("llama.rope.freq_base", 6, 500000f32.to_le_bytes().to_vec());

    let mut expect = Vec::new();
    // F32, shape [2, 3] in PyTorch order.
    let v: Vec<f32> = vec![1.0, -2.5, 3.25, 0.0, 1e-3, -7.0];
    g.tensor("f32", &[3, 2], 0, f32s(&v));
    expect.push(("f32", vec![2, 3], v));
    // F16.
    let v = [0.5f32, -1.0, 65504.0, 0.099975586];
    g.tensor("f16", &[4], 1, v.iter().flat_map(|&x| f16(x)).collect());
    expect.push(("f16", vec![4], v.to_vec()));
    // Q8_0: d = 0.5, q = -16..16 -> q/2.
    let mut b = f16(0.5).to_vec();
    b.extend((-16i8..16).map(|q| q as u8));
    g.tensor("q8_0", &[32], 8, b);
    expect.push((
        "q8_0",
        vec![32],
        (-16..16).map(|q| q as f32 * 0.5).collect(),
    ));
    // Q4_0: d = 2, byte j = (j low, 15 - j high): y[j] = (j-8)*2, y[j+16] = (7-j)*2.
    let mut b = f16(2.0).to_vec();
    b.extend((0u8..16).map(|j| j | ((15 - j) << 4)));
    let mut y = vec![0f32; 32];
    for j in 0..16 {
        y[j] = (j as f32 - 8.0) * 2.0;
        y[j + 16] = (7.0 - j as f32) * 2.0;
    }
    g.tensor("q4_0", &[32], 2, b);
    expect.push(("q4_0", vec![32], y));
    // Q4_1: d = 0.25, m = -1, two blocks, shape [2, 32].
    let mut b = Vec::new();
    let mut y = vec![0f32; 64];
    for blk in 0..2 {
        b.extend(f16(0.25));
        b.extend(f16(-1.0));
        b.extend((0u8..16).map(|j| ((j + blk as u8) % 16) | (j << 4)));
        for j in 0..16 {
            y[blk * 32 + j] = ((j + blk) % 16) as f32 * 0.25 - 1.0;
            y[blk * 32 + j + 16] = j as f32 * 0.25 - 1.0;
        }
    }
    g.tensor("q4_1", &[32, 2], 3, b);
    expect.push(("q4_1", vec![2, 32], y));
    (g, expect)
}

fn check_valid(version: u32) {
    let dir = tempfile::tempdir().unwrap();
    let (mut g, expect) = valid_model();
    g.version = version;
    let path = g.write(&dir);
    let m = GgufModel::open(&path).unwrap();
    assert_eq!(m.version(), version);
    assert_eq!(m.tensors().len(), expect.len());
    for (name, shape, values) in &expect {
        let info = m.tensors().iter().find(|t| t.name == *name).unwrap();
        assert_eq!(&info.shape, shape, "{name}");
        let got = m.load_f32(name).unwrap();
        assert_eq!(&got, values, "{name}");
    }
    let dtypes: Vec<&str> = m.tensors().iter().map(|t| t.dtype.as_str()).collect();
    assert_eq!(dtypes, ["F32", "F16", "Q8_0", "Q4_0", "Q4_1"]);
    let a = m.arch();
    assert_eq!(a.architecture, "llama");
    assert_eq!(
        (
            a.hidden_size,
            a.intermediate_size,
            a.num_layers,
            a.num_heads,
            a.num_kv_heads
        ),
        (64, 128, 2, 4, 2)
    );
    assert_eq!((a.vocab_size, a.context_length), (3, 256));
    assert_eq!(a.rope_theta, 500000.0);
    assert_eq!(a.rms_norm_eps, 1e-5);
    assert!(a.tied_embeddings && a.rope_adjacent_pairs);
    let md = m.metadata();
    let tokens = &md
        .iter()
        .find(|(k, _)| k == "tokenizer.ggml.tokens")
        .unwrap()
        .1;
    assert_eq!(tokens, &serde_json::json!(["<s>", "a", "é"]));
    // ModelView accepts it too.
    let view = ModelView::open(&path).unwrap();
    assert_eq!(view.format_name(), "gguf");
    assert_eq!(view.load_f32("q4_1").unwrap(), expect[4].2);
}

#[test]
fn valid_v3_round_trip() {
    check_valid(3);
}

#[test]
fn valid_v2_round_trip() {
    check_valid(2);
}

#[test]
fn every_metadata_value_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.kv("u8", 0, vec![200])
        .kv("i8", 1, vec![0xFF])
        .kv("u16", 2, 60000u16.to_le_bytes().to_vec())
        .kv("i16", 3, (-300i16).to_le_bytes().to_vec())
        .kv("u32", 4, 4_000_000_000u32.to_le_bytes().to_vec())
        .kv("i32", 5, (-5i32).to_le_bytes().to_vec())
        .kv("f32", 6, 1.5f32.to_le_bytes().to_vec())
        .kv("bool", 7, vec![1])
        .kv("string", 8, s("hi"))
        .kv("u64", 10, u64::MAX.to_le_bytes().to_vec())
        .kv("i64", 11, i64::MIN.to_le_bytes().to_vec())
        .kv("f64", 12, 0.1f64.to_le_bytes().to_vec());
    // [[1, 2], []] as an array of arrays of i32.
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend(2u64.to_le_bytes());
    nested.extend(5u32.to_le_bytes());
    nested.extend(2u64.to_le_bytes());
    nested.extend(1i32.to_le_bytes());
    nested.extend(2i32.to_le_bytes());
    nested.extend(5u32.to_le_bytes());
    nested.extend(0u64.to_le_bytes());
    g.kv("nested", 9, nested);
    let m = GgufModel::open(&g.write(&dir)).unwrap();
    assert_eq!(m.get("i8"), Some(&GgufValue::I8(-1)));
    assert_eq!(m.get("bool"), Some(&GgufValue::Bool(true)));
    let json: serde_json::Map<String, serde_json::Value> = m.metadata().into_iter().collect();
    let want = serde_json::json!({
        "u8": 200, "i8": -1, "u16": 60000, "i16": -300, "u32": 4_000_000_000u32,
        "i32": -5, "f32": 1.5, "bool": true, "string": "hi", "u64": u64::MAX,
        "i64": i64::MIN, "f64": 0.1, "nested": [[1, 2], []],
    });
    for (k, v) in want.as_object().unwrap() {
        assert_eq!(&json[k], v, "{k}");
    }
}

#[test]
fn missing_file_is_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.gguf");
    assert!(matches!(GgufModel::open(&p), Err(Error::Io { .. })));
    assert!(matches!(ModelView::open(&p), Err(Error::Io { .. })));
}

#[test]
fn bad_magic() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.magic = *b"GGML";
    let p = g.write(&dir);
    assert_contains(&open_err(&p), "bad magic");
    let e = ModelView::open(&p).err().unwrap().to_string();
    assert_contains(&e, "not a GGUF file");
}

#[test]
fn version_1_and_unknown_versions_are_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.version = 1;
    let e = GgufModel::open(&g.write(&dir)).err().unwrap();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_contains(&e.to_string(), "version 1");
    g.version = 7;
    assert_contains(&open_err(&g.write(&dir)), "version 7");
}

#[test]
fn every_truncation_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _) = valid_model();
    let full = g.bytes();
    // The last tensor's data ends 32-byte aligned: trim the padding first.
    let end = full.len() - (32 - 20 * 2 % 32);
    for len in 0..end {
        let p = write_bytes(&dir, &full[..len]);
        let msg = open_err(&p);
        if len >= 8 {
            assert!(
                msg.contains("truncated")
                    || msg.contains("past the end")
                    || msg.contains("larger than"),
                "prefix {len}: {msg}"
            );
        }
    }
    assert!(GgufModel::open(&write_bytes(&dir, &full[..end])).is_ok());
}

#[test]
fn absurd_string_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Gguf::new("llama").bytes();
    // The first key's length field follows magic, version and two counts.
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert_contains(
        &open_err(&write_bytes(&dir, &b)),
        "larger than the rest of the file",
    );
}

#[test]
fn absurd_array_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = 4u32.to_le_bytes().to_vec();
    v.extend((1u64 << 40).to_le_bytes());
    let mut g = Gguf::new("llama");
    g.kv("big", 9, v);
    let msg = open_err(&g.write(&dir));
    assert_contains(&msg, "'big' array length");
    assert_contains(&msg, "larger than the rest of the file");
}

#[test]
fn absurd_counts() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Gguf::new("llama").bytes();
    b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert_contains(&open_err(&write_bytes(&dir, &b)), "tensor count");
}

#[test]
fn tensor_data_past_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.tensor("w", &[8], 0, f32s(&[0.0; 8]));
    g.tensors[0].offset = Some(4096);
    let msg = open_err(&g.write(&dir));
    assert_contains(&msg, "'w'");
    assert_contains(&msg, "past the end of the file");
}

#[test]
fn unknown_tensor_type() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.tensor("blk.0.attn_q.weight", &[32], 99, vec![0; 64]);
    let msg = open_err(&g.write(&dir));
    assert_contains(&msg, "blk.0.attn_q.weight");
    assert_contains(&msg, "unknown ggml type id 99");
}

#[test]
fn known_type_without_dequantizer_is_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.tensor("blk.0.attn_k.weight", &[256], 16, vec![0; 66]); // IQ2_XXS
    let m = GgufModel::open(&g.write(&dir)).unwrap();
    assert_eq!(m.tensors()[0].dtype, "IQ2_XXS");
    let e = m.load_f32("blk.0.attn_k.weight").err().unwrap();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_contains(&e.to_string(), "blk.0.attn_k.weight");
    assert_contains(&e.to_string(), "IQ2_XXS");
    assert!(matches!(
        m.load_f32("nope"),
        Err(Error::MissingTensor { .. })
    ));
}

#[test]
fn inconsistent_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&[u64], u32, &str); 4] = [
        (&[30], 8, "not a multiple of the Q8_0 block size 32"),
        (&[], 0, "has 0 dimensions"),
        (&[1, 1, 1, 1, 1], 0, "has 5 dimensions"),
        (&[u64::MAX, 4], 0, "overflows"),
    ];
    for (dims, ty, want) in cases {
        let mut g = Gguf::new("llama");
        g.tensor("t", dims, ty, vec![0; 64]);
        let msg = open_err(&g.write(&dir));
        assert_contains(&msg, "'t'");
        assert_contains(&msg, want);
    }
}

#[test]
fn duplicate_tensor_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.tensor("w", &[8], 0, f32s(&[1.0; 8]));
    g.tensor("w", &[8], 0, f32s(&[2.0; 8]));
    assert_contains(&open_err(&g.write(&dir)), "duplicate tensor name 'w'");
}

#[test]
fn misaligned_offset() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.tensor("w", &[8], 0, f32s(&[1.0; 8]));
    g.tensors[0].offset = Some(4);
    assert_contains(&open_err(&g.write(&dir)), "misaligned");
}

#[test]
fn custom_alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.alignment = 64;
    g.kv("general.alignment", 4, 64u32.to_le_bytes().to_vec());
    g.tensor("a", &[3], 0, f32s(&[1.0, 2.0, 3.0]));
    g.tensor("b", &[2], 0, f32s(&[4.0, 5.0]));
    let m = GgufModel::open(&g.write(&dir)).unwrap();
    assert_eq!(m.alignment(), 64);
    assert_eq!(m.load_f32("b").unwrap(), [4.0, 5.0]);
    // Offsets that are 32- but not 64-aligned are rejected.
    g.tensors[1].offset = Some(32);
    assert_contains(&open_err(&g.write(&dir)), "misaligned");
    g.without("general.alignment")
        .kv("general.alignment", 4, 3u32.to_le_bytes().to_vec());
    assert_contains(&open_err(&g.write(&dir)), "power of two");
}

#[test]
fn missing_required_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("llama");
    g.without("llama.block_count");
    assert_contains(&open_err(&g.write(&dir)), "llama.block_count");
    let mut g = Gguf::new("llama");
    g.without("general.architecture");
    assert_contains(&open_err(&g.write(&dir)), "general.architecture");
}

#[test]
fn unsupported_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gguf::new("gpt2");
    g.without("gpt2.feed_forward_length");
    let p = g.write(&dir);
    // The reader opens any architecture; ModelView refuses it.
    assert_eq!(GgufModel::open(&p).unwrap().arch().architecture, "gpt2");
    let e = ModelView::open(&p).err().unwrap().to_string();
    assert_contains(&e, "gpt2");
    assert_contains(&e, "not supported");
}

#[test]
fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let (g, _) = valid_model();
    let full = g.bytes();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..2000 {
        let mut b = full.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
        }
        let p = write_bytes(&dir, &b);
        if let Ok(m) = GgufModel::open(&p) {
            for t in m.tensors().to_vec() {
                let _ = m.load_f32(&t.name);
            }
        }
    }
}
