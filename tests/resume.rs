//! `quantize --resume` (issue 16): a calibrated run that was stopped goes
//! on from its checkpoint and writes the same weights, byte for byte, as a
//! run that never stopped; a checkpoint is never thrown away or reused by
//! a run with other settings.
//!
//! The library tests stop a tiny 2-layer model after its first layer
//! (through the cancel token) under each solver; the CLI test kills a real
//! SmolLM2 GPTQ run with SIGKILL in the middle of a layer.

mod common;

use common::gptq_model::tiny_model;
use llmq_gpu::backend::CpuBackend;
use llmq_gpu::encoding::VqScheme;
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::checkpoint;
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::quant::gptvq::GptvqOptions;
use llmq_gpu::{
    quantize_model_with, CancelToken, Error, Granularity, Method, Progress, QuantScheme,
    QuantizeConfig,
};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every file of an output folder that holds weights or their layout,
/// with its bytes (the reports carry timings, so they differ).
fn weights(out: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no weights in {}", out.display());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("llmq.json")).unwrap()).unwrap();
    v.push((
        "llmq.json tensors".into(),
        meta["tensors"].to_string().into_bytes(),
    ));
    v
}

fn assert_same_weights(a: &Path, b: &Path) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(
        wa.iter().map(|w| &w.0).collect::<Vec<_>>(),
        wb.iter().map(|w| &w.0).collect::<Vec<_>>()
    );
    for ((name, x), (_, y)) in wa.iter().zip(&wb) {
        assert!(
            x == y,
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The two runs' reports give each linear the same GPTQ and RTN errors:
/// within 1e-12 relative, since the traces behind them are summed in
/// parallel (two runs that never stopped differ in the last bit too).
fn assert_same_errors(a: &Path, b: &Path) {
    let (ea, eb) = (errors(a), errors(b));
    assert_eq!(ea.len(), eb.len());
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * x.abs().max(y.abs());
    for (x, y) in ea.iter().zip(&eb) {
        assert!(
            x.0 == y.0 && close(x.1, y.1) && close(x.2, y.2),
            "{x:?} vs {y:?}"
        );
    }
}

/// Each linear's GPTQ and RTN errors in the run's report, by name.
fn errors(out: &Path) -> Vec<(String, f64, f64)> {
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("gptq-report.json")).unwrap()).unwrap();
    r["layers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["linears"].as_array().unwrap().clone())
        .map(|l| {
            let f = |k: &str| l[k].as_f64().unwrap();
            (
                l["name"].as_str().unwrap().to_string(),
                f("gptq_error"),
                f("rtn_error"),
            )
        })
        .collect()
}

fn tiny_config(model: &Path, out: &Path, method: Method) -> QuantizeConfig {
    let settings = GptqSettings::new(CalibConfig {
        samples: 8,
        len: 32,
        seed: 5,
        ..CalibConfig::new(model.parent().unwrap().join("calib.txt"))
    });
    let scheme = QuantScheme::new(3, false, Granularity::Group(32)).unwrap();
    let config = QuantizeConfig::new(model, out, scheme);
    match method {
        Method::Gptvq => {
            let vq = VqScheme::new(2, 2, 512, 8).unwrap();
            config.gptvq(settings, GptvqOptions::new(vq))
        }
        m => config.gptq(settings).method(m),
    }
}

/// Runs `config`; with `stop_after`, cancels once that many layers are done.
fn run(config: &QuantizeConfig, stop_after: Option<usize>) -> (llmq_gpu::Result<()>, Vec<String>) {
    let cancel = CancelToken::default();
    let mut seen = Vec::new();
    let r = quantize_model_with(
        &CpuBackend,
        config,
        &mut |p| match p {
            Progress::Layer {
                index, replayed, ..
            } => {
                seen.push(format!(
                    "layer {index}{}",
                    if replayed { " replayed" } else { "" }
                ));
                if Some(index + 1) == stop_after {
                    cancel.cancel();
                }
            }
            Progress::Resumed { layers, .. } => seen.push(format!("resumed {layers}")),
            _ => {}
        },
        &cancel,
    );
    (r.map(|_| ()), seen)
}

#[test]
fn a_stopped_run_resumes_to_the_same_bytes_under_every_solver() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("resume");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    for method in [Method::Gptq, Method::Gptvq, Method::Rtn] {
        let whole = dir.path().join(format!("whole-{}", method.name()));
        let (r, _) = run(&tiny_config(&model, &whole, method), None);
        r.unwrap();
        assert!(
            !checkpoint::default_dir(&whole).exists(),
            "a finished run keeps its checkpoint"
        );

        let out = dir.path().join(format!("stopped-{}", method.name()));
        let config = tiny_config(&model, &out, method);
        let ckpt = checkpoint::default_dir(&out);
        let (r, _) = run(&config, Some(1));
        assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
        assert!(!out.exists());
        assert_eq!(checkpoint::layers_in(&ckpt), Some(1), "{}", method.name());

        // Rerunning without --resume neither throws the layer away nor starts.
        let (r, _) = run(&config, None);
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("--resume") && msg.contains("1 layers done"),
            "{msg}"
        );
        // Other settings cannot go on from it.
        let mut other = config.clone().resume(true);
        other.gptq.as_mut().unwrap().options.damp = 0.05;
        let msg = run(&other, None).0.unwrap_err().to_string();
        assert!(
            msg.contains("settings") && msg.contains("different run"),
            "{msg}"
        );
        assert_eq!(checkpoint::layers_in(&ckpt), Some(1));

        let (r, seen) = run(&config.clone().resume(true), None);
        r.unwrap();
        assert_eq!(
            seen,
            ["resumed 1", "layer 0 replayed", "layer 1"],
            "{}",
            method.name()
        );
        assert!(!ckpt.exists(), "the checkpoint outlived the output");
        assert_same_weights(&whole, &out);
        assert_same_errors(&whole, &out);
    }
}

