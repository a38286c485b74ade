//! A fuzzer for the readers of untrusted files, on the stable toolchain:
//! seeds (real and hand-built files), structure-aware mutators, and a
//! runner that counts panics, hangs and allocations beyond what the input
//! can justify. Each finding's files are kept for a regression test.

pub mod alloc;
pub mod gguf_seed;
pub mod mutate;
pub mod targets;

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// An input: files by name, written into an empty folder before each run.
pub type Files = Vec<(String, Vec<u8>)>;

pub trait Target {
    fn name(&self) -> &'static str;
    /// A seed, mutated.
    fn next(&mut self, rng: &mut StdRng) -> Files;
    /// Reads the folder as the tool would; returns which of the reader's
    /// stages succeeded, bit k for stage k (errors are the expected outcome).
    fn run(&self, dir: &Path) -> u32;
    /// The names of those stages, for the report.
    fn stages(&self) -> &'static [&'static str];
}

/// One run of a target that went wrong.
#[derive(Debug)]
pub struct Finding {
    pub kind: &'static str,
    pub message: String,
    pub kept_at: PathBuf,
}

#[derive(Debug, Default)]
pub struct Report {
    pub target: &'static str,
    pub execs: usize,
    pub seconds: f64,
    pub findings: Vec<Finding>,
    /// Runs in which stage k succeeded.
    pub reached: Vec<usize>,
    pub slowest: Duration,
    /// Most bytes allocated above the live set during one run, and the
    /// input size of that run.
    pub worst_alloc: (usize, usize),
    pub largest_request: usize,
    /// Panics inside a dependency that the library caught (errors to the user).
    pub contained: usize,
}

/// A run may allocate the input's size this many times over (an f32 copy
/// of 1.5-bit data is 21×, a tokenizer's maps a few times their JSON), plus
/// a fixed 32 MiB for the tool's own tables.
pub const ALLOC_PER_INPUT_BYTE: usize = 64;
pub const ALLOC_FLOOR: usize = 32 << 20;
/// A run this slow is a hang finding; one 10× slower aborts the process.
pub const HANG: Duration = Duration::from_secs(5);

static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static WATCHDOG: Once = Once::new();
/// The last panic of a run: its message, and its backtrace, whose symbols
/// are resolved (hundreds of MiB of debug info read) only for a finding.
static PANIC_MESSAGE: Mutex<Option<(String, std::backtrace::Backtrace)>> = Mutex::new(None);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// Aborts the process if one run takes 10× [`HANG`]: an infinite loop never
/// returns to be counted.
fn watchdog() {
    WATCHDOG.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(500));
            let s = STARTED_MS.load(Ordering::Relaxed);
            if s != 0 && now_ms().saturating_sub(s) > 10 * HANG.as_millis() as u64 {
                eprintln!("\nfuzz: one run has not returned in {:?}: hang; its input is in the work folder named above", 10 * HANG);
                std::process::abort();
            }
        });
    });
}

fn write_files(dir: &Path, files: &Files) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).expect("clear the fuzz work folder");
    }
    std::fs::create_dir_all(dir).expect("make the fuzz work folder");
    for (name, bytes) in files {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("make a sub-folder");
        }
        std::fs::write(p, bytes).expect("write a fuzz input");
    }
}

/// Somewhere fast to write each input: /dev/shm where there is one.
fn work_root() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new()
            .prefix("llmq-fuzz-")
            .tempdir_in(shm)
        {
            return d;
        }
    }
    tempfile::Builder::new()
        .prefix("llmq-fuzz-")
        .tempdir()
        .expect("a temporary folder")
}

