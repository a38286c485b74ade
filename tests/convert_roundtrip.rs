//! `llmq-gpu convert` both ways, checked by llama.cpp's own reader
//! (gguf-py, tests/py/gguf_compare.py): GGUF → Hugging Face → GGUF keeps
//! every F32/F16/BF16 tensor bit for bit and llama.cpp's tokenizer keys
//! of the source; llmq → GGUF → llmq keeps the codes (ggml blocks byte for
//! byte, linear integer codes as the same codes in their block type).

mod common;

use common::{llmq, stderr};
use llmq_gpu::encoding::affine::packing::unpack_codes;
use llmq_gpu::encoding::EncodedTensor;
use llmq_gpu::model::view::ModelView;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn convert(from: &Path, to: &Path, extra: &[&str]) {
    let mut args = vec![
        "convert",
        "--model",
        from.to_str().unwrap(),
        "--out",
        to.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = llmq(&args);
    assert!(
        o.status.success(),
        "convert {from:?} -> {to:?}: {}",
        stderr(&o)
    );
}

/// `convert` of `from` to `to` fails with every one of `needles` in its
/// message and leaves nothing at `to`.
fn convert_refused(from: &Path, to: &Path, extra: &[&str], needles: &[&str]) {
    let mut args = vec![
        "convert",
        "--model",
        from.to_str().unwrap(),
        "--out",
        to.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = llmq(&args);
    let e = stderr(&o);
    assert!(!o.status.success(), "convert {from:?} -> {to:?} succeeded");
    for n in needles {
        assert!(e.contains(n), "'{n}' not in: {e}");
    }
    // Nothing new at `to` (an existing folder, the source's, stays as it was).
    assert!(!to.exists() || to.is_dir() && extra.contains(&"--overwrite"));
}

/// An llmq folder of RTN W4 codes in groups of `group` from `src`.
fn rtn_llmq(src: &Path, out: &Path, group: &str) {
    let o = llmq(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        "rtn",
        "--bits",
        "4",
        "--group-size",
        group,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// gguf_compare.py's report of `a` against `b`, and whether every tensor matched.
fn compare(a: &Path, b: &Path) -> (String, bool) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/gguf_compare.py");
    let o = Command::new(common::python_with_references())
        .arg(script)
        .args([a, b])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        text.contains("TENSORS"),
        "gguf_compare.py: {text}{}",
        stderr(&o)
    );
    (text, o.status.success())
}

fn types(path: &Path) -> Vec<String> {
    let script = "import gguf, sys\nr = gguf.GGUFReader(sys.argv[1])\n\
        print(' '.join(sorted({t.tensor_type.name for t in r.tensors})))";
    let o = Command::new(common::python_with_references())
        .args(["-c", script])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn gguf_to_hugging_face_and_back_keeps_every_float_tensor() {
    let src = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    // The Q4_1 source dequantized once into each float type, then round
    // tripped: F16 matrices (auto), BF16, F32; norms stay F32 as llama.cpp stores them.
    for (dtype, want) in [
        ("auto", ["F16", "F32"].as_slice()),
        ("bf16", &["BF16", "F32"]),
        ("f32", &["F32"]),
    ] {
        let (hf1, a, hf2, b) = (d("hf1"), d("a.gguf"), d("hf2"), d("b.gguf"));
        convert(&src, &hf1, &["--dtype", dtype, "--overwrite"]);
        convert(&hf1, &a, &["--overwrite"]);
        convert(&a, &hf2, &["--overwrite"]);
        convert(&hf2, &b, &["--overwrite"]);
        assert_eq!(types(&a), want, "{dtype}");
        let (report, same) = compare(&a, &b);
        assert!(same, "{dtype}: GGUF → HF → GGUF changed tensors:\n{report}");

        // llama.cpp's tokenizer keys are the source's.
        let (report, _) = compare(&src, &a);
        for key in [
            "tokenizer.ggml.model",
            "tokenizer.ggml.pre",
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.bos_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.chat_template",
            "llama.",
        ] {
            assert!(
                !report
                    .lines()
                    .any(|l| l.starts_with(&format!("metadata {key}"))),
                "{dtype}: {key} differs from the source:\n{report}"
            );
        }
    }
    // Converting a GGUF to GGUF is refused with the command that does it.
    convert_refused(&src, &d("x.gguf"), &["--to", "gguf"], &["--gguf-type"]);
}

/// The 4-bit codes of Q4_1 blocks (`d`, `m`, 16 bytes: low nibbles are
/// weights 0..16, high nibbles 16..32), row-major.
fn q4_1_codes(data: &[u8]) -> Vec<u32> {
    let mut out = Vec::with_capacity(data.len() / 20 * 32);
    for b in data.chunks_exact(20) {
        let qs = &b[4..];
        out.extend(qs.iter().map(|&q| (q & 15) as u32));
        out.extend(qs.iter().map(|&q| (q >> 4) as u32));
    }
    out
}

#[test]
fn llmq_to_gguf_and_back_keeps_the_codes() {
    let src = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);

    // GGUF blocks in an llmq folder: back to GGUF byte for byte, and to llmq again.
    convert(&src, &d("blocks"), &["--to", "llmq"]);
    convert(&d("blocks"), &d("blocks.gguf"), &[]);
    let (report, same) = compare(&src, &d("blocks.gguf"));
    assert!(same, "GGUF → llmq → GGUF changed tensors:\n{report}");
    convert(&d("blocks.gguf"), &d("blocks2"), &["--to", "llmq"]);
    let (a, b) = (
        ModelView::open(d("blocks")).unwrap(),
        ModelView::open(d("blocks2")).unwrap(),
    );
    let mut blocks = 0;
    for t in a.tensors() {
        match (
            a.load_encoded(&t.name).unwrap(),
            b.load_encoded(&t.name).unwrap(),
        ) {
            (Some(EncodedTensor::Ggml(x)), Some(EncodedTensor::Ggml(y))) => {
                assert_eq!((x.ty, x.data == y.data), (y.ty, true), "{}", t.name);
                blocks += 1;
            }
            (None, None) => assert_eq!(a.load_f32(&t.name).unwrap(), b.load_f32(&t.name).unwrap()),
            _ => panic!("{}: stored differently after the round trip", t.name),
        }
    }
    assert!(blocks >= 210, "{blocks} block tensors");

    // Linear integer codes (4-bit asymmetric groups of 32) become Q4_1
    // blocks with the same codes.
    let rtn = d("rtn");
    rtn_llmq(&src, &rtn, "32");
    convert(&rtn, &d("rtn.gguf"), &[]);
    convert(&d("rtn.gguf"), &d("rtn2"), &["--to", "llmq"]);
    let (a, b) = (
        ModelView::open(&rtn).unwrap(),
        ModelView::open(d("rtn2")).unwrap(),
    );
    let mut linears = 0;
    for t in a.tensors() {
        let Some(q) = a.load_quantized(&t.name).unwrap() else {
            continue;
        };
        let Some(EncodedTensor::Ggml(g)) = b.load_encoded(&t.name).unwrap() else {
            panic!("{}: not Q4_1 blocks after the round trip", t.name)
        };
        assert_eq!(g.ty.name(), "Q4_1", "{}", t.name);
        assert_eq!(
            q4_1_codes(&g.data),
            unpack_codes(&q.packed, q.rows, q.cols, q.scheme.bits),
            "{}: codes changed",
            t.name
        );
        // Values: exact up to the f16 storage of each group's scale and min.
        let (x, y) = (q.dequantize().unwrap(), b.load_f32(&t.name).unwrap());
        let worst = x
            .iter()
            .zip(&y)
            .map(|(p, r)| (p - r).abs())
            .fold(0f32, f32::max);
        let range = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(worst <= 2e-3 * range, "{}: {worst} of {range}", t.name);
        linears += 1;
    }
    assert_eq!(linears, 210);

    // Codes with no block type are refused by name, leaving nothing.
    let g128 = d("g128");
    rtn_llmq(&src, &g128, "128");
    convert_refused(&g128, &d("g128.gguf"), &[], &["no GGUF block type", "blk."]);
}

#[test]
fn convert_reports_json() {
    let src = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l");
    let o = llmq(&[
        "convert",
        "--model",
        src.to_str().unwrap(),
        "--to",
        "llmq",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tensors"], 272);
    assert_eq!(
        v["blocks"], 211,
        "the 210 linears and the Q8_0 token embedding"
    );
}

/// A Hugging Face folder quantizes to GGUF (`quantize --format gguf`)
/// exactly as the GGUF file it converts to does: the same preset mix,
/// rules by GGUF names, q/k rows permuted before the blocks are made.
#[test]
fn hugging_face_folder_quantizes_to_the_same_gguf() {
    let src = common::smollm2_gguf();
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    convert(&src, &d("hf"), &[]);
    convert(&d("hf"), &d("f16.gguf"), &[]);
    for model in ["hf", "f16.gguf"] {
        let o = llmq(&[
            "quantize",
            "--model",
            d(model).to_str().unwrap(),
            "--out",
            d(&format!("{model}.q.gguf")).to_str().unwrap(),
            "--format",
            "gguf",
            "--gguf-type",
            "Q4_K_M",
            "--tensor-type",
            "attn_k=Q5_1",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let (report, same) = compare(&d("f16.gguf.q.gguf"), &d("hf.q.gguf"));
    assert!(same, "{report}");
    assert_eq!(
        types(&d("hf.q.gguf")),
        ["F32", "Q4_K", "Q5_0", "Q5_1", "Q6_K", "Q8_0"]
    );

    // A tokenizer GGUF has no form for is refused by name, leaving nothing.
    let tiny = common::tiny(dir.path(), true);
    convert_refused(
        &tiny,
        &d("tiny.gguf"),
        &[],
        &["tokenizer.json", "byte-level"],
    );
    // Nor may the output replace the source.
    let folder = src.parent().unwrap();
    convert_refused(
        &src,
        folder,
        &["--to", "llmq", "--overwrite"],
        &["source model"],
    );
    assert!(src.is_file());
}
