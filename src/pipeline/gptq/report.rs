//! What a GPTQ run measured: time and FLOPs by phase, and each linear's
//! error against RTN's. Written as `gptq-report.json` next to the output.

use crate::pipeline::calib::CalibConfig;
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Instant;

/// Seconds and FLOPs of one phase.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Phase {
    pub seconds: f64,
    pub flops: f64,
}

impl Phase {
    pub(super) fn add(&mut self, seconds: f64, flops: f64) {
        self.seconds += seconds;
        self.flops += flops;
    }
    pub(super) fn time<T>(&mut self, flops: f64, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(t.elapsed().as_secs_f64(), flops);
        out
    }
}

/// Where the time went. FLOPs count multiply-adds as 2: the calibration
/// forward's linears and attention (full QKᵀ and PV squares), the Hessians
/// as symmetric rank-k updates (`tokens·cols·(cols+1)`), the
/// factorisations (`2/3·cols³` per Hessian, [`crate::quant::gptq::flops`]),
/// the GPTQ column updates, and the
/// error report (three `tr(A H Aᵀ)` per linear, RTN included).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Phases {
    pub forward: Phase,
    pub hessian: Phase,
    pub factor: Phase,
    /// The column loop (GPTQ's updates; GPTVQ's assignment and updates).
    pub update: Phase,
    pub report: Phase,
    /// GPTVQ: the codebooks' EM (E-step `3·d·k` FLOPs per point and
    /// iteration, M-step `4·d`).
    pub em: Phase,
    /// GPTVQ: the codebook update (one `2·rows·cols²` GEMM per step).
    pub codebook: Phase,
}

impl Phases {
    pub fn total(&self) -> Phase {
        let all = [
            self.forward,
            self.hessian,
            self.factor,
            self.update,
            self.report,
            self.em,
            self.codebook,
        ];
        Phase {
            seconds: all.iter().map(|p| p.seconds).sum(),
            flops: all.iter().map(|p| p.flops).sum(),
        }
    }
    pub(super) fn merge(&mut self, o: &Phases) {
        for (a, b) in [
            (&mut self.forward, o.forward),
            (&mut self.hessian, o.hessian),
            (&mut self.factor, o.factor),
            (&mut self.update, o.update),
            (&mut self.report, o.report),
            (&mut self.em, o.em),
            (&mut self.codebook, o.codebook),
        ] {
            a.add(b.seconds, b.flops);
        }
    }
}

/// One quantized linear.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearReport {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// ‖WX − ŴX‖²/‖WX‖² on the calibration inputs, of the tensor written
    /// (GPTQ's, or with [`super::Solver::RtnSearch`] the searched RTN's)
    /// and of plain RTN.
    #[serde(deserialize_with = "nan_if_null")]
    pub gptq_error: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub rtn_error: f64,
    /// GPTVQ runs: the error of GPTQ at the pipeline's affine scheme (same
    /// factored Hessian, natural column order, scale search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gptq_baseline_error: Option<f64>,
    /// The same on the held-out calibration windows (not in the Hessian
    /// GPTQ fitted): overfitting shows as a held-out GPTQ error far above
    /// the fitted one, or above RTN's. `None` without held-out windows.
    pub held_out_gptq_error: Option<f64>,
    pub held_out_rtn_error: Option<f64>,
    pub damp_used: f64,
    pub damp_retries: u32,
    pub dead_columns: usize,
    /// GPTQ column updates (the shared factorisation is in the phases).
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerReport {
    pub layer: usize,
    pub seconds: f64,
    pub phases: Phases,
    pub linears: Vec<LinearReport>,
}

/// Everything a GPTQ run measured; written as JSON next to the output.
#[derive(Clone, Debug, Serialize)]
pub struct GptqRunReport {
    pub calib: CalibConfig,
    pub solver: super::Solver,
    /// Group parameters by the weighted scale search.
    pub scale_search: bool,
    /// `λ` of `H ← (1−λ)·H + λ·diag(H)`.
    pub diag_blend: f64,
    /// Tokens in the calibration text.
    pub calib_text_tokens: usize,
    pub damp: f64,
    pub block: usize,
    pub act_order: bool,
    /// Windows per stage chunk, and whether the MLP activations were kept.
    pub chunk_windows: usize,
    pub stored_mlp_activations: bool,
    pub layers: Vec<LayerReport>,
    pub head: Option<LinearReport>,
    pub phases: Phases,
    /// Seconds this run spent writing (and, resumed, reading) its
    /// checkpoint ([`crate::pipeline::checkpoint`]).
    pub checkpoint_seconds: f64,
    /// Layers read back from the checkpoint of a stopped run (0: none).
    pub resumed_layers: usize,
    pub seconds: f64,
    /// Peak resident host memory of the process during the run (Linux).
    pub peak_host_bytes: Option<u64>,
    /// Peak bytes of GPU buffers alive at once (GPU backend).
    pub peak_gpu_bytes: Option<u64>,
    /// Bytes copied host → GPU and GPU → host during the run (GPU backend).
    pub gpu_transfer_bytes: Option<(u64, u64)>,
    /// The model's weights as f32, for comparison with the peaks.
    pub model_f32_bytes: u64,
    /// Linears whose GPTQ error is not below RTN's.
    pub linears_not_better_than_rtn: Vec<String>,
    /// Calibration windows held out of the Hessians (scored only).
    pub holdout_windows: usize,
    /// Linears whose GPTQ error on the held-out windows is not below RTN's.
    pub linears_not_better_than_rtn_held_out: Vec<String>,
}

/// JSON has no NaN (serde_json writes it as null): read null back as NaN
/// (a layer report stored in a checkpoint).
fn nan_if_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}
