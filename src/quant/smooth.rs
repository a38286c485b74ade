//! SmoothQuant (Xiao et al., 2023): a few input channels of an LLM's
//! linears carry values 10–100× the others, so one INT8 scale per tensor
//! crushes every other channel. Dividing channel `j` of the input by
//! `s_j = max|X_j|^α / max|W_:,j|^(1−α)` and multiplying column `j` of the
//! weight by it leaves the product unchanged and moves part of the range
//! from the activations into the weights, which quantize per group anyway.
//!
//! The division is folded into whatever produces the input, so nothing is
//! added at run time; every decoder site of the Llama family has such a
//! producer:
//!
//! | input of        | divided in                | exact because                  |
//! |-----------------|---------------------------|--------------------------------|
//! | q, k, v         | the attention RMSNorm weight | RMSNorm ends with `· w`     |
//! | o               | v's rows (and bias)       | attention is linear in V       |
//! | gate, up        | the MLP RMSNorm weight    | as for q, k, v                 |
//! | down            | up's rows                 | `silu(gate) · up` is linear in up |
//!
//! With grouped-query attention a row of v feeds the same channel of every
//! query head of its group, so those channels of o share one factor.
//! The smoothed model is a [`TensorSource`] over the original one
//! ([`SmoothedSource`]): quantizers read the smoothed weights through it.

use crate::error::{Error, Result};
use crate::formats::source::{TensorInfo, TensorSource};
use crate::model::arch::ArchConfig;
use crate::model::forward::{layer_tensor_name, CpuForward, LayerWeights, LinearSite};
use crate::model::view::TensorKind;
use crate::model::ModelView;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `max |x_j|` over the calibration inputs, per layer and [`LinearSite`]
/// (in [`LinearSite::ALL`] order).
pub type ChannelMax = Vec<[Vec<f32>; 4]>;

/// Runs the f32 model over `windows` (`len` tokens each, concatenated)
/// and records each input channel's largest magnitude at every site.
pub fn channel_max(
    view: &ModelView,
    windows: &[u32],
    len: usize,
    cancelled: &dyn Fn() -> bool,
) -> Result<ChannelMax> {
    let forward = CpuForward::load(view)?;
    let layers = view.arch().num_layers;
    let mut max: ChannelMax = vec![Default::default(); layers];
    for w in windows.chunks(len.max(1)) {
        if cancelled() {
            return Err(Error::Cancelled);
        }
        let mut hidden = forward.embed(w)?;
        for i in 0..layers {
            forward.layer(i, &mut hidden, w.len(), &mut |input| {
                let site = LinearSite::ALL.iter().position(|s| *s == input.site);
                let slot = &mut max[input.layer][site.unwrap_or(0)];
                if slot.len() != input.width {
                    *slot = vec![0.0; input.width];
                }
                for row in input.x.chunks_exact(input.width) {
                    for (m, v) in slot.iter_mut().zip(row) {
                        *m = m.max(v.abs());
                    }
                }
            })?;
        }
    }
    Ok(max)
}

/// How one tensor is rescaled: `w[r, c] · cols[c] / rows[r]` (a 1-D
/// tensor, a norm weight or a bias, is one column of rows).
#[derive(Clone, Debug, Default)]
struct Rescale {
    cols: Option<Vec<f32>>,
    rows: Option<Vec<f32>>,
}

/// One site's factors, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct SiteSmoothing {
    pub layer: usize,
    pub site: String,
    pub min_factor: f32,
    pub max_factor: f32,
    /// Largest channel max over the median channel max, before and after:
    /// how far one per-tensor scale is from fitting every channel.
    pub outlier_ratio_before: f32,
    pub outlier_ratio_after: f32,
    /// Channels left alone because their input or weight column is all 0.
    pub dead_channels: usize,
}

