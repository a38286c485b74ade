//! Whole-model evaluation: tokenize a text, run every model (and the
//! reference, in lockstep) over the same windows, report perplexity, KL
//! divergence, top-1 agreement, size and speed.

use super::protocol::{Scores, Windows};
use super::size;
use crate::backend::gpu::DeviceChoice;
use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::model::forward::{open_forward_as, open_static_int8, Forward, InputMode};
use crate::model::{ModelView, Tokenizer};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Default window length, llama.cpp's usual `-c 512`.
pub const DEFAULT_CTX: usize = 512;

/// Characters of the text tokenized by every model's tokenizer to check
/// they all cut it the same way.
const TOKENIZER_PROBE_CHARS: usize = 4000;

/// What to evaluate and how. Build with [`EvalConfig::new`] and the setters.
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Models to evaluate (GGUF, Hugging Face or llmq), all on the same text.
    pub models: Vec<PathBuf>,
    /// UTF-8 text file.
    pub text: PathBuf,
    /// Model whose next-token distributions the others are compared with (KL, top-1).
    pub reference: Option<PathBuf>,
    /// Tokens per window.
    pub ctx: usize,
    /// Most windows to evaluate; `None` takes every whole window of the text.
    pub chunks: Option<usize>,
    pub device: DeviceChoice,
    /// Picks an adapter by case-insensitive name substring.
    pub adapter: Option<String>,
    /// Round every linear's input as llama.cpp's CPU backend does for the
    /// file's tensor types (scores a GGUF file as llama.cpp runs it; CPU).
    pub llama_cpp_activations: bool,
    /// Run the models (not the reference) with INT8 activations: every
    /// block linear must be 8-bit symmetric codes (CPU).
    pub int8_activations: bool,
    /// With `int8_activations`: static per-tensor input scales calibrated
    /// on a text instead of per-token ones.
    pub act_calib: Option<ActCalib>,
}

/// Static INT8 input scales: `calibrator` over the inputs of each linear
/// on the first `windows` windows of `text` (at the evaluation's context).
#[derive(Clone, Debug)]
pub struct ActCalib {
    pub calibrator: crate::quant::range::RangeCalibrator,
    pub text: PathBuf,
    pub windows: usize,
}

impl EvalConfig {
    pub fn new(models: Vec<PathBuf>, text: impl Into<PathBuf>) -> Self {
        Self {
            models,
            text: text.into(),
            reference: None,
            ctx: DEFAULT_CTX,
            chunks: None,
            device: DeviceChoice::Auto,
            adapter: None,
            llama_cpp_activations: false,
            int8_activations: false,
            act_calib: None,
        }
    }
    pub fn reference(mut self, path: Option<PathBuf>) -> Self {
        self.reference = path;
        self
    }
    pub fn ctx(mut self, ctx: usize) -> Self {
        self.ctx = ctx;
        self
    }
    pub fn chunks(mut self, chunks: Option<usize>) -> Self {
        self.chunks = chunks;
        self
    }
    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }
    pub fn adapter(mut self, name: Option<String>) -> Self {
        self.adapter = name;
        self
    }
    pub fn llama_cpp_activations(mut self, on: bool) -> Self {
        self.llama_cpp_activations = on;
        self
    }
    pub fn int8_activations(mut self, on: bool) -> Self {
        self.int8_activations = on;
        self
    }
    pub fn act_calib(mut self, c: Option<ActCalib>) -> Self {
        self.act_calib = c;
        self
    }
}

/// What an evaluation is doing, in order: `Loading` per model, `Started`,
/// then one `Chunk` per window.
#[derive(Clone, Debug)]
pub enum EvalProgress {
    Loading {
        model: PathBuf,
    },
    Started {
        /// Windows to evaluate.
        chunks: usize,
        ctx: usize,
        /// Tokens of the whole text.
        text_tokens: usize,
        device: String,
    },
    Chunk {
        /// 0-based index of the window just scored.
        index: usize,
        total: usize,
        /// Perplexity so far, per model in the order given.
        ppl: Vec<f64>,
    },
}