#[test]
fn a_run_stopped_before_its_first_layer_leaves_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("resume-early");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let out = dir.path().join("q");
    let cancel = CancelToken::default();
    let config = tiny_config(&model, &out, Method::Gptq);
    let r = quantize_model_with(
        &CpuBackend,
        &config,
        &mut |p| {
            if matches!(p, Progress::Calibrated { .. }) {
                cancel.cancel()
            }
        },
        &cancel,
    );
    assert!(matches!(r, Err(Error::Cancelled)), "{r:?}");
    assert!(!checkpoint::default_dir(&out).exists());
    // --resume with nothing to resume starts afresh.
    let (r, seen) = run(&config.resume(true), None);
    r.unwrap();
    assert_eq!(seen, ["layer 0", "layer 1"]);
}

#[test]
fn no_checkpoint_keeps_none_and_rtn_has_nothing_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("resume-off");
    let model = tiny_model(dir.path(), &mut rng, &|_, _| {});
    let out = dir.path().join("q");
    let config = tiny_config(&model, &out, Method::Gptq).checkpoint(None);
    let (r, _) = run(&config, Some(1));
    assert!(matches!(r, Err(Error::Cancelled)));
    assert!(!checkpoint::default_dir(&out).exists());
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let rtn = QuantizeConfig::new(&model, &out, scheme).resume(true);
    let msg = run(&rtn, None).0.unwrap_err().to_string();
    assert!(msg.contains("calibrated"), "{msg}");
}

/// The GPTQ run of the CLI test: SmolLM2, small calibration (a quarter of
/// it sampled from the model, so those windows come back from the
/// checkpoint), without the scale search (a third of the time), on the CPU.
fn smollm2_gptq(out: &Path, extra: &[&str]) -> Command {
    let model = common::smollm2_gguf();
    let emma = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/emma.txt");
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmq-gpu"));
    c.args(["quantize", "--model", s(&model), "--out", s(out)])
        .args(["--method", "gptq", "--bits", "3", "--calib", s(&emma)])
        .args([
            "--calib-samples",
            "8",
            "--calib-len",
            "64",
            "--calib-self-share",
            "0.25",
        ])
        .args(["--no-scale-search", "--device", "cpu"])
        .args(extra);
    c
}

#[test]
fn a_smollm2_gptq_run_killed_mid_layer_resumes_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let o = smollm2_gptq(&whole, &[]).output().unwrap();
    assert!(o.status.success(), "{}", common::stderr(&o));

    // Killed (no handler runs) halfway through layer 4, going by layer 3's time.
    let out = dir.path().join("q");
    let mut child = smollm2_gptq(&out, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    let seconds = loop {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "the run ended early");
        if line.contains("layer   3/") {
            let t = line.trim_end().trim_end_matches(" s");
            break t.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        }
    };
    std::thread::sleep(std::time::Duration::from_secs_f64(seconds / 2.0));
    child.kill().unwrap();
    child.wait().unwrap();
    let ckpt = checkpoint::default_dir(&out);
    let done = checkpoint::layers_in(&ckpt).expect("no checkpoint after the kill");
    assert!((3..30).contains(&done), "{done} layers done");
    assert!(!out.exists());

    let o = smollm2_gptq(&out, &[]).output().unwrap();
    let msg = common::stderr(&o);
    assert!(!o.status.success() && msg.contains("--resume"), "{msg}");
    let o = smollm2_gptq(&out, &["--damp", "0.02", "--resume"])
        .output()
        .unwrap();
    let msg = common::stderr(&o);
    assert!(!o.status.success() && msg.contains("settings"), "{msg}");
    assert_eq!(checkpoint::layers_in(&ckpt), Some(done));

    let o = smollm2_gptq(&out, &["--resume"]).output().unwrap();
    let msg = common::stderr(&o);
    assert!(o.status.success(), "{msg}");
    assert!(
        msg.contains(&format!("resuming: {done} of 30 layers")),
        "{msg}"
    );
    assert!(msg.contains("(from the checkpoint)"), "{msg}");
    assert!(!ckpt.exists());
    assert_same_weights(&whole, &out);
    assert_same_errors(&whole, &out);
}