/// The factors of every site of a model.
#[derive(Clone, Debug)]
pub struct Smoothing {
    pub alpha: f32,
    tensors: HashMap<String, Rescale>,
    pub sites: Vec<SiteSmoothing>,
}

/// `s_j = x_j^α / w_j^(1−α)`; 1 for a channel whose input or weight is
/// all 0 (nothing to balance; a dead channel must not become inf or 0).
fn factors(x: &[f32], w: &[f32], alpha: f32) -> (Vec<f32>, usize) {
    let mut dead = 0;
    let s = x
        .iter()
        .zip(w)
        .map(
            |(&x, &w)| match x > 0.0 && w > 0.0 && x.is_finite() && w.is_finite() {
                true => (x.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5),
                false => {
                    dead += 1;
                    1.0
                }
            },
        )
        .collect();
    (s, dead)
}

/// Column-wise `max |w|` of `[rows, cols]` weights, over several tensors.
fn column_max(view: &ModelView, names: &[String], cols: usize) -> Result<Vec<f32>> {
    let mut m = vec![0f32; cols];
    for name in names {
        let w = view.load_f32(name)?;
        if w.len() % cols != 0 {
            return Err(Error::BadTensor {
                name: name.clone(),
                msg: format!("{} values are not rows of {cols} columns", w.len()),
            });
        }
        for row in w.chunks_exact(cols) {
            for (m, v) in m.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    Ok(m)
}

fn outlier_ratio(x: &[f32]) -> f32 {
    let mut v: Vec<f32> = x.iter().copied().filter(|v| v.is_finite()).collect();
    v.sort_by(f32::total_cmp);
    match (v.get(v.len() / 2), v.last()) {
        (Some(&med), Some(&max)) if med > 0.0 => max / med,
        _ => 0.0,
    }
}

impl Smoothing {
    /// The factors for strength `alpha` (0: all on the weights' side
    /// unchanged, 1: activations flattened completely; SmoothQuant uses 0.5
    /// to 0.85) from the channel maxima of the unsmoothed model.
    pub fn plan(view: &ModelView, max: &ChannelMax, alpha: f32) -> Result<Self> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(Error::Config(format!(
                "--smooth {alpha}: the migration strength must be between 0 and 1"
            )));
        }
        let a = view.arch();
        let (hd, group) = (a.head_dim(), a.num_heads / a.num_kv_heads.max(1));
        let mut plan = Smoothing {
            alpha,
            tensors: HashMap::new(),
            sites: Vec::new(),
        };
        for (i, sites) in max.iter().enumerate() {
            let linear = |k: TensorKind| LayerWeights::tensor_name(view, i, k).unwrap_or_default();
            let param = |what: &str, p: &str| layer_tensor_name(view, i, what, p);
            for (site, x) in LinearSite::ALL.iter().zip(sites) {
                if x.is_empty() {
                    continue;
                }
                let consumers: Vec<String> = site.kinds().iter().map(|&k| linear(k)).collect();
                // The channel each factor is shared by (GQA: o's inputs of
                // one kv group), and the tensors that divide by it.
                let (key, producers): (Box<dyn Fn(usize) -> usize>, Vec<String>) = match site {
                    LinearSite::AttnQkv => (Box::new(|c| c), vec![param("attn_norm", "weight")]),
                    LinearSite::MlpGateUp => (Box::new(|c| c), vec![param("ffn_norm", "weight")]),
                    LinearSite::MlpDown => (Box::new(|c| c), vec![linear(TensorKind::MlpUp)]),
                    LinearSite::AttnOutput => (
                        Box::new(move |c| (c / hd / group) * hd + c % hd),
                        vec![linear(TensorKind::AttnV), param("attn_v", "bias")],
                    ),
                };
                let w = column_max(view, &consumers, x.len())?;
                let keys = (0..x.len()).map(&key).max().map_or(0, |k| k + 1);
                let (mut xk, mut wk) = (vec![0f32; keys], vec![0f32; keys]);
                for c in 0..x.len() {
                    xk[key(c)] = xk[key(c)].max(x[c]);
                    wk[key(c)] = wk[key(c)].max(w[c]);
                }
                let (s, dead) = factors(&xk, &wk, alpha);
                let per_col: Vec<f32> = (0..x.len()).map(|c| s[key(c)]).collect();
                for c in &consumers {
                    plan.tensors.entry(c.clone()).or_default().cols = Some(per_col.clone());
                }
                for p in producers {
                    if view.tensors().iter().any(|t| t.name == p) {
                        plan.tensors.entry(p).or_default().rows = Some(s.clone());
                    }
                }
                let after: Vec<f32> = x.iter().zip(&per_col).map(|(x, s)| x / s).collect();
                plan.sites.push(SiteSmoothing {
                    layer: i,
                    site: format!("{site:?}"),
                    min_factor: s.iter().copied().fold(f32::INFINITY, f32::min),
                    max_factor: s.iter().copied().fold(0.0, f32::max),
                    outlier_ratio_before: outlier_ratio(x),
                    outlier_ratio_after: outlier_ratio(&after),
                    dead_channels: dead,
                });
            }
        }
        Ok(plan)
    }

    /// Tensors it changes.
    pub fn tensors(&self) -> usize {
        self.tensors.len()
    }
}

