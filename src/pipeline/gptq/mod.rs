//! Sequential GPTQ over a whole model, one decoder layer at a time
//! (GPTQ's `llama_sequential` with `true_sequential`):
//!
//! 1. calibration windows are embedded: the hidden state of every window
//!    `[samples·len, hidden]` is the only activation kept across layers;
//! 2. per layer, its weights alone are loaded and it is run stage by stage,
//!    each stage fed by the already-quantized stages before it:
//!    q/k/v (one Hessian of the normed input), o (Hessian of the attention
//!    output), gate/up (one Hessian), down (Hessian of `silu(gate)·up`);
//!    the layer's quantized output becomes the next layer's input;
//! 3. with `quantize_output_head`, the head gets GPTQ on the final normed
//!    hidden state.
//!
//! Activations go through in chunks of whole windows, so host memory holds
//! one layer's weights, the hidden state, one hidden-sized stage buffer and
//! (when under [`GptqSettings::activation_budget`]) the MLP activations; the
//! GPU holds only the buffers of the kernels running (a Hessian being
//! accumulated, a weight under GPTQ). Hessians, GPTQ updates, the
//! quantized linears of the stage forward and attention run on the
//! backend; norms and RoPE on the CPU.
//!
//! Every quantized linear is also quantized with RTN at the same settings
//! and both are scored by the relative output error ‖WX − ŴX‖²/‖WX‖² on the
//! calibration inputs (exact from the Hessian: `tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)`).
//!
//! Files: this one (settings, the run, the calibration embeddings),
//! `layer.rs` (one decoder layer run and quantized stage by stage),
//! `vq.rs` (a linear under GPTVQ),
//! `report.rs` (what the run measured).

mod ggml;
mod layer;
mod report;
mod vq;

pub use report::{GptqRunReport, LayerReport, LinearReport, Phase, Phases};

use super::calib::{load_windows, CalibConfig, CalibWindows};
use super::checkpoint::Checkpoint;
use super::memory;
use crate::backend::Backend;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::model::forward;
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelView;
use crate::quant::gptq::GptqOptions;
use crate::quant::gptvq::GptvqOptions;
use crate::quant::QuantScheme;
use layer::LayerRunner;
use serde::Serialize;
use std::time::Instant;

/// What the sequential pipeline writes for each linear.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Solver {
    /// GPTQ (error feedback over the full Hessian).
    Gptq,
    /// RTN whose group parameters come from the `diag(H)`-weighted scale
    /// search (llama.cpp's imatrix idea): the calibration inputs only weigh
    /// each column by its `Σx²`.
    RtnSearch,
    /// GPTVQ's codebooks ([`crate::quant::gptvq`]); the pipeline's affine
    /// scheme is the baseline it is scored against (RTN, and GPTQ in
    /// natural column order on the same factored Hessian).
    Gptvq(GptvqOptions),
}

impl Solver {
    /// How the report and the command line name it.
    pub fn label(&self) -> &'static str {
        match self {
            Solver::Gptq => "GPTQ",
            Solver::RtnSearch => "RTN+search",
            Solver::Gptvq(_) => "GPTVQ",
        }
    }
}

/// GPTQ settings beyond the quantization scheme.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqSettings {
    pub calib: CalibConfig,
    pub options: GptqOptions,
    pub solver: Solver,
    /// Bytes of transient activations per chunk of windows (sets how many
    /// windows go through a stage at once).
    pub chunk_budget: usize,
    /// Keep `silu(gate)·up` of all windows between the down Hessian and the
    /// down projection when it fits in this many bytes; recompute it
    /// otherwise (the gate and up projections again: a third more forward
    /// FLOPs). Default: a quarter of the available memory, 1 to 16 GiB.
    pub activation_budget: usize,
    /// Calibration windows drawn after `calib.samples` and held out of the
    /// Hessians: the report scores GPTQ and RTN on them too, so overfitting
    /// to the fitted windows shows. The fitted windows (and so the result)
    /// are the same whatever this is. Default: `samples / 16`, at least 1.
    pub holdout: usize,
    /// GPTVQ: also run GPTQ at the pipeline's affine scheme (natural
    /// column order, same factored Hessian) on every linear, for the
    /// report's comparison (its time counts with the report phase).
    pub gptq_baseline: bool,
    /// Linears (by tensor name) rounded onto a ggml block type instead of
    /// the pipeline's scheme, for a GGUF file (`formats::gguf::export`
    /// chooses them as llama.cpp's mix does); scored against llama.cpp's
    /// reference rounding of that type.
    pub ggml_types: std::collections::BTreeMap<String, crate::encoding::ggml::GgmlType>,
}

impl GptqSettings {
    pub fn new(calib: CalibConfig) -> Self {
        Self {
            holdout: (calib.windows() / 16).max(1),
            calib,
            options: GptqOptions::recommended(),
            solver: Solver::Gptq,
            gptq_baseline: true,
            ggml_types: Default::default(),
            chunk_budget: 256 << 20,
            activation_budget: memory::available_bytes()
                .map_or(1 << 30, |a| (a / 4).clamp(1 << 30, 16 << 30))
                as usize,
        }
    }
}

