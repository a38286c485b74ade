//! What a quantization run reports: [`Progress`] while it runs, a
//! [`QuantizeReport`] when it is done.

use super::activations::ActQuantReport;
use super::gptq::GptqRunReport;
use super::quantize::Method;
use crate::encoding::LinearStorage;
use serde::Serialize;
use std::path::PathBuf;

/// What a run is doing, in order: `Started`, then per tensor `Tensor`, then
/// `Writing`, then the run returns its report.
#[derive(Clone, Debug)]
pub enum Progress {
    Started {
        tensors: usize,
        backend: String,
    },
    Tensor {
        /// 0-based index of the tensor just finished.
        index: usize,
        total: usize,
        name: String,
        quantized: bool,
    },
    /// GPTQ: the calibration windows are embedded.
    Calibrated {
        tokens: usize,
        layers: usize,
    },
    /// GPTQ: decoder layer `index` is quantized; `gptq_error` and
    /// `rtn_error` are its linears' mean relative output errors.
    Layer {
        /// Read back from the checkpoint of a stopped run (`--resume`).
        replayed: bool,
        index: usize,
        total: usize,
        gptq_error: f64,
        rtn_error: f64,
        /// GPTVQ: the mean error of GPTQ at the baseline scheme.
        gptq_baseline_error: Option<f64>,
        seconds: f64,
    },
    /// A stopped run goes on from `checkpoint`, which holds `layers` of
    /// `total` layers (they follow as replayed `Layer`s).
    Resumed {
        layers: usize,
        total: usize,
        checkpoint: PathBuf,
    },
    /// W8A8: SmoothQuant (before the weights), then the input ranges
    /// (after them), over `windows` calibration windows.
    Activations {
        what: &'static str,
        windows: usize,
    },
    Writing,
}

/// Reconstruction error of one kind of tensor, averaged over its tensors.
#[derive(Clone, Debug, Serialize)]
pub struct KindError {
    pub kind: String,
    pub tensors: usize,
    /// Mean of ‖W − Ŵ‖ / ‖W‖ (Frobenius) over the tensors of this kind.
    pub mean_relative_error: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct QuantizeReport {
    pub model: PathBuf,
    pub out: PathBuf,
    pub method: Method,
    pub scheme: String,
    pub backend: String,
    pub quantized_tensors: usize,
    /// Quantized tensors whose rows end in a shorter group.
    pub ragged_group_tensors: usize,
    pub kept_tensors: usize,
    /// Size of the source file(s) on disk.
    pub source_bytes: u64,
    /// The same parameters at 16 bits each.
    pub f16_bytes: u64,
    /// Tensor bytes of the output.
    pub output_bytes: u64,
    /// Stored bits (codes + scales + zeros) per weight of the quantized tensors.
    pub bits_per_weight: f64,
    /// What the decoder blocks' linears store (the figure `inspect`,
    /// `eval` and `bench --model` give for the output).
    pub linears: LinearStorage,
    pub errors_by_kind: Vec<KindError>,
    pub seconds: f64,
    /// GPTQ runs: per-layer errors against RTN, phases, peak memory. Also
    /// written to `gptq-report.json` in the output folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gptq: Option<GptqRunReport>,
    /// W8A8 runs: smoothing and each linear's input range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations: Option<ActQuantReport>,
}