/// A model with [`Smoothing`] applied to its weights as they load.
/// Smoothed tensors load as f32 only (their stored codes are of the
/// unsmoothed weights).
pub struct SmoothedSource {
    inner: ModelView,
    smoothing: Smoothing,
}

impl SmoothedSource {
    pub fn new(inner: ModelView, smoothing: Smoothing) -> Self {
        Self { inner, smoothing }
    }
}

impl TensorSource for SmoothedSource {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn format_name(&self) -> &'static str {
        self.inner.format_name()
    }
    fn arch(&self) -> &ArchConfig {
        self.inner.arch()
    }
    fn tensors(&self) -> &[TensorInfo] {
        self.inner.tensors()
    }
    fn load_f32(&self, name: &str) -> Result<Vec<f32>> {
        let mut w = self.inner.load_f32(name)?;
        let Some(r) = self.smoothing.tensors.get(name) else {
            return Ok(w);
        };
        let cols = r.cols.as_ref().map_or(1, Vec::len);
        let rows = w.len() / cols.max(1);
        if rows * cols != w.len() || r.rows.as_ref().is_some_and(|s| s.len() != rows) {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!("{} values do not fit its smoothing factors", w.len()),
            });
        }
        for (i, row) in w.chunks_exact_mut(cols).enumerate() {
            let d = r.rows.as_ref().map_or(1.0, |s| s[i]);
            match &r.cols {
                Some(s) => row.iter_mut().zip(s).for_each(|(v, s)| *v *= s / d),
                None => row.iter_mut().for_each(|v| *v /= d),
            }
        }
        Ok(w)
    }
    fn load_quantized(&self, name: &str) -> Result<Option<crate::encoding::QuantizedTensor>> {
        match self.smoothing.tensors.contains_key(name) {
            true => Ok(None),
            false => self.inner.load_quantized(name),
        }
    }
    fn load_encoded(&self, name: &str) -> Result<Option<crate::encoding::EncodedTensor>> {
        match self.smoothing.tensors.contains_key(name) {
            true => Ok(None),
            false => self.inner.load_encoded(name),
        }
    }
    fn encoding_of(&self, name: &str) -> Option<crate::encoding::Encoding> {
        match self.smoothing.tensors.contains_key(name) {
            true => None,
            false => self.inner.source().encoding_of(name),
        }
    }
    fn metadata(&self) -> Vec<(String, serde_json::Value)> {
        self.inner.metadata()
    }
    fn companion_files(&self) -> Vec<PathBuf> {
        self.inner.companion_files()
    }
}
