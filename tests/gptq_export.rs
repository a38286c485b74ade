//! `quantize --format gptq`: a numpy unpacker following the AutoGPTQ /
//! GPTQModel v1 convention (tests/py/gptq_unpack.py) reproduces, bit for
//! bit, llmq-gpu's own dequantization of the same quantization of SmolLM2,
//! symmetric and asymmetric; the checkpoint's config says what it holds.

mod common;

use common::{llmq, stderr};
use llmq_gpu::model::view::ModelView;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// transformers' name of a GGUF linear, and the heads of its q/k rows.
fn hf(name: &str, heads: usize, kv_heads: usize) -> (String, Option<usize>) {
    let rest = name.strip_prefix("blk.").unwrap();
    let (layer, what) = rest.split_once('.').unwrap();
    let (hf, perm) = match what {
        "attn_q.weight" => ("self_attn.q_proj", Some(heads)),
        "attn_k.weight" => ("self_attn.k_proj", Some(kv_heads)),
        "attn_v.weight" => ("self_attn.v_proj", None),
        "attn_output.weight" => ("self_attn.o_proj", None),
        "ffn_gate.weight" => ("mlp.gate_proj", None),
        "ffn_up.weight" => ("mlp.up_proj", None),
        "ffn_down.weight" => ("mlp.down_proj", None),
        other => panic!("unexpected quantized tensor {other}"),
    };
    (format!("model.layers.{layer}.{hf}.weight"), perm)
}

/// convert_hf_to_gguf.py's `permute` undone: GGUF row `h·hd + 2i + j` is
/// transformers row `h·hd + j·hd/2 + i`.
fn unpermute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let hd = rows / heads;
    let mut out = vec![0f32; w.len()];
    for r in 0..rows {
        let (h, within) = (r / hd, r % hd);
        let (i, j) = (within / 2, within % 2);
        let f = h * hd + j * hd / 2 + i;
        out[f * cols..(f + 1) * cols].copy_from_slice(&w[r * cols..(r + 1) * cols]);
    }
    out
}

fn check(dir: &Path, extra: &[&str]) {
    let gguf = common::smollm2_gguf();
    let (ours, gptq) = (dir.join("llmq"), dir.join("gptq"));
    for (out, format) in [(&ours, "llmq"), (&gptq, "gptq")] {
        let mut args = vec![
            "quantize",
            "--model",
            gguf.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--bits",
            "4",
            "--group-size",
            "128",
            "--device",
            "cpu",
            "--format",
            format,
        ];
        args.extend_from_slice(extra);
        let o = llmq(&args);
        assert!(o.status.success(), "{format}: {}", stderr(&o));
    }
    let python = common::python_with_references();
    let o = Command::new(python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/gptq_unpack.py"))
        .arg(&gptq)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let symmetric = extra.contains(&"--sym");
    assert_eq!(r["config"]["bits"], 4);
    assert_eq!(r["config"]["group_size"], 128);
    assert_eq!(r["config"]["sym"], symmetric);
    let linears = r["linears"].as_object().unwrap();
    assert_eq!(linears.len(), 30 * 7);
    let view = ModelView::open(&ours).unwrap();
    let (heads, kv) = (view.arch().num_heads, view.arch().num_kv_heads);
    let mut checked = 0;
    for t in view.tensors() {
        let Some(q) = view.load_quantized(&t.name).unwrap() else {
            continue;
        };
        let w = q.dequantize().unwrap();
        let (name, perm) = hf(&t.name, heads, kv);
        let w = match perm {
            Some(h) => unpermute(&w, q.rows, q.cols, h),
            None => w,
        };
        assert_eq!(
            linears[&name],
            serde_json::json!(common::fingerprint(&w)),
            "{name}"
        );
        checked += 1;
    }
    assert_eq!(checked, linears.len());
    eprintln!(
        "{} linears ({}): numpy's GPTQ unpacking equals llmq-gpu's dequantization",
        checked,
        if symmetric { "symmetric" } else { "asymmetric" }
    );
}

#[test]
fn numpy_gptq_unpacker_reproduces_our_weights() {
    let dir = tempfile::tempdir().unwrap();
    check(&dir.path().join("sym"), &["--sym"]);
    check(&dir.path().join("asym"), &[]);
    // 3-bit codes have no GPTQ packing here: refused by name, nothing left.
    let gguf = common::smollm2_gguf();
    let out = dir.path().join("w3");
    let o = llmq(&[
        "quantize",
        "--model",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--bits",
        "3",
        "--device",
        "cpu",
        "--format",
        "gptq",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("3-bit codes"), "{}", stderr(&o));
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.starts_with('.') || n == "w3"),
        "{left:?}"
    );
}
