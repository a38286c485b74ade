//! Whole-model quantization: open a model, quantize its linear layers on the
//! chosen backend, keep the rest in f16, write an llmq folder atomically.
//!
//! Built for in-process use: progress arrives through a callback (or a
//! channel with [`QuantizeJob`]), a [`CancelToken`] stops the run between
//! tensors, and nothing is printed. A failed or cancelled run leaves no output.

use super::activations::{self, ActQuantSettings};
use super::checkpoint::{self, Checkpoint};
use super::gptq::{self, GptqEvent, GptqSettings};
pub use super::quantize_job::{JobResult, QuantizeJob};
pub use super::quantize_report::{KindError, Progress, QuantizeReport};
use crate::backend::gpu::DeviceChoice;
use crate::backend::{self, Backend};
pub use crate::cancel::CancelToken;
use crate::encoding::affine::clip::WeightClip;
use crate::encoding::{EncodedTensor, LinearStorage};
use crate::error::{Error, Result};
use crate::formats::llmq::LlmqWriter;
use crate::model::{ModelView, TensorInfo, TensorKind};
use crate::quant::gptvq::GptvqOptions;
use crate::quant::{rtn, QuantScheme};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Quantization method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Round to nearest, tensor by tensor; needs no data.
    Rtn,
    /// GPTQ, layer by layer on calibration data ([`QuantizeConfig::gptq`]).
    Gptq,
    /// GPTVQ codebooks, layer by layer on calibration data
    /// ([`QuantizeConfig::gptvq`]).
    Gptvq,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Rtn => "rtn",
            Method::Gptq => "gptq",
            Method::Gptvq => "gptvq",
        }
    }
}

/// Everything a quantization run needs. Build with [`QuantizeConfig::new`]
/// and the setter methods.
#[derive(Clone, Debug)]
pub struct QuantizeConfig {
    pub model: PathBuf,
    pub out: PathBuf,
    pub method: Method,
    pub scheme: QuantScheme,
    pub device: DeviceChoice,
    /// Picks an adapter by case-insensitive name substring.
    pub adapter: Option<String>,
    /// Also quantize the output head (`lm_head` / `output.weight`). Off by
    /// default: it is the most sensitive matrix and small next to the blocks.
    pub quantize_output_head: bool,
    /// Refuse group sizes that leave a shorter last group in some tensor
    /// (SmolLM2's 576 = 4.5 × 128, say) instead of quantizing that group as is.
    pub strict_groups: bool,
    /// Replace `out` if it exists.
    pub overwrite: bool,
    /// Lower the GPU binding limit (testing the split path); `None` keeps the adapter's.
    pub max_binding: Option<u64>,
    /// Calibration and GPTQ options; required by [`Method::Gptq`]. With
    /// [`Method::Rtn`] they make RTN calibrated: the layers run on the
    /// calibration windows as for GPTQ and each group's parameters come
    /// from the `diag(H)`-weighted scale search ([`gptq::Solver::RtnSearch`]).
    pub gptq: Option<GptqSettings>,
    /// INT8 activations (W8A8): smoothing, and the input scales stored
    /// with the weights ([`super::activations`]).
    pub activations: Option<ActQuantSettings>,
    /// RTN without calibration: how each group's range is chosen (with
    /// calibration, [`GptqSettings`]' options say).
    pub clip: WeightClip,
    /// Where a calibrated (layer-by-layer) run keeps its checkpoint, so
    /// that a stopped run can go on ([`super::checkpoint`]); `None` keeps
    /// none. Default: `.NAME.llmq-partial` beside `out`.
    pub checkpoint: Option<PathBuf>,
    /// Go on from the checkpoint's finished layers (it must come from the
    /// same settings and files); without it an existing checkpoint is an
    /// error rather than thrown away.
    pub resume: bool,
}

impl QuantizeConfig {
    pub fn new(model: impl Into<PathBuf>, out: impl Into<PathBuf>, scheme: QuantScheme) -> Self {
        let out = out.into();
        Self {
            model: model.into(),
            checkpoint: Some(checkpoint::default_dir(&out)),
            resume: false,
            out,
            method: Method::Rtn,
            scheme,
            device: DeviceChoice::Auto,
            adapter: None,
            quantize_output_head: false,
            strict_groups: false,
            overwrite: false,
            max_binding: None,
            gptq: None,
            activations: None,
            clip: WeightClip::MinMax,
        }
    }
    /// W8A8 / W4A8: INT8 inputs for every block linear (needs 8-bit
    /// symmetric or 4-bit weights; static scales and smoothing need
    /// calibration settings).
    pub fn activations(mut self, settings: ActQuantSettings) -> Self {
        self.activations = Some(settings);
        self
    }
    /// GPTQ with these settings (sets the method too; set
    /// [`Method::Rtn`] after it for RTN with the weighted scale search).
    pub fn gptq(mut self, settings: GptqSettings) -> Self {
        self.method = Method::Gptq;
        self.gptq = Some(settings);
        self
    }
    /// GPTVQ with these calibration settings and codebook options (sets
    /// the method and the settings' solver; `scheme` stays the affine
    /// baseline the report scores it against).
    pub fn gptvq(mut self, mut settings: GptqSettings, options: GptvqOptions) -> Self {
        settings.solver = gptq::Solver::Gptvq(options);
        self.method = Method::Gptvq;
        self.gptq = Some(settings);
        self
    }