/// Runs `target` on `execs` inputs from `seed`; findings are copied under
/// `keep` (one folder per finding, with a `repro.txt`).
pub fn run(target: &mut dyn Target, execs: usize, seed: u64, keep: &Path) -> Report {
    watchdog();
    let root = work_root();
    let dir = root.path().join("input");
    eprintln!(
        "fuzz {}: {execs} inputs from seed {seed}; work folder {}",
        target.name(),
        dir.display()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report {
        target: target.name(),
        reached: vec![0; target.stages().len()],
        ..Report::default()
    };
    // Panics of the target are findings; the harness's own are reported as usual.
    let hook: std::sync::Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        std::panic::take_hook().into();
    let outer = hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if STARTED_MS.load(Ordering::Relaxed) == 0 {
            return outer(info);
        }
        let trace = std::backtrace::Backtrace::force_capture();
        *PANIC_MESSAGE.lock().unwrap_or_else(|e| e.into_inner()) = Some((info.to_string(), trace));
    }));
    let t0 = Instant::now();
    for i in 0..execs {
        let files = target.next(&mut rng);
        let size: usize = files.iter().map(|(_, b)| b.len()).sum();
        write_files(&dir, &files);
        let base = alloc::reset();
        let start = Instant::now();
        STARTED_MS.store(now_ms(), Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| target.run(&dir)));
        STARTED_MS.store(0, Ordering::Relaxed);
        let took = start.elapsed();
        let (peak, largest) = alloc::since_reset();
        let grew = peak.saturating_sub(base);
        report.execs += 1;
        report.slowest = report.slowest.max(took);
        let mut found = |kind: &'static str, message: String| {
            let kept_at = keep.join(format!("{}-{kind}-{i}", target.name()));
            let _ = std::fs::remove_dir_all(&kept_at);
            write_files(&kept_at, &files);
            let _ = std::fs::write(
                kept_at.join("repro.txt"),
                format!(
                    "target {} seed {seed} input {i}: {kind}: {message}\n",
                    target.name()
                ),
            );
            report.findings.push(Finding {
                kind,
                message,
                kept_at,
            });
        };
        // A panic the library caught and turned into an error is counted,
        // not a finding; its backtrace (symbols read from the debug info)
        // is not the reader's allocation either.
        let hooked = PANIC_MESSAGE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if hooked && outcome.is_ok() {
            report.contained += 1;
            PANIC_MESSAGE
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        }
        match outcome {
            Ok(stages) => {
                for (k, r) in report.reached.iter_mut().enumerate() {
                    *r += ((stages >> k) & 1) as usize;
                }
            }
            Err(_) => {
                let msg = PANIC_MESSAGE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                let msg = msg.map(|(m, t)| format!("{m}\n{}", library_frames(&t.to_string())));
                found("panic", msg.unwrap_or_default());
            }
        }
        if took > HANG {
            found("hang", format!("one run took {took:?}"));
        }
        if !hooked {
            report.largest_request = report.largest_request.max(largest);
            if grew > report.worst_alloc.0 {
                report.worst_alloc = (grew, size);
            }
        }
        if !hooked && grew > ALLOC_FLOOR + ALLOC_PER_INPUT_BYTE * size {
            found(
                "memory",
                format!("allocated {grew} bytes above the live set for a {size}-byte input"),
            );
        }
    }
    report.seconds = t0.elapsed().as_secs_f64();
    std::panic::set_hook(Box::new(move |info| hook(info)));
    report
}

/// `VmHWM` from /proc (Linux): the most memory the process has held.
fn peak_resident() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line["VmHWM:".len()..].trim().to_string())
}

/// The library's frames of a backtrace, where the panic is to be fixed.
fn library_frames(trace: &str) -> String {
    let lines: Vec<&str> = trace.lines().collect();
    let mut out = String::new();
    for (i, l) in lines.iter().enumerate() {
        if l.contains("llmq_gpu::") {
            out += &format!("    {}\n", l.trim());
            if let Some(at) = lines
                .get(i + 1)
                .filter(|n| n.trim_start().starts_with("at "))
            {
                out += &format!("      {}\n", at.trim());
            }
        }
    }
    out
}

impl Report {
    /// The figures, one block per target.
    pub fn summary(&self, stages: &[&str]) -> String {
        let mut s = format!(
            "fuzz {}: {} inputs in {:.1} s ({:.0}/s), {} findings ({} dependency panics caught \
             as errors); slowest run {:.1} ms; most allocated in one run {:.1} MiB (input {} KiB); \
             largest single request {:.1} MiB\n",
            self.target,
            self.execs,
            self.seconds,
            self.execs as f64 / self.seconds.max(1e-9),
            self.findings.len(),
            self.contained,
            self.slowest.as_secs_f64() * 1e3,
            self.worst_alloc.0 as f64 / (1 << 20) as f64,
            self.worst_alloc.1 / 1024,
            self.largest_request as f64 / (1 << 20) as f64,
        );
        if let Some(hwm) = peak_resident() {
            s += &format!("  peak resident memory of the process so far: {hwm}\n");
        }
        for (k, name) in stages.iter().enumerate() {
            s += &format!(
                "  {name}: {:.1}% of inputs\n",
                100.0 * self.reached[k] as f64 / self.execs.max(1) as f64
            );
        }
        for f in self.findings.iter().take(10) {
            s += &format!(
                "  {}: {} (kept in {})\n",
                f.kind,
                f.message,
                f.kept_at.display()
            );
        }
        s
    }
}
