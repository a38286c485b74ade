//! W8A8 in `quantize` (`--act-bits 8`): optionally SmoothQuant before the
//! weights are quantized ([`crate::quant::smooth`], its factors from the
//! unsmoothed model on the calibration windows), then, once the weights
//! are written to the staging folder, each block linear's static INT8
//! input scale calibrated on the quantized model itself (so the ranges are
//! those of the inputs it will really see) with any
//! [`RangeCalibrator`], and stored in `llmq.json` beside the weight;
//! `--act-dynamic` stores per-token scales instead. Models written so run
//! W8A8 in `eval`, `generate` and `bench --model` with no flag.

use super::calib::{load_windows, CalibConfig, CalibSource};
use crate::encoding::act8::{self, InputQuant};
use crate::encoding::QuantScheme;
use crate::error::{Error, Result};
use crate::formats::llmq::StagedLlmq;
use crate::model::forward::int8::InputRange;
use crate::model::forward::LlamaWeights;
use crate::model::{ModelView, Tokenizer};
use crate::quant::range::RangeCalibrator;
use crate::quant::smooth::{self, SiteSmoothing, SmoothedSource, Smoothing};
use serde::Serialize;

/// How `quantize` quantizes the activations.
#[derive(Clone, Debug, PartialEq)]
pub struct ActQuantSettings {
    /// Per-token scales at run time instead of static calibrated ones.
    pub dynamic: bool,
    pub calibrator: RangeCalibrator,
    /// Calibration windows (drawn from the run's calibration sources, in
    /// their mix) that smoothing and the ranges see.
    pub samples: usize,
    /// SmoothQuant's migration strength α.
    pub smooth: Option<f32>,
}

impl ActQuantSettings {
    /// 8-bit activations (the only width the integer kernels take),
    /// static, calibrated by `calibrator` on 16 windows, no smoothing.
    pub fn new(bits: u32, calibrator: RangeCalibrator) -> Result<Self> {
        if bits != 8 {
            return Err(Error::Config(format!(
                "--act-bits {bits}: activations quantize to 8 bits only (the INT8 x INT8 \
                 kernels); leave it out for f32 activations"
            )));
        }
        Ok(Self {
            dynamic: false,
            calibrator,
            samples: 16,
            smooth: None,
        })
    }

    pub fn label(&self) -> String {
        let mut s = match self.dynamic {
            true => "A8 per token".to_string(),
            false => format!("A8 static {}", self.calibrator.label()),
        };
        if let Some(a) = self.smooth {
            s += &format!(", SmoothQuant α {a}");
        }
        s
    }

