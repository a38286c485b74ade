//! `quantize --format gguf` end to end: bad input exits non-zero with a
//! message naming what is wrong and leaves nothing behind; overrides
//! that match nothing are warned about.

mod common;

use llmq_gpu::formats::gguf::writer::{write, TensorPlan};
use llmq_gpu::formats::gguf::{GgmlType, GgufValue};
use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .args(args)
        .output()
        .expect("the llmq-gpu binary runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in `dir` other than `keep`.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn nan_weights_name_the_tensor_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("nan.gguf");
    let md = vec![(
        "general.architecture".to_string(),
        GgufValue::String("synthetic".into()),
    )];
    let tensors = vec![
        TensorPlan {
            name: "blk.0.attn_norm.weight".into(),
            dims: vec![64],
            ty: GgmlType::F32,
        },
        TensorPlan {
            name: "blk.0.ffn_up.weight".into(),
            dims: vec![64, 4],
            ty: GgmlType::F32,
        },
    ];
    write(&src, false, &md, &tensors, 32, |i| {
        let mut x = vec![0.5f32; tensors[i].elements() as usize];
        if i == 1 {
            x[70] = f32::NAN;
        }
        Ok(x.iter().flat_map(|v| v.to_le_bytes()).collect())
    })
    .unwrap();
    let out = dir.path().join("out.gguf");
    let o = run(&[
        "quantize",
        "--model",
        src.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "gguf",
        "--gguf-type",
        "Q8_0",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("blk.0.ffn_up.weight"), "{}", stderr(&o));
    assert!(!out.exists());
    assert_eq!(leftovers(dir.path(), &["nan.gguf"]), Vec::<String>::new());
}

#[test]
fn bad_gguf_requests_fail_cleanly_on_smollm2() {
    let model = common::smollm2_gguf();
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let o_ = out.to_str().unwrap();
    let gguf = |extra: &[&str]| {
        let mut args = vec!["quantize", "--model", m, "--out", o_, "--format", "gguf"];
        args.extend(extra);
        run(&args)
    };
    for (extra, says) in [
        (
            &["--gguf-type", "Q9_9"][..],
            "unknown GGUF type preset 'Q9_9'",
        ),
        (
            &["--tensor-type", "attn_q=IQ2_XXS"][..],
            "IQ2_XXS is not one llmq-gpu writes yet",
        ),
        (&["--tensor-type", "attn_q"][..], "expected REGEX=TYPE"),
        (
            &[
                "--gguf-type",
                "Q4_K_M",
                "--method",
                "gptvq",
                "--calib",
                "x.txt",
            ][..],
            "GPTVQ's codebooks have no ggml block type",
        ),
    ] {
        let o = gguf(extra);
        assert!(!o.status.success(), "{extra:?}");
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
        assert!(!out.exists(), "{extra:?}");
    }
    // The source itself as the target.
    let o = run(&[
        "quantize",
        "--model",
        m,
        "--out",
        m,
        "--format",
        "gguf",
        "--overwrite",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is (or holds) the source model"),
        "{}",
        stderr(&o)
    );
    // A rule that matches nothing is warned about; the file is written.
    let o = gguf(&[
        "--gguf-type",
        "Q4_0",
        "--tensor-type",
        "no_such_tensor=Q8_0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("matches no tensor"), "{}", stderr(&o));
    assert!(out.exists());
    // A type whose blocks do not divide the rows takes llama-quantize's
    // fallback, named in a warning: Q6_K on 576-wide rows is Q8_0.
    let o = gguf(&["--overwrite", "--tensor-type", "attn_q=Q6_K", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "tensor 'blk.0.attn_q.weight' (and 29 more): rows of 576 values are no multiple of 256"
        ),
        "{}",
        stderr(&o)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let q = report["tensors"].as_array().unwrap().iter();
    let q: Vec<_> = q.filter(|t| t["name"] == "blk.0.attn_q.weight").collect();
    assert_eq!(q[0]["to"], "Q8_0");
    // An existing output is not replaced without --overwrite.
    let o = gguf(&[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--overwrite"), "{}", stderr(&o));
    assert_eq!(leftovers(dir.path(), &["out.gguf"]), Vec::<String>::new());
}