    /// The VQ options of a GPTVQ run.
    fn vq_options(&self) -> Option<GptvqOptions> {
        match self.gptq.as_ref().map(|s| s.solver) {
            Some(gptq::Solver::Gptvq(o)) if self.method == Method::Gptvq => Some(o),
            _ => None,
        }
    }

    /// What the report names the written encoding.
    pub fn label(&self) -> String {
        let weights = match self.vq_options() {
            Some(o) => o.scheme.label(),
            None => self.scheme.label(),
        };
        match &self.activations {
            Some(a) => format!("{weights}, {}", a.label()),
            None => weights,
        }
    }

    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }
    pub fn adapter(mut self, name: Option<String>) -> Self {
        self.adapter = name;
        self
    }
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }
    pub fn quantize_output_head(mut self, yes: bool) -> Self {
        self.quantize_output_head = yes;
        self
    }
    pub fn strict_groups(mut self, yes: bool) -> Self {
        self.strict_groups = yes;
        self
    }
    pub fn overwrite(mut self, yes: bool) -> Self {
        self.overwrite = yes;
        self
    }
    pub fn max_binding(mut self, bytes: Option<u64>) -> Self {
        self.max_binding = bytes;
        self
    }
    /// Keep the checkpoint at `dir` (`None`: keep none).
    pub fn checkpoint(mut self, dir: Option<PathBuf>) -> Self {
        self.checkpoint = dir;
        self
    }
    pub fn resume(mut self, yes: bool) -> Self {
        self.resume = yes;
        self
    }
}

/// Which tensors get quantized: 2-D linear weights of the decoder blocks,
/// and the output head if asked.
fn should_quantize(t: &TensorInfo, config: &QuantizeConfig) -> bool {
    let kind = TensorKind::of(&t.name);
    t.shape.len() == 2
        && (kind.is_block_linear()
            || (config.quantize_output_head && kind == TensorKind::OutputHead))
}

/// ‖w − ŵ‖ / ‖w‖, accumulated in f64.
fn relative_error(w: &[f32], deq: &[f32]) -> f64 {
    let (num, den) = w
        .par_iter()
        .zip(deq)
        .map(|(&a, &b)| {
            let d = (a - b) as f64;
            (d * d, (a as f64) * (a as f64))
        })
        .reduce(|| (0.0, 0.0), |x, y| (x.0 + y.0, x.1 + y.1));
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}

