//! Faults during a run (issue 16, item 3): a signal, a file-size limit, a
//! read-only destination, an output path that is the source or inside it,
//! a symlink at the output path, a device lost mid-run. Each is a clear
//! error, the source is untouched and nothing is left at the output path;
//! a calibrated run keeps the layers it finished, for `--resume`.

mod common;

use llmq_gpu::backend::cpu::ops::AttnShape;
use llmq_gpu::backend::{
    Backend, CodebookSystem, CpuBackend, GptqColumns, GptqSpec, GroupParams, ResidentHessian,
};
use llmq_gpu::encoding::{QuantizedTensor, VqTensor};
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::checkpoint;
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::{quantize_model_with, CancelToken, Granularity, QuantScheme, QuantizeConfig};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_llmq-gpu")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `llmq-gpu quantize` at its defaults on the CPU.
fn quantize_on_cpu(model: &Path, out: &Path) -> std::process::Output {
    common::llmq(&[
        "quantize",
        "--model",
        s(model),
        "--out",
        s(out),
        "--device",
        "cpu",
    ])
}

/// Nothing at `out`, and no staging folder or temporary file beside it
/// (a calibrated run's checkpoint, `.NAME.llmq-partial`, aside).
fn assert_nothing_left(out: &Path) {
    assert!(
        std::fs::symlink_metadata(out).is_err(),
        "{} exists",
        out.display()
    );
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.llmq-")))
        .filter(|n| *n != format!(".{name}.llmq-partial"))
        .collect();
    assert!(left.is_empty(), "left beside the output: {left:?}");
}

/// Every file of a folder (or the file) with its length and modification time.
fn snapshot(p: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut v = Vec::new();
    let entries: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    } else {
        vec![p.to_path_buf()]
    };
    for e in entries {
        let m = std::fs::metadata(&e).unwrap();
        v.push((e, m.len(), m.modified().unwrap()));
    }
    v.sort();
    v
}

fn send(pid: u32, signal: libc::c_int) {
    // SAFETY: a plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

/// When to send the signal: once stderr shows a line, or after a while.
enum When {
    Line(&'static str),
    After(Duration),
}

/// Starts `args`, sends `signal` at `when`, and returns the exit code, the
/// stderr and how long the stop took after the signal.
fn interrupt(args: &[&str], when: When, signal: libc::c_int) -> (Option<i32>, String, Duration) {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut text = String::new();
    match when {
        When::Line(want) => loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("the run ended before '{want}' appeared:\n{text}");
            }
            text += &line;
            if line.contains(want) {
                break;
            }
        },
        When::After(d) => {
            std::thread::sleep(d);
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended within {d:?}"
            );
        }
    }
    send(child.id(), signal);
    let sent = Instant::now();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    (status.code(), text + &rest, sent.elapsed())
}

#[test]
fn sigterm_mid_gptq_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::smollm2_gguf();
    let before = snapshot(&model);
    let emma = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/emma.txt");
    let out = dir.path().join("q");
    let (code, err, took) = interrupt(
        &[
            "quantize",
            "--model",
            s(&model),
            "--out",
            s(&out),
            "--method",
            "gptq",
            "--calib",
            s(&emma),
            "--calib-samples",
            "8",
            "--calib-len",
            "64",
            "--device",
            "cpu",
        ],
        When::Line("layer   1/"),
        libc::SIGTERM,
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
    // Cancellation is checked per layer: one SmolLM2 layer is well under this.
    assert!(took < Duration::from_secs(60), "took {took:?} to stop");
    assert_nothing_left(&out);
    // The finished layers stay for --resume (tests/resume.rs goes on from them).
    let kept = checkpoint::layers_in(&checkpoint::default_dir(&out));
    assert!(kept.is_some_and(|n| n >= 1), "{kept:?}");
    assert!(err.contains("with --resume goes on"), "{err}");
    assert_eq!(snapshot(&model), before, "the source changed");
}

#[test]
fn sigint_mid_eval_stops_cleanly() {
    let persuasion = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/austen/persuasion.txt");
    let model = common::smollm2_gguf();
    let (code, err, took) = interrupt(
        &[
            "eval",
            "--model",
            s(&model),
            "--text",
            s(&persuasion),
            "--device",
            "cpu",
        ],
        // Evaluating Persuasion on the CPU takes minutes; eval prints
        // nothing before its end when stderr is not a terminal.
        When::After(Duration::from_secs(4)),
        libc::SIGINT,
    );
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("stopped by a signal"), "{err}");
    assert!(took < Duration::from_secs(60), "took {took:?} to stop");
}

