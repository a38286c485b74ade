//! The peer on the same work: llama.cpp's `llama-bench` timing prefill and
//! decode of a GGUF on the same machine in the same run as
//! [`super::forward`], so `bench --model` prints our tokens/s as a ratio to
//! llama.cpp's, not only to the device's limits.
//!
//! llama-bench's `pp N` test is one N-token prompt from an empty cache
//! (our prefill is the same); its `tg N` test decodes N tokens from an
//! empty cache, ours after a 16-token prompt (the attention over 16 more
//! positions is a rounding error at these lengths). Both report the mean
//! of their repetitions; ours is the best of `--iters` for prefill.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What llama-bench measured on one GGUF.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRun {
    /// The binary that ran.
    pub tool: PathBuf,
    /// The GGUF it ran.
    pub model: PathBuf,
    /// llama.cpp's description of the model (`model_type`, e.g. `llama 135M Q8_0`).
    pub model_type: String,
    /// The model's bytes as llama.cpp counts them.
    pub model_bytes: u64,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub prefill_tokens_per_second: f64,
    pub prefill_stddev: f64,
    pub decode_tokens: usize,
    pub decode_tokens_per_second: f64,
    pub decode_stddev: f64,
}

/// One row of `llama-bench -o json`.
#[derive(Deserialize)]
struct Row {
    #[serde(default)]
    model_type: String,
    #[serde(default)]
    model_size: u64,
    n_threads: usize,
    n_prompt: usize,
    n_gen: usize,
    avg_ts: f64,
    #[serde(default)]
    stddev_ts: f64,
}

