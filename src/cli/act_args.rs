//! `quantize`'s activation options (W8A8): `--act-bits 8` and what goes
//! with it.

use llmq_gpu::encoding::affine::clip::WeightClip;
use llmq_gpu::pipeline::activations::ActQuantSettings;
use llmq_gpu::quant::range::RangeCalibrator;
use llmq_gpu::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct ActArgs {
    /// Quantize every block linear's input to INT8 when the model runs
    /// (W8A8: needs --bits 8 --sym; the only width is 8). The scales are
    /// stored with the weights, so eval/generate/bench run it as W8A8.
    #[arg(long)]
    act_bits: Option<u32>,
    /// How the static input ranges are chosen on the calibration windows
    /// (of the quantized model): minmax, percentile (--act-percentile), mse
    /// or kl.
    #[arg(long, default_value = "mse")]
    act_calib: String,
    /// The percentile of --act-calib percentile, in (0, 100].
    #[arg(long)]
    act_percentile: Option<f64>,
    /// Per-token input scales computed at run time instead of static ones
    /// (needs no calibration unless --smooth).
    #[arg(long)]
    act_dynamic: bool,
    /// SmoothQuant: move part of each input channel's range into the
    /// weights with strength ALPHA in [0, 1] (0.5 is SmoothQuant's default),
    /// folded into the RMSNorm weights, v and up.
    #[arg(long, value_name = "ALPHA")]
    smooth: Option<f32>,
    /// Calibration windows that smoothing and the input ranges see.
    #[arg(long, default_value_t = 16)]
    act_calib_samples: usize,
    /// How each weight group's range is chosen: minmax (its extremes),
    /// mse (the scale search, diag(H)-weighted with --calib; GPTQ's and
    /// calibrated RTN's default), percentile (--clip-percentile) or kl
    /// (thresholds on a histogram of the group, fitted on the host). Default:
    /// minmax for RTN without --calib, mse otherwise.
    #[arg(long)]
    clip: Option<String>,
    /// The percentile of --clip percentile, in (0, 100] (default 99).
    #[arg(long)]
    clip_percentile: Option<f64>,
}

impl ActArgs {
    /// `--clip`, if given.
    pub fn weight_clip(&self) -> Result<Option<WeightClip>> {
        match &self.clip {
            Some(c) => WeightClip::parse(c, self.clip_percentile).map(Some),
            None if self.clip_percentile.is_some() => Err(Error::Config(
                "--clip-percentile goes with --clip percentile".into(),
            )),
            None => Ok(None),
        }
    }

    /// The settings, or `None` without --act-bits (an error when another
    /// activation flag was given alone).
    pub fn settings(&self) -> Result<Option<ActQuantSettings>> {
        let Some(bits) = self.act_bits else {
            if self.act_dynamic || self.smooth.is_some() || self.act_percentile.is_some() {
                return Err(Error::Config(
                    "--act-dynamic, --smooth and --act-percentile go with --act-bits 8".into(),
                ));
            }
            return Ok(None);
        };
        let calibrator = RangeCalibrator::parse(&self.act_calib, self.act_percentile)?;
        let mut s = ActQuantSettings::new(bits, calibrator)?;
        s.dynamic = self.act_dynamic;
        s.smooth = self.smooth;
        s.samples = self.act_calib_samples;
        Ok(Some(s))
    }
}

/// The activation lines of `quantize`'s summary.
pub fn print_summary(r: &llmq_gpu::pipeline::activations::ActQuantReport) {
    println!(
        "  activations      {} ({} calibration windows)",
        r.setting, r.windows
    );
    if !r.smoothing.is_empty() {
        let n = r.smoothing.len() as f32;
        let mean = |f: &dyn Fn(&llmq_gpu::quant::smooth::SiteSmoothing) -> f32| {
            r.smoothing.iter().map(f).sum::<f32>() / n
        };
        println!(
            "  smoothing        {} sites; input max/median channel {:.1} -> {:.1} (mean)",
            r.smoothing.len(),
            mean(&|s| s.outlier_ratio_before),
            mean(&|s| s.outlier_ratio_after)
        );
    }
    if !r.ranges.is_empty() {
        let n = r.ranges.len() as f64;
        println!(
            "  input ranges     {} linears, mean clipped share {:.4}% (each in the report)",
            r.ranges.len(),
            r.ranges.iter().map(|x| x.clipped).sum::<f64>() / n * 100.0
        );
    }
}
