//! Running a model with INT8 activations (`eval --int8-activations`): every
//! block linear stored as 8-bit symmetric codes takes its input quantized
//! per token to INT8 and multiplies in integers
//! ([`crate::encoding::act8`]); the output head stays f32, as W8A8
//! deployments keep it. CPU only for now.

use super::linear::Linear;
use super::LayerWeights;
use super::LlamaWeights;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::model::view::{ModelView, TensorKind};
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

const BLOCK_LINEARS: [TensorKind; 7] = [
    TensorKind::AttnQ,
    TensorKind::AttnK,
    TensorKind::AttnV,
    TensorKind::AttnOutput,
    TensorKind::MlpGate,
    TensorKind::MlpUp,
    TensorKind::MlpDown,
];

impl LlamaWeights {
    /// Every block linear as [`Linear::Int8Input`]: an error naming the
    /// first that is not stored as 8-bit symmetric codes in groups of a
    /// multiple of 4 (quantize with `--bits 8 --sym`).
    pub fn with_int8_activations(mut self, view: &ModelView) -> Result<Self> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for kind in BLOCK_LINEARS {
                let Some(l) = layer.linear_mut(kind) else {
                    continue;
                };
                let name = LayerWeights::tensor_name(view, i, kind).unwrap_or_default();
                let taken = std::mem::replace(
                    l,
                    Linear::Dense {
                        rows: 0,
                        cols: 0,
                        w: Vec::new(),
                    },
                );
                *l = match taken {
                    Linear::Packed(EncodedTensor::Affine(q))
                        if q.scheme.bits == 8
                            && q.scheme.symmetric
                            && q.scheme.group_len(q.cols).is_multiple_of(4) =>
                    {
                        Linear::Int8Input(q, None)
                    }
                    other => {
                        return Err(Error::Config(format!(
                            "--int8-activations multiplies INT8 activations with 8-bit symmetric \
                             weights; '{name}' in {} is {} (quantize with --bits 8 --sym)",
                            view.path().display(),
                            match &other {
                                Linear::Packed(e) => e.encoding().label(),
                                _ => "not quantized".into(),
                            }
                        )))
                    }
                };
            }
        }
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
        for layer in observed.layers.iter_mut() {
            for kind in BLOCK_LINEARS {
                if let Some(l) = layer.linear_mut(kind) {
                    let h = Arc::new(Mutex::new(AbsHistogram::new(DEFAULT_BINS)?));
                    let inner = std::mem::replace(
                        l,
                        Linear::Dense {
                            rows: 0,
                            cols: 0,
                            w: Vec::new(),
                        },
                    );
                    *l = Linear::Observed(h.clone(), Box::new(inner));
                    hists.push(h);
                }
            }
        }
        let forward = super::CpuForward::new(observed);
        for w in windows {
            forward.logits(w)?;
        }
        drop(forward);
        let mut weights = self.with_int8_activations(view)?;
        let mut ranges = Vec::new();
        let mut next = hists.iter();
        for (i, layer) in weights.layers.iter_mut().enumerate() {
            for kind in BLOCK_LINEARS {
                let (Some(l), Some(h)) = (layer.linear_mut(kind), next.next()) else {
                    continue;
                };
                let h = h
                    .lock()
                    .map_err(|_| Error::Config("histogram lock poisoned".into()))?;
                let t = calibrator.threshold(&h, 8)?;
                let tensor = LayerWeights::tensor_name(view, i, kind).unwrap_or_default();
                if let Linear::Int8Input(_, scale) = l {
                    *scale = (t > 0.0).then_some(t / 127.0);
                }
                if t == 0.0 {
                    log::warn!(
                        "{tensor}: its calibration inputs are all 0; it runs with per-token scales"
                    );
                }
                ranges.push(InputRange {
                    tensor,
                    threshold: t,
                    clipped: clipped_share(&h, t),
                });
            }
        }
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