    /// Refuses, before any work, what cannot be written: weights the
    /// integer matmul cannot take, static scales or smoothing without
    /// calibration text.
    pub fn check(&self, scheme: &QuantScheme, calib: Option<&CalibConfig>) -> Result<()> {
        // The bits and group size alone, on a width every group fits; each
        // tensor's own width is checked as the plan is made.
        self.check_width(scheme, 1024)?;
        if let Some(a) = self.smooth {
            if !(0.0..=1.0).contains(&a) {
                return Err(Error::Config(format!(
                    "--smooth {a}: the migration strength must be between 0 and 1"
                )));
            }
        }
        if calib.is_none() && (!self.dynamic || self.smooth.is_some()) {
            return Err(Error::Config(
                "static INT8 activation scales and --smooth are calibrated on text: give --calib \
                 FILE, or use --act-dynamic without --smooth"
                    .into(),
            ));
        }
        if self.samples == 0 {
            return Err(Error::Config(
                "--act-calib-samples must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Refuses weights of `scheme` over `cols` inputs that the INT8 matmul
    /// cannot take.
    pub fn check_width(&self, scheme: &QuantScheme, cols: usize) -> Result<()> {
        act8::check_i8_scheme(scheme, cols, cols)
            .map(|_| ())
            .map_err(|_| {
                Error::Config(format!(
                    "--act-bits 8 multiplies INT8 activations with 8-bit symmetric weights in \
                     groups of a multiple of 4, or 4-bit weights in groups of a multiple of 8 \
                     (W4A8); {} over {cols} inputs is not (use --bits 8 --sym, or --bits 4)",
                    scheme.label()
                ))
            })
    }
}

/// What `quantize` did to the activations, in its report.
#[derive(Clone, Debug, Serialize)]
pub struct ActQuantReport {
    pub setting: String,
    pub windows: usize,
    /// Per smoothed site: the factors' range and the outlier ratio before
    /// and after.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub smoothing: Vec<SiteSmoothing>,
    /// Per block linear: the threshold and clipped share (static only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<InputRange>,
}

/// `n` windows in the mix of `calib`: its text windows and generated ones
/// scaled down alike (at least one).
pub fn windows(view: &ModelView, calib: &CalibConfig, n: usize) -> Result<Vec<Vec<u32>>> {
    let total = calib.windows().max(1);
    let n = n.clamp(1, total);
    let has_text = calib
        .sources
        .iter()
        .any(|s| matches!(s, CalibSource::Text { .. }));
    let text = match has_text {
        true => ((calib.samples * n) as f64 / total as f64).round() as usize,
        false => 0,
    };
    let mut c = calib.clone();
    c.samples = text;
    let mut generated = n - text.min(n);
    c.sources.retain_mut(|s| match s {
        CalibSource::Text { .. } => true,
        CalibSource::Model { windows } => {
            *windows = std::mem::take(&mut generated);
            *windows > 0
        }
    });
    let tokenizer = Tokenizer::from_model(view)?;
    let w = load_windows(&c, 0, &tokenizer, view)?;
    Ok(w.tokens.chunks_exact(w.len).map(<[u32]>::to_vec).collect())
}

/// The model the weights are quantized from: `view` itself, or smoothed
/// (`settings.smooth`) with the factors from `windows`.
pub fn prepare(
    view: ModelView,
    settings: &ActQuantSettings,
    windows: &[Vec<u32>],
    cancelled: &dyn Fn() -> bool,
) -> Result<(ModelView, Vec<SiteSmoothing>)> {
    let Some(alpha) = settings.smooth else {
        return Ok((view, Vec::new()));
    };
    let len = windows.first().map_or(1, Vec::len);
    let max = smooth::channel_max(&view, &windows.concat(), len, cancelled)?;
    let plan = Smoothing::plan(&view, &max, alpha)?;
    log::info!(
        "SmoothQuant α {alpha}: {} tensors rescaled over {} windows",
        plan.tensors(),
        windows.len()
    );
    let sites = plan.sites.clone();
    Ok((
        ModelView::from_source(Box::new(SmoothedSource::new(view, plan))),
        sites,
    ))
}

/// Calibrates (static) or marks (dynamic) the INT8 input of every block
/// linear of the staged folder and records it there with `report` (which
/// gets the activation report too).
pub fn finish(
    staged: &mut StagedLlmq,
    settings: &ActQuantSettings,
    windows: &[Vec<u32>],
    smoothing: Vec<SiteSmoothing>,
    report: &mut super::quantize::QuantizeReport,
) -> Result<()> {
    let view = ModelView::open(staged.path())?;
    let weights = LlamaWeights::load(&view)?;
    let (inputs, ranges) = match settings.dynamic {
        true => {
            let mut names = Vec::new();
            let mut w = weights.with_int8_activations(&view)?;
            w.map_block_linears(&view, |name, l| {
                names.push(name.to_string());
                Ok(l)
            })?;
            let dynamic = InputQuant {
                bits: 8,
                scale: None,
            };
            (
                names.into_iter().map(|n| (n, dynamic)).collect(),
                Vec::new(),
            )
        }
        false => {
            let (_, ranges) =
                weights.with_static_int8_activations(&view, windows, settings.calibrator)?;
            let inputs: Vec<(String, InputQuant)> = ranges
                .iter()
                .map(|r| {
                    let scale = (r.threshold > 0.0).then_some(r.threshold / act8::QMAX);
                    (r.tensor.clone(), InputQuant { bits: 8, scale })
                })
                .collect();
            (inputs, ranges)
        }
    };
    report.activations = Some(ActQuantReport {
        setting: settings.label(),
        windows: if settings.dynamic && settings.smooth.is_none() {
            0
        } else {
            windows.len()
        },
        smoothing,
        ranges,
    });
    let json = serde_json::to_value(&*report)
        .map_err(|e| Error::Config(format!("cannot serialize the report: {e}")))?;
    staged.set_inputs(&inputs, json)
}
