//! One decoder layer of the calibration forward, run and quantized stage by
//! stage (each stage fed by the already-quantized stages before it).

use super::report::{LinearReport, Phases};
use super::{GptqEvent, Solver};
use crate::backend::cpu::ops;
use crate::backend::{Backend, ResidentLinear};
use crate::encoding::ggml::GgmlType;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::model::arch::ArchConfig;
use crate::model::forward::{self, DecoderLayer, LayerWeights, Linear};
use crate::model::{ModelView, TensorKind};
use crate::quant::gptq::error::diff;
use crate::quant::gptq::{self, GptqOptions, Hessian, HessianAccumulation};
use crate::quant::{rtn, QuantScheme, QuantizedTensor};
use rayon::prelude::*;
use std::ops::Range;
use std::time::Instant;

/// Runs and quantizes one layer at a time.
pub(crate) struct LayerRunner<'a> {
    pub(super) backend: &'a dyn Backend,
    pub(super) view: &'a ModelView,
    pub(super) arch: &'a ArchConfig,
    pub(super) scheme: &'a QuantScheme,
    pub(super) opts: &'a GptqOptions,
    pub(super) solver: Solver,
    /// RoPE inverse frequencies of the model.
    pub(super) rope_inv: &'a [f64],
    /// Tokens per window, windows per chunk.
    pub(super) seq: usize,
    pub(super) chunk: usize,
    /// Hidden rows of the windows GPTQ fits; the rows after them are the
    /// held-out windows, whose Hessians only score the result.
    pub(super) fit_rows: usize,
    pub(super) store_mlp: bool,
    /// GPTVQ: also run GPTQ at the affine scheme for the report.
    pub(super) gptq_baseline: bool,
    /// Linears rounded onto a ggml block type instead of `scheme`.
    pub(super) ggml_types: &'a std::collections::BTreeMap<String, GgmlType>,
    pub(super) phases: Phases,
}

impl<'a> LayerRunner<'a> {
    /// Row ranges of the chunks of `rows_total` hidden rows: the fitted
    /// windows' chunks, then the held-out windows' (none straddles both).
    fn chunks(&self, rows_total: usize) -> Vec<Range<usize>> {
        let step = self.chunk * self.seq;
        let split = |r: Range<usize>| {
            r.clone()
                .step_by(step)
                .map(move |s| s..(s + step).min(r.end))
        };
        let fit = self.fit_rows.min(rows_total);
        split(0..fit).chain(split(fit..rows_total)).collect()
    }

    /// RMSNorm FLOPs of `values` inputs (square, sum, scale, multiply).
    fn norm_flops(values: usize) -> f64 {
        4.0 * values as f64
    }