/// What the pipeline tells its caller as it goes.
pub enum GptqEvent<'a> {
    /// The calibration windows are embedded; `layers` follow.
    Calibrated { tokens: usize, layers: usize },
    /// A linear is quantized: write it. `w` is its original weight.
    Tensor {
        name: &'a str,
        shape: [usize; 2],
        q: &'a EncodedTensor,
        w: &'a [f32],
    },
    /// Layer `index` is done (`replayed`: read back from the checkpoint).
    Layer {
        index: usize,
        report: &'a LayerReport,
        replayed: bool,
    },
    /// The run goes on from a checkpoint holding `layers` finished layers
    /// (their tensors and `Layer` events follow, replayed).
    Resumed { layers: usize },
}

/// Runs sequential GPTQ on `view`. Quantized tensors are handed to `on_event`
/// as soon as they exist (nothing else is held), `cancelled` is polled
/// between linears. With a `checkpoint`, each finished layer is stored in
/// it, and the layers it already holds are replayed, not computed.
#[allow(clippy::too_many_arguments)]
pub fn run(
    backend: &dyn Backend,
    view: &ModelView,
    scheme: &QuantScheme,
    settings: &GptqSettings,
    quantize_head: bool,
    on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
    cancelled: &dyn Fn() -> bool,
    mut checkpoint: Option<&mut Checkpoint>,
) -> Result<GptqRunReport> {
    let start = Instant::now();
    memory::reset_host_peak();
    backend.reset_memory_peak();
    let transfers_before = backend.transfer_bytes();
    let arch = view.arch().clone();
    let tokenizer = Tokenizer::from_model(view)?;
    // The held-out windows follow the fitted ones, which do not depend on
    // how many follow.
    let fitted = settings.calib.windows();
    let windows = match checkpoint.as_ref().map(|c| c.windows()).transpose()? {
        Some(Some(w)) => w,
        _ => {
            let w = load_windows(&settings.calib, settings.holdout, &tokenizer, view)?;
            if let Some(c) = checkpoint.as_deref_mut() {
                c.save_windows(&w)?;
            }
            w
        }
    };
    let done = checkpoint.as_ref().map_or(0, |c| c.layers_done());
    let mut hidden = match (done, &checkpoint) {
        (1.., Some(c)) => c.hidden(windows.tokens.len() * arch.hidden_size)?,
        _ => embed_windows(view, &windows)?,
    };
    let check = |what: &str| -> Result<()> {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        log::debug!("{what}");
        Ok(())
    };

    let (h, f) = (arch.hidden_size, arch.intermediate_size);
    let widest = f.max(h) + 2 * f;
    let chunk = (settings.chunk_budget / (windows.len * widest * 4)).clamp(1, fitted);
    let store_mlp = windows.samples * windows.len * f * 4 <= settings.activation_budget;
    let rope_inv = forward::rope_inv_freq(&arch, forward::load_rope_freq_factors(view)?.as_deref());
    // Codebooks span contiguous columns: GPTVQ factors H in natural order.
    let opts = match settings.solver {
        Solver::Gptvq(_) => GptqOptions {
            act_order: false,
            ..settings.options
        },
        _ => settings.options,
    };
    let mut runner = LayerRunner {
        backend,
        view,
        arch: &arch,
        scheme,
        opts: &opts,
        solver: settings.solver,
        rope_inv: &rope_inv,
        seq: windows.len,
        chunk,
        fit_rows: fitted * windows.len,
        store_mlp,
        gptq_baseline: settings.gptq_baseline,
        ggml_types: &settings.ggml_types,
        phases: Phases::default(),
    };
    on_event(GptqEvent::Calibrated {
        tokens: windows.tokens.len(),
        layers: arch.num_layers,
    })?;

    let mut layers = Vec::with_capacity(arch.num_layers);
    let mut phases = Phases::default();
    let mut checkpoint_seconds = 0.0;
    if let (1.., Some(c)) = (done, &checkpoint) {
        on_event(GptqEvent::Resumed { layers: done })?;
        for i in 0..done.min(arch.num_layers) {
            let t = Instant::now();
            let report = c.replay_layer(i, view, on_event)?;
            checkpoint_seconds += t.elapsed().as_secs_f64();
            layer_done(report, true, &mut phases, &mut layers, on_event)?;
        }
    }
    for i in done..arch.num_layers {
        check(&format!("layer {i}"))?;
        let t = Instant::now();
        runner.phases = Phases::default();
        let linears = match checkpoint.as_deref_mut() {
            Some(c) => {
                c.begin_layer(i)?;
                let mut stored = |e: GptqEvent| {
                    if let GptqEvent::Tensor { name, shape, q, .. } = &e {
                        let t = Instant::now();
                        c.add_tensor(name, *shape, q)?;
                        checkpoint_seconds += t.elapsed().as_secs_f64();
                    }
                    on_event(e)
                };
                runner.layer(i, &mut hidden, &mut stored, &check)?
            }
            None => runner.layer(i, &mut hidden, on_event, &check)?,
        };
        let report = LayerReport {
            layer: i,
            seconds: t.elapsed().as_secs_f64(),
            phases: runner.phases,
            linears,
        };
        if let Some(c) = checkpoint.as_deref_mut() {
            let t = Instant::now();
            c.end_layer(view, &report, &hidden)?;
            checkpoint_seconds += t.elapsed().as_secs_f64();
        }
        layer_done(report, false, &mut phases, &mut layers, on_event)?;
    }

    let head = match (quantize_head, forward::load_head(view)?) {
        (true, Some(head)) => {
            check("output head")?;
            runner.phases = Phases::default();
            let report = runner.head(&head, &hidden, on_event)?;
            phases.merge(&runner.phases);
            Some(report)
        }
        _ => None,
    };
    let not_better = layers
        .iter()
        .flat_map(|l| &l.linears)
        .chain(&head)
        .filter(|l| l.gptq_error >= l.rtn_error)
        .map(|l| l.name.clone())
        .collect();
    let held_out_worse = layers_held_out_worse(&layers, &head);
    Ok(GptqRunReport {
        calib: settings.calib.clone(),
        calib_text_tokens: windows.text_tokens,
        solver: settings.solver,
        scale_search: match settings.solver {
            Solver::Gptq => settings.options.scale_search,
            Solver::RtnSearch => true,
            Solver::Gptvq(_) => false,
        },
        // RTN's search reads diag(H) only.
        diag_blend: match settings.solver {
            Solver::RtnSearch => 0.0,
            _ => settings.options.diag_blend,
        },
        damp: settings.options.damp,
        block: settings.options.block,
        act_order: opts.act_order,
        chunk_windows: chunk,
        stored_mlp_activations: store_mlp,
        layers,
        head,
        phases,
        checkpoint_seconds,
        resumed_layers: done,
        seconds: start.elapsed().as_secs_f64(),
        peak_host_bytes: memory::host_peak_bytes(),
        peak_gpu_bytes: backend.memory_peak(),
        gpu_transfer_bytes: transfer_since(backend, transfers_before),
        model_f32_bytes: view.tensors().iter().map(|t| t.numel() as u64 * 4).sum(),
        linears_not_better_than_rtn: not_better,
        holdout_windows: settings.holdout,
        linears_not_better_than_rtn_held_out: held_out_worse,
    })
}

