//! GPTQ's codes written as GGUF blocks (`quantize --format gguf --method
//! gptq`): gguf-py's dequantization of every Q4_0 linear equals llmq-gpu's
//! dequantization of the llmq folder the file was made from, bit for bit;
//! the CLI runs end to end onto Q4_K_M's mix (GPTQ onto Q4_K, Q6_K, Q5_0
//! and Q8_0 blocks) and IQ4_NL (the imatrix-weighted rounding), gguf-py
//! reading every tensor as llmq-gpu does; what it cannot write is refused.

mod common;

use common::{llmq, stderr};
use llmq_gpu::formats::gguf::export::{export_codes, GgufExport, GgufLayout};
use llmq_gpu::formats::gguf::presets::Preset;
use llmq_gpu::formats::gguf::GgufModel;
use llmq_gpu::formats::source::TensorSource;
use llmq_gpu::model::view::ModelView;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn emma() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/emma.txt")
}

/// `quantize` of SmolLM2 with GPTQ on 4 short calibration windows, plus `extra`.
fn gptq(out: &Path, extra: &[&str]) -> std::process::Output {
    calibrated("gptq", out, extra)
}

/// `quantize` of SmolLM2 by `method` on 4 short calibration windows, plus `extra`.
fn calibrated(method: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let (gguf, emma) = (common::smollm2_gguf(), emma());
    let mut args = vec![
        "quantize",
        "--model",
        gguf.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--method",
        method,
        "--calib",
        emma.to_str().unwrap(),
        "--calib-samples",
        "4",
        "--calib-len",
        "128",
        // Emma only: sampling windows from the model is tested elsewhere.
        "--calib-self-share",
        "0",
        "--device",
        "cpu",
    ];
    args.extend_from_slice(extra);
    llmq(&args)
}

#[test]
fn gptq_codes_become_the_gguf_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("w4g32");
    // Without the scale search (a third of a run): the codes, not their
    // quality, are what this checks.
    let o = gptq(
        &folder,
        &[
            "--bits",
            "4",
            "--group-size",
            "32",
            "--sym",
            "--no-scale-search",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let src = GgufModel::open(&common::smollm2_gguf()).unwrap();
    let codes = ModelView::open(&folder).unwrap();
    let out = dir.path().join("q4_0.gguf");
    let opts = GgufExport {
        preset: Preset::Q4_0,
        rules: Vec::new(),
        overwrite: false,
    };
    let report = export_codes(
        &GgufLayout::of_gguf(&src),
        Some(codes.source()),
        &out,
        &opts,
        &mut |_, _, _| {},
    )
    .unwrap();
    assert_eq!(report.from_codes, 210);

    let python = common::python_with_references();
    let script = "import json, sys\nsys.path.insert(0, sys.argv[1])\n\
        import gguf\nfrom gguf import quants\nfrom gguf_requantize_ref import fingerprint\n\
        r = gguf.GGUFReader(sys.argv[2])\n\
        print(json.dumps({t.name: fingerprint(quants.dequantize(t.data, t.tensor_type)) \
        for t in r.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q4_0}))";
    let o = Command::new(python)
        .args(["-c", script])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let theirs: Value = serde_json::from_slice(&o.stdout).unwrap();
    let theirs = theirs.as_object().unwrap();
    let mut checked = 0;
    for t in codes.tensors() {
        if let Some(q) = codes.load_quantized(&t.name).unwrap() {
            let ours = common::fingerprint(&q.dequantize().unwrap());
            assert_eq!(theirs[&t.name], serde_json::json!(ours), "{}", t.name);
            checked += 1;
        }
    }
    assert_eq!((checked, theirs.len()), (210, 210));
    eprintln!("{checked} GPTQ linears: gguf-py's Q4_0 dequantization equals ours");

    // The CLI end to end, and what it refuses. Q4_K_M's mix under GPTQ
    // (Q4_K, Q6_K, Q5_0 and Q8_0 blocks), IQ4_NL under the weighted
    // rounding: every tensor of both files as gguf-py dequantizes it is
    // what we read.
    for (preset, method, ty) in [("Q4_K_M", "gptq", "Q4_K"), ("IQ4_NL", "rtn", "IQ4_NL")] {
        let file = dir.path().join(format!("{preset}.gguf"));
        let o = calibrated(method, &file, &["--format", "gguf", "--gguf-type", preset]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(stdout_has(
            &o,
            "210 tensors written from the calibrated codes"
        ));
        // The report beside the file, for GPTQ (calibrated RTN writes none).
        let report = dir.path().join(format!("{preset}.gguf.gptq-report.json"));
        assert!(method != "gptq" || report.is_file(), "{}", report.display());
        let m = GgufModel::open(&file).unwrap();
        assert!(
            m.raw_tensors().iter().any(|t| t.ty.name() == ty),
            "{preset}"
        );
        let script = "import json, sys\nsys.path.insert(0, sys.argv[1])\n\
            import gguf\nfrom gguf import quants\nfrom gguf_requantize_ref import fingerprint\n\
            r = gguf.GGUFReader(sys.argv[2])\n\
            print(json.dumps({t.name: fingerprint(quants.dequantize(t.data, t.tensor_type)) \
            for t in r.tensors}))";
        let o = Command::new(common::python_with_references())
            .args(["-c", script])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py"))
            .arg(&file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let theirs: Value = serde_json::from_slice(&o.stdout).unwrap();
        for t in m.raw_tensors() {
            let ours = common::fingerprint(&m.load_f32(&t.name).unwrap());
            assert_eq!(
                theirs[&t.name],
                serde_json::json!(ours),
                "{preset} {}",
                t.name
            );
        }
        eprintln!(
            "{preset} by {method}: gguf-py reads all {} tensors as we do",
            m.raw_tensors().len()
        );
    }
    // What it refuses: an unknown type, GPTVQ (no block type holds its codebooks).
    for (method, extra, why) in [
        ("gptq", &["--gguf-type", "Q9_9"][..], "Q9_9"),
        ("gptvq", &[][..], "GPTVQ"),
    ] {
        let x = dir.path().join("refused.gguf");
        let mut args = vec!["--format", "gguf"];
        args.extend_from_slice(extra);
        let o = calibrated(method, &x, &args);
        assert!(!o.status.success());
        assert!(stderr(&o).contains(why), "{}", stderr(&o));
        assert!(!x.exists());
    }
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

fn stdout_has(o: &std::process::Output, s: &str) -> bool {
    String::from_utf8_lossy(&o.stdout).contains(s)
}