    /// Each of `qs` kept on the backend for the chunks of the forward (one
    /// upload per layer, not one per chunk).
    fn resident<'q>(&mut self, qs: &'q [EncodedTensor]) -> Result<Vec<Box<dyn ResidentLinear + 'q>>>
    where
        'a: 'q,
    {
        let backend: &'q dyn Backend = self.backend;
        self.phases.forward.time(0.0, || {
            qs.iter().map(|q| backend.resident_linear(q)).collect()
        })
    }

    /// Adds `x`, the inputs of the linear(s) `what` on the hidden rows
    /// `rows`, to the site's Hessian of the fitted or of the held-out
    /// windows. The backend's kernels may still run when this returns;
    /// [`LayerRunner::finish_hessian`] times the rest.
    fn accumulate(
        &mut self,
        hess: &mut SiteHessians,
        rows: &Range<usize>,
        what: &str,
        x: &[f32],
    ) -> Result<()> {
        let h = match &mut hess.held {
            Some(held) if rows.start >= self.fit_rows => held,
            _ => &mut hess.fit,
        };
        let cols = h.cols();
        let tokens = x.len() / cols;
        let flops = (tokens * cols * (cols + 1)) as f64;
        self.phases
            .hessian
            .time(flops, || h.add_batch(what, x, tokens))
    }

    /// The Hessian of `norm(hidden)` over every chunk of windows: the
    /// input of the linears `what` (q/k/v, gate/up, the head).
    fn normed_hessian(
        &mut self,
        hidden: &[f32],
        what: &str,
        norm: &dyn Fn(&[f32]) -> Vec<f32>,
    ) -> Result<(Hessian, Option<Hessian>)> {
        let h = self.arch.hidden_size;
        let rows = hidden.len() / h;
        let mut hess = self.start_hessian(h, rows)?;
        for c in self.chunks(rows) {
            let hc = &hidden[c.start * h..c.end * h];
            let x = self
                .phases
                .forward
                .time(Self::norm_flops(hc.len()), || norm(hc));
            self.accumulate(&mut hess, &c, what, &x)?;
        }
        self.finish_hessian(hess)
    }

    /// Empty Hessians of a site whose inputs have `cols` features, over
    /// `rows` hidden rows (held-out ones only when there are any).
    fn start_hessian(&self, cols: usize, rows: usize) -> Result<SiteHessians<'a>> {
        Ok(SiteHessians {
            fit: HessianAccumulation::new(self.backend, cols)?,
            held: match rows > self.fit_rows {
                true => Some(HessianAccumulation::new(self.backend, cols)?),
                false => None,
            },
        })
    }

    fn finish_hessian(&mut self, hess: SiteHessians) -> Result<(Hessian, Option<Hessian>)> {
        self.phases.hessian.time(0.0, || {
            Ok((
                hess.fit.finish()?,
                hess.held.map(|h| h.finish()).transpose()?,
            ))
        })
    }

    /// GPTQ (and, for the report, RTN) of the linears `kinds` of layer `i`,
    /// all reading the inputs whose Hessians (of the fitted and of the
    /// held-out windows) are `hess`.
    fn quantize_site(
        &mut self,
        lw: &LayerWeights,
        i: usize,
        kinds: &[TensorKind],
        (hess, held): (Hessian, Option<Hessian>),
        on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
        reports: &mut Vec<LinearReport>,
    ) -> Result<Vec<EncodedTensor>> {
        let (hess, held) = (&hess, held.as_ref());
        let mut out = Vec::with_capacity(kinds.len());
        let site = format!("layer {i} {}", site_label(kinds));
        let factored = self.factor(&site, hess)?;
        for &kind in kinds {
            let name = LayerWeights::tensor_name(self.view, i, kind)
                .expect("site kinds are block linears");
            let linear = lw.linear(kind).expect("site kinds are block linears");
            let w = linear.dense_weights()?;
            let (q, report) = self.quantize_linear(&name, &w, linear, (hess, held), &factored)?;
            on_event(GptqEvent::Tensor {
                name: &name,
                shape: [q.rows(), q.cols()],
                q: &q,
                w: &w,
            })?;
            reports.push(report);
            out.push(q);
        }
        Ok(out)
    }

    /// `tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)` of GPTQ's `q` and of RTN's `rtn` (dequantized)
    /// with `h` the Hessian of the held-out windows: how well each
    /// generalises to calibration text GPTQ did not fit.
    fn held_out_errors(
        &self,
        h: &[f32],
        cols: usize,
        w: &[f32],
        q: &EncodedTensor,
        rtn: &[f32],
    ) -> Result<(f64, f64)> {
        let (dq, dr) = (diff(w, &q.dequantize()?), diff(w, rtn));
        let t = self.backend.quadratic_traces(h, cols, &[w, &dq, &dr])?;
        Ok((gptq::relative_to(t[1], t[0]), gptq::relative_to(t[2], t[0])))
    }

    /// Factors a Hessian once for all the linears that read its inputs.
    fn factor(&mut self, site: &str, hess: &Hessian) -> Result<gptq::Factored> {
        let f = gptq::factor(self.backend, site, &hess.h, hess.cols, self.opts)?;
        let (flops, _) = gptq::flops(0, hess.cols, self.opts.block);
        self.phases.factor.add(f.seconds, flops);
        if f.damp_retries > 0 {
            log::info!(
                "{site}: damping raised to {} after {} failed Cholesky attempt(s)",
                f.damp_used,
                f.damp_retries
            );
        }
        Ok(f)
    }

    fn quantize_linear(
        &mut self,
        name: &str,
        w: &[f32],
        linear: &Linear,
        (hess, held): (&Hessian, Option<&Hessian>),
        factored: &gptq::Factored,
    ) -> Result<(EncodedTensor, LinearReport)> {
        let (rows, cols) = (linear.rows(), linear.cols());
        // RTN first, so its error is measured in the same trace call as
        // GPTQ's: llama.cpp's reference rounding for a ggml block type.
        let ggml_type = self.ggml_types.get(name).copied();
        let t = Instant::now();
        let rw = match ggml_type {
            Some(ty) => super::ggml::reference(name, ty, w, cols)?,
            None => {
                let rq = rtn::quantize(self.backend, name, w, rows, cols, self.scheme)?;
                self.backend.dequantize(&rq)?
            }
        };
        let rtn_seconds = t.elapsed().as_secs_f64();
        let mut gptq_baseline = None;
        let (q, r) = match (ggml_type, self.solver) {
            (Some(_), Solver::Gptvq(_)) => {
                return Err(Error::Config(format!(
                    "'{name}': GPTVQ's codebooks have no ggml block type; use --method gptq"
                )))
            }
            (Some(ty), solver) => {
                let gptq = solver == Solver::Gptq;
                let (g, r) =
                    self.ggml_linear(name, w, (rows, cols), &hess.h, factored, ty, gptq, &rw)?;
                (EncodedTensor::Ggml(g), r)
            }
            (None, Solver::Gptq) => {
                let (q, r) = gptq::quantize_factored(
                    self.backend,
                    name,
                    w,
                    rows,
                    cols,
                    &hess.h,
                    factored,
                    self.scheme,
                    self.opts,
                    &[&rw],
                )?;
                (EncodedTensor::Affine(q), r)
            }
            (None, Solver::RtnSearch) => {
                let (q, r) = self.searched_rtn(name, w, rows, cols, &hess.h, factored, &rw)?;
                (EncodedTensor::Affine(q), r)
            }
            (None, Solver::Gptvq(o)) => {
                let (v, r, baseline) =
                    self.gptvq_linear(name, w, (rows, cols), &hess.h, factored, &o, &rw)?;
                gptq_baseline = baseline;
                (EncodedTensor::Vq(v), r)
            }
        };
        if !matches!(self.solver, Solver::Gptvq(_)) {
            let (_, update_flops) = gptq::flops(rows, cols, self.opts.block);
            self.phases.update.add(r.seconds_update, update_flops);
        }
        // Three traces (W, GPTQ's ΔW, RTN's ΔW) of 2·rows·cols² each.
        let trace_flops = 2.0 * (rows * cols * cols) as f64;
        self.phases
            .report
            .add(rtn_seconds + r.seconds_error, 3.0 * trace_flops);
        let rtn_error = r.baseline_errors[0];
        let held_out = match held {
            Some(hh) => {
                let t = Instant::now();
                let errors = self.held_out_errors(&hh.h, cols, w, &q, &rw)?;
                self.phases
                    .report
                    .add(t.elapsed().as_secs_f64(), 3.0 * trace_flops);
                Some(errors)
            }
            None => None,
        };
        let report = LinearReport {
            name: name.to_string(),
            rows,
            cols,
            gptq_error: r.proxy_error,
            rtn_error,
            gptq_baseline_error: gptq_baseline,
            held_out_gptq_error: held_out.map(|e| e.0),
            held_out_rtn_error: held_out.map(|e| e.1),
            damp_used: r.damp_used,
            damp_retries: r.damp_retries,
            dead_columns: r.dead_columns,
            seconds: r.seconds_update,
        };
        Ok((q, report))
    }

    /// RTN with the `diag(H)`-weighted scale search, scored like GPTQ (its
    /// report's `proxy_error`; `baseline_errors[0]` is plain RTN's `rw`).
    #[allow(clippy::too_many_arguments)]
    fn searched_rtn(
        &self,
        name: &str,
        w: &[f32],
        rows: usize,
        cols: usize,
        h: &[f32],
        factored: &gptq::Factored,
        rw: &[f32],
    ) -> Result<(QuantizedTensor, gptq::GptqReport)> {
        let t = Instant::now();
        let hdiag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
        let clip = self.opts.weight_clip();
        let q = rtn::quantize_clipped(
            self.backend,
            name,
            w,
            rows,
            cols,
            self.scheme,
            clip,
            Some(&hdiag),
        )?;
        let seconds_update = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (dq, dr) = (diff(w, &self.backend.dequantize(&q)?), diff(w, rw));
        let traces = self.backend.quadratic_traces(h, cols, &[w, &dq, &dr])?;
        Ok((
            q,
            gptq::GptqReport {
                damp_requested: factored.damp_requested,
                damp_used: factored.damp_used,
                damp_retries: factored.damp_retries,
                dead_columns: factored.dead.len(),
                proxy_error: gptq::relative_to(traces[1], traces[0]),
                output_energy: traces[0],
                baseline_errors: vec![gptq::relative_to(traces[2], traces[0])],
                perm: None,
                seconds_factor: 0.0,
                seconds_update,
                seconds_error: t.elapsed().as_secs_f64(),
            },
        ))
    }

    /// Quantizes layer `i` stage by stage and advances `hidden` through it.
    pub(super) fn layer(
        &mut self,
        i: usize,
        hidden: &mut [f32],
        on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
        check: &dyn Fn(&str) -> Result<()>,
    ) -> Result<Vec<LinearReport>> {
        let lw = LayerWeights::load(self.view, i)?;
        let layer = DecoderLayer {
            arch: self.arch,
            weights: &lw,
            inv_freq: self.rope_inv,
        };
        let (h, f) = (self.arch.hidden_size, self.arch.intermediate_size);
        let chunks = self.chunks(hidden.len() / h);
        let mut reports = Vec::with_capacity(7);
        // The quantized tensors outlive `done`, which holds them resident.
        let (qkv, o, gate_up, down);
        let mut done = Quantized::default();
        let norm = Self::norm_flops;

        // q, k, v: the normed hidden state.
        let what = format!("layer {i} q/k/v input");
        let hess = self.normed_hessian(hidden, &what, &|hc| layer.attn_input(hc))?;
        check(&format!("layer {i} q/k/v"))?;
        qkv = self.quantize_site(&lw, i, QKV, hess, on_event, &mut reports)?;
        done.add(QKV, self.resident(&qkv)?);

        // o: attention output with the quantized q, k, v.
        let qw = self.arch.num_heads * self.arch.head_dim();
        let mut attn = Vec::with_capacity(hidden.len() / h * qw);
        let mut hess = self.start_hessian(qw, hidden.len() / h)?;
        for c in &chunks {
            let hc = &hidden[c.start * h..c.end * h];
            let x = self
                .phases
                .forward
                .time(norm(hc.len()), || layer.attn_input(hc));
            let out = self.attention(&layer, &done, &x)?;
            self.accumulate(&mut hess, c, &format!("layer {i} attention output"), &out)?;
            attn.extend_from_slice(&out);
        }
        let hess = self.finish_hessian(hess)?;
        check(&format!("layer {i} o"))?;
        o = self.quantize_site(&lw, i, O, hess, on_event, &mut reports)?;
        done.add(O, self.resident(&o)?);
        for c in &chunks {
            let (hc, ac) = (
                &mut hidden[c.start * h..c.end * h],
                &attn[c.start * qw..c.end * qw],
            );
            let flops = done.flops(O, c.len());
            self.phases.forward.time(flops, || {
                layer.add_attn_output(hc, ac, &mut |k, x| done.apply(k, x))
            })?;
        }
        drop(attn);

        // gate, up: the normed hidden state after attention.
        let what = format!("layer {i} gate/up input");
        let hess = self.normed_hessian(hidden, &what, &|hc| layer.mlp_input(hc))?;
        check(&format!("layer {i} gate/up"))?;
        gate_up = self.quantize_site(&lw, i, GATE_UP, hess, on_event, &mut reports)?;
        done.add(GATE_UP, self.resident(&gate_up)?);

        // down: silu(gate)·up with the quantized gate and up.
        let mut hess = self.start_hessian(f, hidden.len() / h)?;
        let mut kept = Vec::with_capacity(if self.store_mlp {
            hidden.len() / h * f
        } else {
            0
        });
        for c in &chunks {
            let act = self.mlp_activation(&layer, &done, &hidden[c.start * h..c.end * h])?;
            self.accumulate(&mut hess, c, &format!("layer {i} down input"), &act)?;
            if self.store_mlp {
                kept.extend_from_slice(&act);
            }
        }
        let hess = self.finish_hessian(hess)?;
        check(&format!("layer {i} down"))?;
        down = self.quantize_site(&lw, i, DOWN, hess, on_event, &mut reports)?;
        done.add(DOWN, self.resident(&down)?);
        for c in &chunks {
            let recomputed;
            let act = match self.store_mlp {
                true => &kept[c.start * f..c.end * f],
                false => {
                    let hc = &hidden[c.start * h..c.end * h];
                    recomputed = self.mlp_activation(&layer, &done, hc)?;
                    &recomputed[..]
                }
            };
            let hc = &mut hidden[c.start * h..c.end * h];
            let flops = done.flops(DOWN, c.len());
            self.phases.forward.time(flops, || {
                layer.add_mlp_output(hc, act, &mut |k, x| done.apply(k, x))
            })?;
        }
        check_hidden(i, hidden, h)?;
        Ok(reports)
    }

    /// Attention output `[rows, heads·hd]` of the normed input `x` of whole
    /// windows, with the quantized q, k, v; attention on the backend.
    fn attention(&mut self, layer: &DecoderLayer, done: &Quantized, x: &[f32]) -> Result<Vec<f32>> {
        let (seq, backend) = (self.seq, self.backend);
        let tokens = x.len() / self.arch.hidden_size;
        let [q, k, v] = self.phases.forward.time(done.flops(QKV, tokens), || {
            layer.qkv(x, seq, 0, &mut |kind, x| done.apply(kind, x))
        })?;
        let shape = layer.attn_shape();
        let windows = tokens / seq;
        let flops = (windows * shape.heads * 4 * seq * seq * shape.head_dim) as f64;
        self.phases.forward.time(flops, || {
            backend.causal_attention(&q, &k, &v, windows, seq, shape)
        })
    }

    /// `silu(gate(x))·up(x)` for `x = rms_norm(hidden)`, quantized gate and up.
    fn mlp_activation(
        &mut self,
        layer: &DecoderLayer,
        done: &Quantized,
        hidden: &[f32],
    ) -> Result<Vec<f32>> {
        let x = self
            .phases
            .forward
            .time(Self::norm_flops(hidden.len()), || layer.mlp_input(hidden));
        let tokens = hidden.len() / self.arch.hidden_size;
        let flops =
            done.flops(GATE_UP, tokens) + 6.0 * (tokens * self.arch.intermediate_size) as f64;
        self.phases.forward.time(flops, || {
            layer.mlp_activation(&x, &mut |kind, x| done.apply(kind, x))
        })
    }

    /// GPTQ of the output head on the final normed hidden state.
    pub(super) fn head(
        &mut self,
        head: &Linear,
        hidden: &[f32],
        on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
    ) -> Result<LinearReport> {
        let norm = forward::load_final_norm(self.view)?;
        let eps = self.arch.rms_norm_eps;
        let (hess, held) = self.normed_hessian(hidden, "output head input", &|hc| {
            ops::rms_norm(hc, &norm, eps)
        })?;
        let name = forward::global_tensor_name(self.view, "head");
        let factored = self.factor(&name, &hess)?;
        let w = head.dense_weights()?;
        let (q, report) =
            self.quantize_linear(&name, &w, head, (&hess, held.as_ref()), &factored)?;
        on_event(GptqEvent::Tensor {
            name: &name,
            shape: [q.rows(), q.cols()],
            q: &q,
            w: &w,
        })?;
        Ok(report)
    }
}