/// Where `scripts/build-llama-cpp.sh` puts llama-bench: under
/// `$LLMQ_CACHE` or `./.cache`.
pub fn default_llama_bench() -> PathBuf {
    let cache = std::env::var_os("LLMQ_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("llama.cpp/bin/llama-bench")
}

/// Runs `tool` on `gguf`: a `prompt_tokens` prefill and `decode_tokens`
/// decoded tokens, `reps` repetitions each, on `threads` CPU threads.
pub fn run_llama_bench(
    tool: &Path,
    gguf: &Path,
    prompt_tokens: usize,
    decode_tokens: usize,
    threads: usize,
    reps: usize,
) -> Result<PeerRun> {
    if !tool.is_file() {
        return Err(Error::Config(format!(
            "the peer benchmark {} does not exist: build it with `bash scripts/build-llama-cpp.sh` \
             (or name another with --llama-bench)",
            tool.display()
        )));
    }
    if !gguf.is_file() {
        return Err(Error::Config(format!(
            "the peer needs a GGUF file to run, and {} is not one: name the GGUF with --peer-model \
             (e.g. llama.cpp's Q8_0 or Q4_0 of the same model)",
            gguf.display()
        )));
    }
    let out = Command::new(tool)
        .arg("-m")
        .arg(gguf)
        .args(["-p", &prompt_tokens.to_string()])
        .args(["-n", &decode_tokens.to_string()])
        .args(["-t", &threads.to_string()])
        .args(["-r", &reps.max(1).to_string()])
        .args(["-o", "json"])
        .output()
        .map_err(|e| Error::Config(format!("could not run {}: {e}", tool.display())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(Error::Config(format!(
            "{} failed on {} ({}): {}",
            tool.display(),
            gguf.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    parse(tool, gguf, &String::from_utf8_lossy(&out.stdout))
}

fn parse(tool: &Path, gguf: &Path, json: &str) -> Result<PeerRun> {
    let bad = |msg: String| Error::Config(format!("{}: {msg}", tool.display()));
    let rows: Vec<Row> = serde_json::from_str(json.trim())
        .map_err(|e| bad(format!("output is not llama-bench's JSON ({e})")))?;
    let pp = rows.iter().find(|r| r.n_prompt > 0 && r.n_gen == 0);
    let tg = rows.iter().find(|r| r.n_prompt == 0 && r.n_gen > 0);
    let (Some(pp), Some(tg)) = (pp, tg) else {
        return Err(bad(
            "no prompt (pp) and generation (tg) rows in its output".into()
        ));
    };
    Ok(PeerRun {
        tool: tool.to_path_buf(),
        model: gguf.to_path_buf(),
        model_type: pp.model_type.clone(),
        model_bytes: pp.model_size,
        threads: pp.n_threads,
        prompt_tokens: pp.n_prompt,
        prefill_tokens_per_second: pp.avg_ts,
        prefill_stddev: pp.stddev_ts,
        decode_tokens: tg.n_gen,
        decode_tokens_per_second: tg.avg_ts,
        decode_stddev: tg.stddev_ts,
    })
}

/// Our figures over the peer's.
#[derive(Clone, Debug, Serialize)]
pub struct PeerComparison {
    pub peer: PeerRun,
    /// Our prefill tokens/s over llama.cpp's.
    pub prefill_ratio: f64,
    /// Our decode tokens/s over llama.cpp's.
    pub decode_ratio: f64,
}

impl PeerComparison {
    pub fn new(
        peer: PeerRun,
        prefill_tokens_per_second: f64,
        decode_tokens_per_second: f64,
    ) -> Self {
        Self {
            prefill_ratio: prefill_tokens_per_second / peer.prefill_tokens_per_second,
            decode_ratio: decode_tokens_per_second / peer.decode_tokens_per_second,
            peer,
        }
    }
}

impl fmt::Display for PeerComparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.peer;
        writeln!(
            f,
            "peer: llama.cpp llama-bench on {} ({}, {:.1} MB, {} threads)",
            p.model.display(),
            p.model_type,
            p.model_bytes as f64 / 1e6,
            p.threads
        )?;
        writeln!(
            f,
            "  prefill {} tokens: {:.1} ± {:.1} tok/s; ours = {:.2}x",
            p.prompt_tokens, p.prefill_tokens_per_second, p.prefill_stddev, self.prefill_ratio
        )?;
        write!(
            f,
            "  decode {} tokens: {:.1} ± {:.1} tok/s; ours = {:.2}x",
            p.decode_tokens, p.decode_tokens_per_second, p.decode_stddev, self.decode_ratio
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two rows as llama-bench (llama.cpp 0c1e570) prints them, trimmed.
    const OUT: &str = r#"[
      {"build_commit": "0c1e570", "model_type": "llama 135M Q8_0", "model_size": 144805888,
       "n_threads": 2, "n_prompt": 512, "n_gen": 0, "avg_ts": 812.5, "stddev_ts": 10.25},
      {"build_commit": "0c1e570", "model_type": "llama 135M Q8_0", "model_size": 144805888,
       "n_threads": 2, "n_prompt": 0, "n_gen": 32, "avg_ts": 95.0, "stddev_ts": 1.5}
    ]"#;

    #[test]
    fn parses_prefill_and_decode_rows() {
        let p = parse(Path::new("lb"), Path::new("m.gguf"), OUT).unwrap();
        assert_eq!((p.prompt_tokens, p.decode_tokens, p.threads), (512, 32, 2));
        assert_eq!(p.prefill_tokens_per_second, 812.5);
        assert_eq!(p.decode_tokens_per_second, 95.0);
        assert_eq!(p.model_type, "llama 135M Q8_0");
        let c = PeerComparison::new(p, 406.25, 190.0);
        assert_eq!((c.prefill_ratio, c.decode_ratio), (0.5, 2.0));
    }

    #[test]
    fn refuses_output_without_both_tests() {
        let one = r#"[{"n_threads": 2, "n_prompt": 512, "n_gen": 0, "avg_ts": 1.0}]"#;
        let e = parse(Path::new("lb"), Path::new("m.gguf"), one).unwrap_err();
        assert!(
            e.to_string().contains("no prompt (pp) and generation (tg)"),
            "{e}"
        );
        let e = parse(Path::new("lb"), Path::new("m.gguf"), "main: error").unwrap_err();
        assert!(e.to_string().contains("not llama-bench's JSON"), "{e}");
    }

    #[test]
    fn a_missing_tool_names_the_build_script() {
        let e = run_llama_bench(
            Path::new("/nonexistent/llama-bench"),
            Path::new("m"),
            8,
            8,
            1,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("scripts/build-llama-cpp.sh"), "{e}");
    }
}