/// A layer computed or replayed: counted, announced, kept for the report.
fn layer_done(
    report: LayerReport,
    replayed: bool,
    phases: &mut Phases,
    layers: &mut Vec<LayerReport>,
    on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
) -> Result<()> {
    phases.merge(&report.phases);
    on_event(GptqEvent::Layer {
        index: report.layer,
        report: &report,
        replayed,
    })?;
    layers.push(report);
    Ok(())
}

/// Linears whose GPTQ error on the held-out windows is not below RTN's.
fn layers_held_out_worse(layers: &[LayerReport], head: &Option<LinearReport>) -> Vec<String> {
    layers
        .iter()
        .flat_map(|l| &l.linears)
        .chain(head)
        .filter(|l| match (l.held_out_gptq_error, l.held_out_rtn_error) {
            (Some(g), Some(r)) => g >= r,
            _ => false,
        })
        .map(|l| l.name.clone())
        .collect()
}

/// Host ↔ device bytes since `before` (a [`Backend::transfer_bytes`] reading).
pub fn transfer_since(backend: &dyn Backend, before: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let (now, before) = (backend.transfer_bytes()?, before.unwrap_or((0, 0)));
    Some((
        now.0.saturating_sub(before.0),
        now.1.saturating_sub(before.1),
    ))
}

/// The embeddings of the calibration tokens, `[samples·len, hidden]`; the
/// embedding matrix is dropped afterwards.
fn embed_windows(view: &ModelView, windows: &CalibWindows) -> Result<Vec<f32>> {
    let a = view.arch();
    let h = a.hidden_size;
    let name = forward::global_tensor_name(view, "embed");
    let embed = view.load_f32(&name)?;
    if embed.len() != a.vocab_size * h {
        return Err(Error::format(
            view.path(),
            format!(
                "'{name}' has {} values, the config implies [{}, {h}]",
                embed.len(),
                a.vocab_size
            ),
        ));
    }
    let mut out = Vec::with_capacity(windows.tokens.len() * h);
    for &t in &windows.tokens {
        let t = t as usize;
        if t >= a.vocab_size {
            return Err(Error::Config(format!(
                "calibration token id {t} is outside the model's vocabulary ({} ids); \
                 the tokenizer does not match the weights",
                a.vocab_size
            )));
        }
        out.extend_from_slice(&embed[t * h..(t + 1) * h]);
    }
    Ok(out)
}