/// `quantize` of the tiny model with the file-size limit of `sh`'s
/// `ulimit -f` (KiB) and SIGXFSZ ignored, so a write past it fails with
/// EFBIG the way a full disk fails with ENOSPC.
fn quantize_with_file_limit(model: &Path, out: &Path, kib: u32, extra: &[&str]) -> (bool, String) {
    let mut cmd = format!(
        "ulimit -f {kib}; trap '' XFSZ; exec '{}' quantize --model '{}' --out '{}' --bits 8 --group-size 32 --device cpu",
        bin(),
        s(model),
        s(out)
    );
    for e in extra {
        cmd += &format!(" {e}");
    }
    let o = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_write_past_the_file_size_limit_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("a_write_past_the_file_size_limit_fails_and_leaves_nothing");
    let tiny = common::gptq_model::tiny_model(dir.path(), &mut rng, &|_, _| {});
    // GGUF output needs a byte-level tokenizer: SmolLM2's (a single file written).
    let smollm2 = common::smollm2_gguf();
    for (model, name, extra) in [
        (&tiny, "q", &[][..]),
        (&smollm2, "q.gguf", &["--format", "gguf"][..]),
    ] {
        let before = snapshot(model);
        let out = dir.path().join(name);
        let (ok, err) = quantize_with_file_limit(model, &out, 16, extra);
        assert!(!ok, "{name}: the run succeeded under a 16 KiB file limit");
        assert!(err.contains("File too large"), "{name}: {err}");
        assert!(
            err.contains(s(dir.path())),
            "{name}: the error names no path: {err}"
        );
        assert_nothing_left(&out);
        assert_eq!(snapshot(model), before, "the source changed");
    }
    // The same run without the limit succeeds: the limit was the failure.
    let out = dir.path().join("q");
    let (ok, err) = quantize_with_file_limit(&tiny, &out, 1 << 20, &[]);
    assert!(ok, "{err}");
    assert!(out.join("llmq.json").is_file());
}

#[test]
fn a_read_only_destination_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny(dir.path(), true);
    // /proc refuses new entries even to root (chmod does not stop root).
    let mut outs = vec![PathBuf::from("/proc/llmq-gpu-test/q")];
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    let mut perms = std::fs::metadata(&ro).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&ro, perms).unwrap();
    if std::fs::write(ro.join("probe"), b"").is_err() {
        outs.push(ro.join("q"));
    }
    for out in outs {
        let o = quantize_on_cpu(&model, &out);
        let err = common::stderr(&o);
        assert!(!o.status.success());
        let parent = s(out.parent().unwrap());
        assert!(err.contains(parent), "{err}");
        assert!(!out.exists());
    }
}

#[test]
fn an_output_that_is_or_lies_inside_the_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny(dir.path(), true);
    let before = snapshot(&model);
    // A GGUF source as its own --out (a copy: a failed refusal would overwrite it).
    let gguf = dir.path().join("source.gguf");
    std::fs::copy(common::smollm2_gguf(), &gguf).unwrap();
    let gguf_before = snapshot(&gguf);
    let o = common::llmq(&[
        "quantize",
        "--model",
        s(&gguf),
        "--out",
        s(&gguf),
        "--overwrite",
        "--format",
        "gguf",
        "--device",
        "cpu",
    ]);
    let err = common::stderr(&o);
    assert!(
        !o.status.success() && err.contains("is (or holds) the source model"),
        "{err}"
    );
    assert_eq!(snapshot(&gguf), gguf_before, "the GGUF source changed");
    let cases = [
        (model.join("q"), "inside the source model folder"),
        (model.join("sub/../q"), "inside the source model folder"),
        (model.clone(), "is (or holds) the source model"),
        (dir.path().to_path_buf(), "is (or holds) the source model"),
    ];
    for (out, want) in cases {
        let o = common::llmq(&[
            "quantize",
            "--model",
            s(&model),
            "--out",
            s(&out),
            "--overwrite",
            "--device",
            "cpu",
        ]);
        let err = common::stderr(&o);
        assert!(
            !o.status.success() && err.contains(want),
            "--out {}: {err}",
            out.display()
        );
    }
    assert!(!model.join("q").exists());
    assert_eq!(snapshot(&model), before, "the source changed");
}

