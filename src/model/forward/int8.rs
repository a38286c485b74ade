//! Running a model with INT8 activations (`eval --int8-activations`): every
//! block linear stored as 8-bit symmetric codes, or as 4-bit codes (W4A8),
//! takes its input quantized per token to INT8 and multiplies in integers
//! ([`crate::encoding::act8`]); the output head stays f32, as W8A8
//! deployments keep it. On the GPU the same weights run through
//! `shaders/quantize_i8.wgsl` and `shaders/matmul_i8.wgsl`. Models written
//! by `quantize --act-bits 8` carry their scales
//! ([`LlamaWeights::with_stored_inputs`]); static calibration from `eval`
//! observes the inputs on the CPU.

use super::linear::Linear;
use super::LlamaWeights;
use crate::encoding::act8;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::model::view::ModelView;
use crate::quant::range::{clipped_share, AbsHistogram, RangeCalibrator, DEFAULT_BINS};
use std::sync::{Arc, Mutex};

/// How the forward pass feeds each linear's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InputMode {
    /// f32, as computed.
    #[default]
    F32,
    /// Rounded as llama.cpp's CPU backend rounds it for the tensor type
    /// ([`LlamaWeights::with_llama_cpp_activations`]).
    LlamaCpp,
    /// INT8 per token, integer matmul ([`LlamaWeights::with_int8_activations`]).
    Int8,
}

impl LlamaWeights {
    /// Every block linear as [`Linear::Int8Input`]: an error naming the
    /// first that is not stored as codes the INT8 matmul takes
    /// ([`act8::check_i8_scheme`]: `--bits 8 --sym`, or `--bits 4`).
    pub fn with_int8_activations(mut self, view: &ModelView) -> Result<Self> {
        self.map_block_linears(view, |name, l| match l {
            // Stored W8A8: its own scales stay.
            Linear::Int8Input(..) => Ok(l),
            Linear::Packed(EncodedTensor::Affine(q))
                if act8::check_i8_scheme(&q.scheme, q.cols, q.cols).is_ok() =>
            {
                Ok(Linear::Int8Input(q, None))
            }
            other => Err(Error::Config(format!(
                "--int8-activations multiplies INT8 activations with 8-bit symmetric or 4-bit \
                 weights; '{name}' in {} is {} (quantize with --bits 8 --sym, or --bits 4)",
                view.path().display(),
                match &other {
                    Linear::Packed(e) => e.encoding().label(),
                    _ => "not quantized".into(),
                }
            ))),
        })?;
        Ok(self)
    }
}

impl LlamaWeights {
    /// The linears that `view` stores with INT8 inputs (W8A8 models written
    /// by `quantize --act-bits 8`) as [`Linear::Int8Input`] with their
    /// scales; unchanged for every other model.
    pub(super) fn with_stored_inputs(mut self, view: &ModelView) -> Result<Self> {
        let stored = |name: &str| view.input_quant(name);
        if !view.tensors().iter().any(|t| stored(&t.name).is_some()) {
            return Ok(self);
        }
        self.map_block_linears(view, |name, l| {
            let Some(input) = stored(name) else {
                return Ok(l);
            };
            input.check(name)?;
            match l {
                Linear::Packed(EncodedTensor::Affine(q))
                    if act8::check_i8_scheme(&q.scheme, q.cols, q.cols).is_ok() =>
                {
                    Ok(Linear::Int8Input(q, input.scale))
                }
                _ => Err(Error::format(
                    view.path(),
                    format!(
                        "'{name}' has INT8 inputs but is not stored as 8-bit symmetric or 4-bit \
                         codes"
                    ),
                )),
            }
        })?;
        Ok(self)
    }
}

/// One linear's calibrated INT8 input range.
#[derive(Clone, Debug, serde::Serialize)]
pub struct InputRange {
    pub tensor: String,
    /// The clipping threshold; 0 for an input that was always 0 (it runs
    /// with per-token scales).
    pub threshold: f32,
    /// Share of the calibration inputs above it.
    pub clipped: f64,
}

impl LlamaWeights {
    /// [`LlamaWeights::with_int8_activations`] with one static scale per
    /// linear input: the model runs with f32 activations over `windows`,
    /// each block linear's inputs gathered into a histogram, and
    /// `calibrator` picks the threshold (`scale = T / 127`).
    pub fn with_static_int8_activations(
        self,
        view: &ModelView,
        windows: &[Vec<u32>],
        calibrator: RangeCalibrator,
    ) -> Result<(Self, Vec<InputRange>)> {
        let mut observed = self.clone();
        let mut hists = Vec::new();
        observed.map_block_linears(view, |_, l| {
            let h = Arc::new(Mutex::new(AbsHistogram::new(DEFAULT_BINS)?));
            hists.push(h.clone());
            Ok(Linear::Observed(h, Box::new(l)))
        })?;
        let forward = super::CpuForward::new(observed);
        for w in windows {
            forward.logits(w)?;
        }
        drop(forward);
        let mut weights = self.with_int8_activations(view)?;
        let mut ranges = Vec::new();
        let mut next = hists.iter();
        // The same traversal as the observation: histograms pair up in order.
        weights.map_block_linears(view, |tensor, l| {
            let (Linear::Int8Input(q, _), Some(h)) = (l, next.next()) else {
                return Err(Error::Config(
                    "INT8 calibration lost track of a linear".into(),
                ));
            };
            let h = h
                .lock()
                .map_err(|_| Error::Config("histogram lock poisoned".into()))?;
            let t = calibrator.threshold(&h, 8)?;
            if t == 0.0 {
                log::warn!(
                    "{tensor}: its calibration inputs are all 0; it runs with per-token scales"
                );
            }
            ranges.push(InputRange {
                tensor: tensor.to_string(),
                threshold: t,
                clipped: clipped_share(&h, t),
            });
            Ok(Linear::Int8Input(q, (t > 0.0).then_some(t / 127.0)))
        })?;
        Ok((weights, ranges))
    }
}

/// The CPU forward of the model at `path` with static INT8 input scales
/// calibrated on the first `windows` windows of `ctx` tokens of
/// `calib_text` (BOS written over each window's first token when the
/// model adds one, as `eval` scores).
pub fn open_static_int8(
    path: &std::path::Path,
    calib_text: &std::path::Path,
    windows: usize,
    ctx: usize,
    calibrator: RangeCalibrator,
) -> Result<(Box<dyn super::Forward>, Vec<InputRange>)> {
    let view = ModelView::open(path)?;
    let tok = crate::model::tokenizer::Tokenizer::from_model(&view)?;
    let text = std::fs::read_to_string(calib_text).map_err(|e| Error::io(calib_text, e))?;
    let ids = tok.encode(&text, false)?;
    let mut chunks: Vec<Vec<u32>> = ids
        .chunks_exact(ctx.max(2))
        .take(windows)
        .map(<[u32]>::to_vec)
        .collect();
    if chunks.is_empty() {
        return Err(Error::Config(format!(
            "{}: {} tokens, fewer than one calibration window of {ctx}",
            calib_text.display(),
            ids.len()
        )));
    }
    if let (true, Some(bos)) = (tok.add_bos_default(), tok.bos_id()) {
        chunks.iter_mut().for_each(|w| w[0] = bos);
    }
    let weights = LlamaWeights::load(&view)?;
    let (weights, ranges) = weights.with_static_int8_activations(&view, &chunks, calibrator)?;
    Ok((Box::new(super::CpuForward::new(weights)), ranges))
}