/// The result for one model.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub model: PathBuf,
    /// Short name for tables and charts (the file or folder name).
    pub name: String,
    /// `gguf`, `safetensors` or `llmq`.
    pub format: String,
    pub text: PathBuf,
    pub reference: Option<PathBuf>,
    /// `exp(mean NLL)` over the scored tokens.
    pub ppl: f64,
    /// `ppl · stderr(NLL)`, as llama.cpp prints it.
    pub ppl_stderr: f64,
    /// Mean NLL (nats per scored token).
    pub nll: f64,
    /// Mean `KL(P_ref ‖ P_model)` in nats; `None` without a reference.
    pub kld: Option<f64>,
    pub kld_stderr: Option<f64>,
    /// Share of scored positions whose argmax equals the reference's.
    pub top1_agreement: Option<f64>,
    pub top1_stderr: Option<f64>,
    /// Bytes of the weight files on disk.
    pub size_bytes: u64,
    /// Stored bits per weight of the decoder blocks' linear layers.
    pub bits_per_weight: f64,
    /// What those linears store ([`size::linear_storage`]).
    pub linears: size::LinearStorage,
    /// Tokens run through the model (scored and unscored) per second of its forward time.
    pub tokens_per_second: f64,
    pub device: String,
    pub ctx: usize,
    pub chunks: usize,
    /// Tokens run through the model: `chunks · ctx`.
    pub tokens_evaluated: usize,
    /// Tokens whose likelihood counts: `chunks · (ctx − 1 − ctx/2)`.
    pub tokens_scored: usize,
    /// Tokens of the whole text.
    pub text_tokens: usize,
    /// Whether the first token of each window was replaced by BOS.
    pub bos: bool,
    /// Seconds inside this model's forward passes.
    pub forward_seconds: f64,
    /// Wall time of the whole evaluation (loading, every model, scoring).
    pub seconds: f64,
}

/// Per-model totals of [`evaluate_forwards`].
#[derive(Clone, Debug, Default)]
pub struct ForwardScores {
    pub scores: Scores,
    /// Seconds spent in this model's `logits` calls.
    pub forward_seconds: f64,
}

/// Runs `models` (and `reference`, once per window) over the windows of
/// `tokens`, in lockstep, so no logits outlive their window.
/// `on_chunk(index, scores_so_far)` follows each window; `cancel` stops
/// between windows with [`Error::Cancelled`].
pub fn evaluate_forwards(
    models: &[&dyn Forward],
    reference: Option<&dyn Forward>,
    tokens: &[u32],
    windows: &Windows,
    on_chunk: &mut dyn FnMut(usize, &[ForwardScores]),
    cancel: &CancelToken,
) -> Result<Vec<ForwardScores>> {
    let Some(first) = models.first() else {
        return Err(Error::Config("no model to evaluate".into()));
    };
    let vocab = reference.unwrap_or(*first).arch().vocab_size;
    for (i, m) in models.iter().enumerate() {
        let v = m.arch().vocab_size;
        if v != vocab {
            let other = if reference.is_some() {
                "the reference".to_string()
            } else {
                "model 1".to_string()
            };
            return Err(Error::Config(format!(
                "model {} has a vocabulary of {v} tokens but {other} has {vocab}: \
                 models must share a vocabulary to be compared",
                i + 1
            )));
        }
    }
    let mut out = vec![ForwardScores::default(); models.len()];
    for index in 0..windows.chunks {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let window = windows.window(tokens, index)?;
        let ref_logits = reference.map(|r| r.logits(&window)).transpose()?;
        for (m, acc) in models.iter().zip(out.iter_mut()) {
            let t = Instant::now();
            let logits = m.logits(&window)?;
            acc.forward_seconds += t.elapsed().as_secs_f64();
            acc.scores
                .add_window(windows, &window, &logits, ref_logits.as_deref(), vocab)?;
        }
        on_chunk(index, &out);
    }
    Ok(out)
}

/// A model opened for evaluation: its view (for sizes and the tokenizer).
struct Opened {
    path: PathBuf,
    view: ModelView,
}