#[test]
fn a_symlink_at_the_output_path_is_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny(dir.path(), true);
    let precious = dir.path().join("precious");
    std::fs::create_dir(&precious).unwrap();
    std::fs::write(precious.join("keep.txt"), b"mine").unwrap();
    let out = dir.path().join("q");
    std::os::unix::fs::symlink(&precious, &out).unwrap();
    let args = [
        "quantize",
        "--model",
        s(&model),
        "--out",
        s(&out),
        "--device",
        "cpu",
    ];
    let o = common::llmq(&args);
    assert!(!o.status.success() && common::stderr(&o).contains("already exists"));
    let o = common::llmq(&[&args[..], &["--overwrite"]].concat());
    assert!(o.status.success(), "{}", common::stderr(&o));
    assert!(!std::fs::symlink_metadata(&out)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(out.join("llmq.json").is_file());
    let kept: Vec<_> = std::fs::read_dir(&precious)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept, vec![std::ffi::OsString::from("keep.txt")]);
    assert_eq!(std::fs::read(precious.join("keep.txt")).unwrap(), b"mine");
}

/// The CPU backend, except that the device is "lost" from the `fail_at`-th
/// GPTQ column run on: what a GPU backend reports when wgpu loses its device.
struct LosesDevice {
    calls: AtomicUsize,
    fail_at: usize,
}

impl LosesDevice {
    fn lost(&self) -> llmq_gpu::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_at {
            return Err(llmq_gpu::Error::Gpu(
                "device lost (simulated by the test)".into(),
            ));
        }
        Ok(())
    }
}

impl Backend for LosesDevice {
    fn name(&self) -> String {
        "cpu, losing its device".into()
    }
    fn group_ranges(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        g: usize,
    ) -> llmq_gpu::Result<(Vec<f32>, Vec<f32>)> {
        CpuBackend.group_ranges(w, rows, cols, g)
    }
    fn quantize_codes(
        &self,
        w: &[f32],
        rows: usize,
        cols: usize,
        p: &GroupParams,
    ) -> llmq_gpu::Result<Vec<u32>> {
        CpuBackend.quantize_codes(w, rows, cols, p)
    }
    fn abs_histogram(&self, x: &[f32], bins: usize, inv_width: f32) -> llmq_gpu::Result<Vec<u32>> {
        CpuBackend.abs_histogram(x, bins, inv_width)
    }
    fn pack(&self, c: &[u32], rows: usize, cols: usize, bits: u32) -> llmq_gpu::Result<Vec<u32>> {
        CpuBackend.pack(c, rows, cols, bits)
    }
    fn unpack(&self, p: &[u32], rows: usize, cols: usize, bits: u32) -> llmq_gpu::Result<Vec<u32>> {
        CpuBackend.unpack(p, rows, cols, bits)
    }
    fn dequantize(&self, q: &QuantizedTensor) -> llmq_gpu::Result<Vec<f32>> {
        CpuBackend.dequantize(q)
    }
    fn matmul(&self, q: &QuantizedTensor, x: &[f32], tokens: usize) -> llmq_gpu::Result<Vec<f32>> {
        CpuBackend.matmul(q, x, tokens)
    }
    fn causal_attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        windows: usize,
        seq: usize,
        shape: AttnShape,
    ) -> llmq_gpu::Result<Vec<f32>> {
        CpuBackend.causal_attention(q, k, v, windows, seq, shape)
    }
    fn vq_em(
        &self,
        p: &[f32],
        w: &[f32],
        groups: usize,
        k: usize,
        iters: usize,
        c: &mut [f32],
    ) -> llmq_gpu::Result<usize> {
        CpuBackend.vq_em(p, w, groups, k, iters, c)
    }
    fn vq_codebook_system<'a>(
        &'a self,
        t: &'a VqTensor,
        h: &'a [f32],
    ) -> llmq_gpu::Result<Box<dyn CodebookSystem + 'a>> {
        CpuBackend.vq_codebook_system(t, h)
    }
    fn resident_hessian<'a>(
        &'a self,
        h: Vec<f32>,
        cols: usize,
        n: usize,
    ) -> llmq_gpu::Result<Box<dyn ResidentHessian + 'a>> {
        CpuBackend.resident_hessian(h, cols, n)
    }
    fn gptq_columns<'a>(
        &'a self,
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        spec: GptqSpec<'a>,
    ) -> llmq_gpu::Result<Box<dyn GptqColumns + 'a>> {
        self.lost()?;
        CpuBackend.gptq_columns(w, rows, cols, spec)
    }
    fn inverse_cholesky_upper(&self, h: &[f32], n: usize) -> llmq_gpu::Result<Option<Vec<f32>>> {
        CpuBackend.inverse_cholesky_upper(h, n)
    }
    fn quadratic_traces(
        &self,
        h: &[f32],
        cols: usize,
        mats: &[&[f32]],
    ) -> llmq_gpu::Result<Vec<f64>> {
        CpuBackend.quadratic_traces(h, cols, mats)
    }
}

