//! `eval` over several texts (issue 12): each text is reported, and each
//! model gets the mean over the texts, every text weighing the same.

mod common;

use common::{text, tiny};
use serde_json::Value;
use std::process::Command;

fn eval(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .arg("eval")
        .args(args)
        .args(["--device", "cpu"])
        .output()
        .unwrap()
}

#[test]
fn several_texts_report_each_and_their_mean() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), false);
    let q = dir.path().join("tiny-w4");
    let o = Command::new(env!("CARGO_BIN_EXE_llmq-gpu"))
        .args([
            "quantize",
            "--model",
            m.to_str().unwrap(),
            "--out",
            q.to_str().unwrap(),
        ])
        .args(["--bits", "4", "--group-size", "32", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (t1, t2) = (text(dir.path(), 200), text(dir.path(), 333));
    let table = dir.path().join("t.md");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let args = [
        "--model",
        &s(&m),
        "--model",
        &s(&q),
        "--reference",
        &s(&m),
        "--text",
        &s(&t1),
        "--text",
        &s(&t2),
        "--ctx",
        "32",
        "--chunks",
        "3",
        "--json",
        "--table",
        &s(&table),
    ];
    let o = eval(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let texts = v["texts"].as_array().expect("texts");
    assert_eq!(texts.len(), 2);
    let mean = v["mean"].as_array().expect("mean");
    assert_eq!(mean.len(), 2, "one mean per model");
    let f = |x: &Value, k: &str| x[k].as_f64().unwrap_or_else(|| panic!("{k} in {x}"));
    for (i, mn) in mean.iter().enumerate() {
        let (a, b) = (&texts[0][i], &texts[1][i]);
        assert_ne!(a["text"], b["text"]);
        // Each text weighs the same, whatever its length.
        let nll = (f(a, "nll") + f(b, "nll")) / 2.0;
        assert!((f(mn, "nll") - nll).abs() < 1e-12, "{mn}");
        assert!((f(mn, "ppl") - nll.exp()).abs() < 1e-9 * nll.exp(), "{mn}");
        let kld = (f(a, "kld") + f(b, "kld")) / 2.0;
        assert!((f(mn, "kld") - kld).abs() < 1e-12, "{mn}");
        let top1 = (f(a, "top1_agreement") + f(b, "top1_agreement")) / 2.0;
        assert!((f(mn, "top1_agreement") - top1).abs() < 1e-12, "{mn}");
        assert!(f(mn, "ppl_stderr") > 0.0, "{mn}");
    }
    assert_eq!(
        f(&mean[0], "kld").abs(),
        0.0,
        "the reference against itself"
    );
    assert!(f(&mean[1], "kld") > 0.0, "quantized differs");
    // The same numbers as evaluating each text alone.
    let alone = eval(&[
        "--model",
        &s(&q),
        "--reference",
        &s(&m),
        "--text",
        &s(&t2),
        "--ctx",
        "32",
        "--chunks",
        "3",
        "--json",
    ]);
    let alone: Value = serde_json::from_slice(&alone.stdout).expect("JSON");
    assert_eq!(alone["ppl"], texts[1][1]["ppl"]);
    assert_eq!(alone["kld"], texts[1][1]["kld"]);
    let md = std::fs::read_to_string(&table).unwrap();
    for want in ["text-200 PPL", "text-333 PPL", "mean PPL", "tiny-w4"] {
        assert!(md.contains(want), "{want} missing from\n{md}");
    }
}