fn open(path: &Path) -> Result<Opened> {
    Ok(Opened {
        path: path.to_path_buf(),
        view: ModelView::open(path)?,
    })
}

/// Reads the evaluation text; a missing, unreadable or blank file is an error naming it.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::format(path, format!("the text is not UTF-8: {e}")))?;
    if text.trim().is_empty() {
        return Err(Error::format(path, "the text file is empty"));
    }
    Ok(text)
}

/// The first `n` characters of `text`.
fn prefix(text: &str, n: usize) -> &str {
    match text.char_indices().nth(n) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// Evaluates every model of `config` on its text. Models are checked
/// (vocabulary, context length, tokenizer) before any weights are loaded.
pub fn evaluate(
    config: &EvalConfig,
    on_progress: &mut dyn FnMut(EvalProgress),
    cancel: &CancelToken,
) -> Result<Vec<EvalReport>> {
    let start = Instant::now();
    if config.models.is_empty() {
        return Err(Error::Config("no model to evaluate: give --model".into()));
    }
    if config.chunks == Some(0) || config.ctx < super::protocol::MIN_CTX {
        // Same messages as the window planner, before anything is read.
        Windows::plan(usize::MAX, config.ctx, config.chunks, None)?;
    }
    let text = read_text(&config.text)?;
    let models = config
        .models
        .iter()
        .map(|p| open(p))
        .collect::<Result<Vec<_>>>()?;
    let reference = config.reference.as_deref().map(open).transpose()?;

    // The tokenizer of the reference (else the first model) cuts the text for all.
    let base = reference.as_ref().unwrap_or(&models[0]);
    let base_vocab = base.view.arch().vocab_size;
    for m in &models {
        let v = m.view.arch().vocab_size;
        if v != base_vocab {
            let role = if reference.is_some() {
                "reference"
            } else {
                "first model"
            };
            return Err(Error::Config(format!(
                "{} has a vocabulary of {v} tokens but the {role} {} has {base_vocab}: \
                 models with different vocabularies cannot be compared",
                m.path.display(),
                base.path.display()
            )));
        }
    }
    for m in models.iter().chain(reference.iter()) {
        let n = m.view.arch().context_length;
        if config.ctx > n {
            return Err(Error::Config(format!(
                "--ctx {} exceeds the context length {n} of {}",
                config.ctx,
                m.path.display()
            )));
        }
    }
    let tokenizer = Tokenizer::from_model(&base.view)?;
    let probe = prefix(&text, TOKENIZER_PROBE_CHARS);
    let probe_ids = tokenizer.encode(probe, false)?;
    for m in models.iter().filter(|m| m.path != base.path) {
        let ids = Tokenizer::from_model(&m.view)?.encode(probe, false)?;
        if ids != probe_ids {
            return Err(Error::Config(format!(
                "{} and {} tokenize the text differently: models must share a tokenizer to be compared",
                m.path.display(),
                base.path.display()
            )));
        }
    }
    let tokens = tokenizer.encode(&text, false)?;
    let bos = if tokenizer.add_bos_default() {
        Some(tokenizer.bos_id().ok_or_else(|| {
            Error::format(
                &base.path,
                "the tokenizer asks for BOS but names no BOS token",
            )
        })?)
    } else {
        None
    };
    let windows =
        Windows::plan(tokens.len(), config.ctx, config.chunks, bos).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", config.text.display())),
            other => other,
        })?;

    let mut sizes = Vec::with_capacity(models.len());
    for m in &models {
        sizes.push((size::size_on_disk(&m.path)?, size::linear_storage(&m.view)?));
    }
    let load = |p: &Path, reference: bool, on_progress: &mut dyn FnMut(EvalProgress)| {
        on_progress(EvalProgress::Loading {
            model: p.to_path_buf(),
        });
        let mode = match (config.llama_cpp_activations, config.int8_activations) {
            (true, _) => InputMode::LlamaCpp,
            (false, true) if !reference => InputMode::Int8,
            _ => InputMode::F32,
        };
        match (&config.act_calib, mode) {
            (Some(c), InputMode::Int8) => {
                if config.device != DeviceChoice::Cpu {
                    return Err(Error::Config(
                        "--act-calib observes the inputs on the CPU backend: add --device cpu (or \
                         calibrate once with quantize --act-bits 8, which runs anywhere)"
                            .into(),
                    ));
                }
                let (f, ranges) =
                    open_static_int8(p, &c.text, c.windows, config.ctx, c.calibrator)?;
                let clipped =
                    ranges.iter().map(|r| r.clipped).sum::<f64>() / ranges.len().max(1) as f64;
                log::info!(
                    "{}: {} static INT8 input ranges ({}), {:.4}% of calibration inputs clipped on average",
                    p.display(),
                    ranges.len(),
                    c.calibrator.label(),
                    100.0 * clipped
                );
                Ok(f)
            }
            _ => open_forward_as(p, config.device, config.adapter.as_deref(), mode),
        }
    };
    let ref_forward = match &reference {
        Some(r) => Some(load(&r.path, true, on_progress)?),
        None => None,
    };
    // A `--model` naming the reference's file shares its loaded weights
    // (it is still run as a model of its own).
    let same_file = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    let mut forwards: Vec<Option<Box<dyn Forward>>> = Vec::with_capacity(models.len());
    for m in &models {
        if cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let is_reference = reference
            .as_ref()
            .is_some_and(|r| same_file(&r.path, &m.path));
        forwards.push(match is_reference {
            true => None,
            false => Some(load(&m.path, false, on_progress)?),
        });
    }
    let refs: Vec<&dyn Forward> = forwards
        .iter()
        .filter_map(|f| f.as_deref().or(ref_forward.as_deref()))
        .collect();
    let devices: Vec<String> = refs.iter().map(|f| f.device()).collect();
    on_progress(EvalProgress::Started {
        chunks: windows.chunks,
        ctx: windows.ctx,
        text_tokens: tokens.len(),
        device: devices[0].clone(),
    });
    let results = evaluate_forwards(
        &refs,
        ref_forward.as_deref(),
        &tokens,
        &windows,
        &mut |index, so_far| {
            on_progress(EvalProgress::Chunk {
                index,
                total: windows.chunks,
                ppl: so_far.iter().map(|s| s.scores.ppl()).collect(),
            })
        },
        cancel,
    )?;

    let seconds = start.elapsed().as_secs_f64();
    let evaluated = windows.chunks * windows.ctx;
    let with_ref = reference.is_some();
    Ok(models
        .iter()
        .zip(results)
        .zip(sizes)
        .zip(devices)
        .map(|(((m, r), (size_bytes, linears)), device)| {
            let s = r.scores;
            let opt = |v: f64| with_ref.then_some(v);
            EvalReport {
                name: m.path.file_name().map_or_else(
                    || m.path.display().to_string(),
                    |n| n.to_string_lossy().into_owned(),
                ),
                model: m.path.clone(),
                format: m.view.format_name().to_string(),
                text: config.text.clone(),
                reference: config.reference.clone(),
                ppl: s.ppl(),
                ppl_stderr: s.ppl_stderr(),
                nll: s.nll.mean(),
                kld: opt(s.kld.mean()),
                kld_stderr: opt(s.kld.stderr()),
                top1_agreement: opt(s.top1.mean()),
                top1_stderr: opt(s.top1.stderr()),
                size_bytes,
                bits_per_weight: linears.bits_per_weight(),
                linears,
                tokens_per_second: if r.forward_seconds > 0.0 {
                    evaluated as f64 / r.forward_seconds
                } else {
                    0.0
                },
                device,
                ctx: windows.ctx,
                chunks: windows.chunks,
                tokens_evaluated: evaluated,
                tokens_scored: windows.chunks * windows.scored_per_chunk(),
                text_tokens: tokens.len(),
                bos: bos.is_some(),
                forward_seconds: r.forward_seconds,
                seconds,
            }
        })
        .collect())
}