#[test]
fn a_device_lost_mid_run_is_an_error_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = common::rng("a_device_lost_mid_run_is_an_error_and_leaves_nothing");
    let model = common::gptq_model::tiny_model(dir.path(), &mut rng, &|_, _| {});
    let before = snapshot(&model);
    let out = dir.path().join("q");
    let settings = GptqSettings::new(CalibConfig {
        samples: 4,
        len: 16,
        seed: 1,
        ..CalibConfig::new(dir.path().join("calib.txt"))
    });
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let config = QuantizeConfig::new(&model, &out, scheme).gptq(settings);
    // 7 linears a layer: the 10th run is in the second layer, mid-layer.
    let backend = LosesDevice {
        calls: AtomicUsize::new(0),
        fail_at: 10,
    };
    let Err(err) = quantize_model_with(&backend, &config, &mut |_| {}, &CancelToken::default())
    else {
        panic!("the run succeeded with its device lost");
    };
    let msg = err.to_string();
    assert!(msg.contains("device lost"), "{msg}");
    assert!(backend.calls.load(Ordering::SeqCst) >= 10);
    assert_nothing_left(&out);
    assert_eq!(snapshot(&model), before, "the source changed");
    // The first layer was finished: the run goes on from it on another device.
    assert_eq!(
        checkpoint::layers_in(&checkpoint::default_dir(&out)),
        Some(1)
    );
    let config = config.resume(true);
    quantize_model_with(&CpuBackend, &config, &mut |_| {}, &CancelToken::default()).unwrap();
    assert!(out.join("llmq.json").is_file());
    assert!(!checkpoint::default_dir(&out).exists());
}

#[test]
fn a_staging_folder_left_by_a_killed_run_is_reported_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny(dir.path(), true);
    // What a SIGKILLed run leaves: its staging folder, named with its pid
    // (no process has pid 0x7ffffffe on Linux; pid_max is at most 2²²).
    let stale = dir.path().join(".q.llmq-tmp-2147483646-AbCdEf");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("shard-00001.data"), vec![0u8; 4096]).unwrap();
    let out = dir.path().join("q");
    let o = quantize_on_cpu(&model, &out);
    let err = common::stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(".q.llmq-tmp-2147483646-AbCdEf") && err.contains("left by an interrupted run"),
        "{err}"
    );
    assert!(
        stale.join("shard-00001.data").is_file(),
        "the stale folder was touched"
    );
    assert!(out.join("llmq.json").is_file());
}

/// The staging folder of `out` while a run writes it.
fn staging_of(out: &Path) -> Option<PathBuf> {
    let prefix = format!(".{}.llmq-tmp-", out.file_name()?.to_string_lossy());
    std::fs::read_dir(out.parent()?)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
}

#[test]
fn sigint_mid_convert_deletes_its_partial_output() {
    // `convert` cannot stop midway: the signal deletes the staging folder
    // being written and exits. The run is frozen (SIGSTOP) once its staging
    // folder exists, so the signal lands mid-write however fast the disk.
    let dir = tempfile::tempdir().unwrap();
    let model = common::smollm2_gguf();
    let out = dir.path().join("hf");
    for _attempt in 0..5 {
        let mut child = Command::new(bin())
            .args([
                "convert",
                "--model",
                s(&model),
                "--out",
                s(&out),
                "--to",
                "hf",
                "--dtype",
                "f32",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let staged = loop {
            if let Some(p) = staging_of(&out) {
                break Some(p);
            }
            if child.try_wait().unwrap().is_some() {
                break None;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let caught = staged.is_some_and(|p| {
            send(child.id(), libc::SIGSTOP);
            p.exists()
        });
        if !caught {
            // It committed before it could be frozen: try again.
            send_if_running(&mut child, libc::SIGCONT);
            child.wait().unwrap();
            let _ = std::fs::remove_dir_all(&out);
            continue;
        }
        send(child.id(), libc::SIGINT);
        let sent = Instant::now();
        send(child.id(), libc::SIGCONT);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "{err}");
        assert!(err.contains("1 partial output(s) deleted"), "{err}");
        assert!(sent.elapsed() < Duration::from_secs(10));
        assert_nothing_left(&out);
        return;
    }
    panic!("convert committed before it could be frozen, 5 times");
}

fn send_if_running(child: &mut std::process::Child, signal: libc::c_int) {
    if child.try_wait().unwrap().is_none() {
        send(child.id(), signal);
    }
}