fn source_bytes(model: &ModelView) -> u64 {
    let path = model.path();
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|dir| {
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

/// Counts and sizes of what was written.
#[derive(Default)]
struct Tally {
    quantized: usize,
    kept: usize,
    q_weights: u64,
    q_bytes: u64,
    linears: LinearStorage,
    f16_bytes: u64,
    errors: BTreeMap<TensorKind, (usize, f64)>,
}

impl Tally {
    fn count(&self) -> usize {
        self.quantized + self.kept
    }

    fn quantized(
        &mut self,
        writer: &mut LlmqWriter,
        name: &str,
        shape: &[usize],
        q: &EncodedTensor,
        w: &[f32],
        method: Method,
    ) -> Result<()> {
        let deq = q.dequantize()?;
        let e = self.errors.entry(TensorKind::of(name)).or_default();
        e.0 += 1;
        e.1 += relative_error(w, &deq);
        self.f16_bytes += 2 * w.len() as u64;
        self.q_weights += w.len() as u64;
        self.q_bytes += q.stored_bytes();
        if TensorKind::of(name).is_block_linear() {
            self.linears.weights += w.len() as u64;
            self.linears.stored_bytes += q.stored_bytes();
        }
        writer.add_encoded(name, shape, q, method.name())?;
        self.quantized += 1;
        Ok(())
    }

    fn kept(
        &mut self,
        writer: &mut LlmqWriter,
        name: &str,
        shape: &[usize],
        w: &[f32],
    ) -> Result<()> {
        rtn::check_finite(name, w)?;
        self.f16_bytes += 2 * w.len() as u64;
        writer.add_kept(name, shape, w)?;
        self.kept += 1;
        Ok(())
    }
}

/// Quantizes `config.model` into `config.out` on the device the config names.
pub fn quantize_model(
    config: &QuantizeConfig,
    on_progress: &mut dyn FnMut(Progress),
    cancel: &CancelToken,
) -> Result<QuantizeReport> {
    let backend = backend::select(config.device, config.adapter.as_deref(), config.max_binding)?;
    quantize_model_with(backend.as_ref(), config, on_progress, cancel)
}

/// [`quantize_model`] on a backend the caller already holds (an app keeps
/// one GPU context for many runs).
pub fn quantize_model_with(
    backend: &dyn Backend,
    config: &QuantizeConfig,
    on_progress: &mut dyn FnMut(Progress),
    cancel: &CancelToken,
) -> Result<QuantizeReport> {
    let start = Instant::now();
    let mut model = ModelView::open(&config.model)?;
    let (mut act_windows, mut smoothing) = (Vec::new(), Vec::new());
    if let Some(a) = &config.activations {
        // Every linear's width is checked with the other shapes below.
        a.check(&config.scheme, config.gptq.as_ref().map(|g| &g.calib))?;
        if let Some(g) = config
            .gptq
            .as_ref()
            .filter(|_| !a.dynamic || a.smooth.is_some())
        {
            act_windows = activations::windows(&model, &g.calib, a.samples)?;
        }
        if a.smooth.is_some() {
            on_progress(Progress::Activations {
                what: "smoothing",
                windows: act_windows.len(),
            });
        }
        (model, smoothing) =
            activations::prepare(model, a, &act_windows, &|| cancel.is_cancelled())?;
    }
    let tensors = model.tensors().to_vec();
    // Validate every quantized shape before doing any work.
    let mut ragged = 0;
    if config.method == Method::Gptvq && config.vq_options().is_none() {
        return Err(Error::Config(
            "GPTVQ needs its settings (QuantizeConfig::gptvq)".into(),
        ));
    }
    for t in tensors.iter().filter(|t| should_quantize(t, config)) {
        if let Some(o) = config.vq_options() {
            o.scheme.check_shape(&t.name, t.shape[0], t.shape[1])?;
        }
        config.scheme.check_shape(&t.name, t.shape[0], t.shape[1])?;
        if let Some(a) = &config.activations {
            a.check_width(&config.scheme, t.shape[1])
                .map_err(|e| Error::BadTensor {
                    name: t.name.clone(),
                    msg: e.to_string(),
                })?;
        }
        if config
            .scheme
            .check_groups_divide(&t.name, t.shape[1])
            .is_err()
        {
            if config.strict_groups {
                config.scheme.check_groups_divide(&t.name, t.shape[1])?;
            }
            ragged += 1;
        }
    }
    if ragged > 0 {
        log::info!(
            "{ragged} tensors have a shorter last group ({})",
            config.scheme.label()
        );
    }
    crate::formats::atomic::refuse_source_as_target(model.path(), &config.out)?;
    let mut checkpoint = match (&config.checkpoint, &config.gptq) {
        (Some(dir), Some(_)) => {
            let fp = checkpoint::fingerprint(config, backend, &model);
            Some(Checkpoint::open(dir, fp, config.resume)?)
        }
        _ if config.resume => {
            return Err(Error::Config(
                "--resume: only calibrated runs (GPTQ, GPTVQ, RTN with --calib) that keep \
                 a checkpoint can go on from one"
                    .into(),
            ))
        }
        _ => None,
    };
    let mut writer = LlmqWriter::create(&config.out, config.overwrite)?;
    on_progress(Progress::Started {
        tensors: tensors.len(),
        backend: backend.name(),
    });

    let mut tally = Tally::default();
    let mut gptq_report = None;
    match config.method {
        Method::Rtn if config.gptq.is_none() => {
            for (index, t) in tensors.iter().enumerate() {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let w = model.load_f32(&t.name)?;
                let quantize = should_quantize(t, config);
                if quantize {
                    let (rows, cols) = (t.shape[0], t.shape[1]);
                    let q = EncodedTensor::Affine(rtn::quantize_clipped(
                        backend,
                        &t.name,
                        &w,
                        rows,
                        cols,
                        &config.scheme,
                        config.clip,
                        None,
                    )?);
                    tally.quantized(&mut writer, &t.name, &t.shape, &q, &w, config.method)?;
                } else {
                    tally.kept(&mut writer, &t.name, &t.shape, &w)?;
                }
                on_progress(Progress::Tensor {
                    index,
                    total: tensors.len(),
                    name: t.name.clone(),
                    quantized: quantize,
                });
            }
        }
        // GPTQ, GPTVQ, or RTN with calibration: its weighted scale search.
        Method::Gptq | Method::Gptvq | Method::Rtn => {
            let mut settings = config.gptq.clone().ok_or_else(|| {
                Error::Config("GPTQ needs calibration settings (QuantizeConfig::gptq)".into())
            })?;
            match config.method {
                Method::Rtn => settings.solver = gptq::Solver::RtnSearch,
                Method::Gptq => settings.solver = gptq::Solver::Gptq,
                Method::Gptvq => {}
            }
            let settings = &settings;
            // Everything GPTQ does not quantize is copied first, one tensor
            // at a time; then the layers stream their quantized linears.
            for t in tensors.iter().filter(|t| !should_quantize(t, config)) {
                if cancel.is_cancelled() {
                    return Err(Error::Cancelled);
                }
                let w = model.load_f32(&t.name)?;
                tally.kept(&mut writer, &t.name, &t.shape, &w)?;
                on_progress(Progress::Tensor {
                    index: tally.count() - 1,
                    total: tensors.len(),
                    name: t.name.clone(),
                    quantized: false,
                });
            }
            let mut on_event = |e: GptqEvent| -> Result<()> {
                match e {
                    GptqEvent::Calibrated { tokens, layers } => {
                        on_progress(Progress::Calibrated { tokens, layers })
                    }
                    GptqEvent::Tensor { name, shape, q, w } => {
                        tally.quantized(&mut writer, name, &shape, q, w, config.method)?;
                        on_progress(Progress::Tensor {
                            index: tally.count() - 1,
                            total: tensors.len(),
                            name: name.to_string(),
                            quantized: true,
                        });
                    }
                    GptqEvent::Resumed { layers } => on_progress(Progress::Resumed {
                        layers,
                        total: model.arch().num_layers,
                        checkpoint: config.checkpoint.clone().unwrap_or_default(),
                    }),
                    GptqEvent::Layer {
                        index,
                        report,
                        replayed,
                    } => {
                        let n = report.linears.len().max(1) as f64;
                        on_progress(Progress::Layer {
                            replayed,
                            index,
                            total: model.arch().num_layers,
                            gptq_error: report.linears.iter().map(|l| l.gptq_error).sum::<f64>()
                                / n,
                            rtn_error: report.linears.iter().map(|l| l.rtn_error).sum::<f64>() / n,
                            gptq_baseline_error: report
                                .linears
                                .iter()
                                .map(|l| l.gptq_baseline_error)
                                .sum::<Option<f64>>()
                                .map(|s| s / n),
                            seconds: report.seconds,
                        });
                    }
                }
                Ok(())
            };
            let report = gptq::run(
                backend,
                &model,
                &config.scheme,
                settings,
                config.quantize_output_head,
                &mut on_event,
                &|| cancel.is_cancelled(),
                checkpoint.as_mut(),
            )?;
            let json = serde_json::to_vec_pretty(&report)
                .map_err(|e| Error::Config(format!("cannot serialize the GPTQ report: {e}")))?;
            writer.add_file("gptq-report.json", &json)?;
            gptq_report = Some(report);
        }
    }
    if cancel.is_cancelled() {
        return Err(Error::Cancelled);
    }
    on_progress(Progress::Writing);
    let mut report = QuantizeReport {
        model: config.model.clone(),
        out: config.out.clone(),
        method: config.method,
        scheme: config.label(),
        backend: backend.name(),
        quantized_tensors: tally.quantized,
        ragged_group_tensors: ragged,
        kept_tensors: tally.kept,
        source_bytes: source_bytes(&model),
        f16_bytes: tally.f16_bytes,
        output_bytes: writer.bytes_written(),
        bits_per_weight: if tally.q_weights == 0 {
            0.0
        } else {
            tally.q_bytes as f64 * 8.0 / tally.q_weights as f64
        },
        linears: tally.linears,
        errors_by_kind: tally
            .errors
            .into_iter()
            .map(|(k, (n, sum))| KindError {
                kind: k.label().to_string(),
                tensors: n,
                mean_relative_error: sum / n as f64,
            })
            .collect(),
        seconds: 0.0,
        gptq: gptq_report,
        activations: None,
    };
    report.seconds = start.elapsed().as_secs_f64();
    let report_json = serde_json::to_value(&report)
        .map_err(|e| Error::Config(format!("cannot serialize the report: {e}")))?;
    let mut staged = writer.finish_staged(
        model.arch(),
        model.path(),
        model.metadata(),
        &model.companion_files(),
        report_json,
    )?;
    if let Some(a) = &config.activations {
        on_progress(Progress::Activations {
            what: "INT8 input ranges",
            windows: act_windows.len(),
        });
        activations::finish(&mut staged, a, &act_windows, smoothing, &mut report)?;
    }
    staged.commit()?;
    if let Some(c) = checkpoint {
        let dir = c.dir().to_path_buf();
        if let Err(e) = c.remove() {
            log::warn!(
                "the output is complete, but its checkpoint {} stays: {e}",
                dir.display()
            );
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}