/// The Hessians of one site being accumulated: of the windows GPTQ fits
/// and, when some are held out, of those.
struct SiteHessians<'b> {
    fit: HessianAccumulation<'b>,
    held: Option<HessianAccumulation<'b>>,
}

const QKV: &[TensorKind] = &[TensorKind::AttnQ, TensorKind::AttnK, TensorKind::AttnV];
const O: &[TensorKind] = &[TensorKind::AttnOutput];
const GATE_UP: &[TensorKind] = &[TensorKind::MlpGate, TensorKind::MlpUp];
const DOWN: &[TensorKind] = &[TensorKind::MlpDown];

/// The layer's linears quantized so far, kept on the backend (one upload
/// per layer, not one per chunk) and applied by kind.
#[derive(Default)]
struct Quantized<'q> {
    linears: Vec<(TensorKind, Box<dyn ResidentLinear + 'q>)>,
}

impl<'q> Quantized<'q> {
    fn add(&mut self, kinds: &[TensorKind], resident: Vec<Box<dyn ResidentLinear + 'q>>) {
        self.linears.extend(kinds.iter().copied().zip(resident));
    }

    fn get(&self, kind: TensorKind) -> Result<&dyn ResidentLinear> {
        self.linears
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, l)| &**l)
            .ok_or_else(|| Error::Config(format!("{} used before it was quantized", kind.label())))
    }

    /// `x · Wᵀ` on the backend.
    fn apply(&self, kind: TensorKind, x: &[f32]) -> Result<Vec<f32>> {
        let w = self.get(kind)?;
        w.apply(x, x.len() / w.shape()[1])
    }

    /// FLOPs of applying the linears `kinds` to `tokens` rows.
    fn flops(&self, kinds: &[TensorKind], tokens: usize) -> f64 {
        kinds
            .iter()
            .filter_map(|&k| self.get(k).ok())
            .map(|w| 2.0 * (tokens * w.shape()[0] * w.shape()[1]) as f64)
            .sum()
    }
}

/// `q/k/v`, `gate/up`, ... for log and error messages.
fn site_label(kinds: &[TensorKind]) -> String {
    kinds
        .iter()
        .map(|k| k.label())
        .collect::<Vec<_>>()
        .join("/")
}

/// The quantized layer's output must stay finite (an overflowing layer would
/// otherwise poison every later Hessian).
fn check_hidden(i: usize, hidden: &[f32], width: usize) -> Result<()> {
    match hidden.par_iter().position_first(|x| !x.is_finite()) {
        None => Ok(()),
        Some(at) => Err(Error::BadTensor {
            name: format!("layer {i} output on the calibration windows"),
            msg: format!(
                "value {} at row {} is not finite after quantizing the layer; the \
                 weights or the calibration text produce overflowing activations",
                hidden[at],
                at / width.max(1)
            ),
        }),
    }
}
