//! One decoder layer of the calibration forward, run and quantized stage by
//! stage (each stage fed by the already-quantized stages before it).

use super::report::{LinearReport, Phases};
use super::GptqEvent;
use crate::backend::{Backend, ResidentLinear};
use crate::error::{Error, Result};
use crate::model::arch::ArchConfig;
use crate::model::forward::ops::{self, AttnShape, RopeTable};
use crate::model::forward::{self, LayerWeights, Linear};
use crate::model::{ModelView, TensorKind};
use crate::quant::gptq::{self, GptqOptions, Hessian, HessianAccumulation};
use crate::quant::{rtn, QuantScheme, QuantizedTensor};
use rayon::prelude::*;
use std::time::Instant;

/// Runs and quantizes one layer at a time.
pub(super) struct LayerRunner<'a> {
    pub(super) backend: &'a dyn Backend,
    pub(super) view: &'a ModelView,
    pub(super) arch: &'a ArchConfig,
    pub(super) scheme: &'a QuantScheme,
    pub(super) opts: &'a GptqOptions,
    pub(super) rope_inv: Vec<f64>,
    /// Tokens per window, windows per chunk.
    pub(super) seq: usize,
    pub(super) chunk: usize,
    pub(super) store_mlp: bool,
    pub(super) phases: Phases,
}

/// The dense f32 weight of a linear (a packed source is dequantized).
fn dense(linear: &Linear) -> Result<Vec<f32>> {
    match linear {
        Linear::Dense { w, .. } => Ok(w.clone()),
        Linear::Packed(q) => q.dequantize(),
    }
}

impl<'a> LayerRunner<'a> {
    /// Row ranges of the chunks of `rows_total` hidden rows.
    fn chunks(&self, rows_total: usize) -> Vec<std::ops::Range<usize>> {
        let step = self.chunk * self.seq;
        (0..rows_total)
            .step_by(step)
            .map(|s| s..(s + step).min(rows_total))
            .collect()
    }

    fn rms_norm(&mut self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let flops = 4.0 * x.len() as f64;
        let eps = self.arch.rms_norm_eps;
        self.phases.forward.time(flops, || ops::rms_norm(x, w, eps))
    }

    /// Each of `qs` kept on the backend for the chunks of the forward (one
    /// upload per layer, not one per chunk).
    fn resident<'q>(
        &mut self,
        qs: &'q [QuantizedTensor],
    ) -> Result<Vec<Box<dyn ResidentLinear + 'q>>>
    where
        'a: 'q,
    {
        let backend: &'q dyn Backend = self.backend;
        self.phases.forward.time(0.0, || {
            qs.iter().map(|q| backend.resident_linear(q)).collect()
        })
    }

    /// `x · Wᵀ` for a quantized linear, on the backend.
    fn apply(&mut self, w: &dyn ResidentLinear, x: &[f32]) -> Result<Vec<f32>> {
        let [rows, cols] = w.shape();
        let tokens = x.len() / cols;
        let flops = 2.0 * (tokens * rows * cols) as f64;
        self.phases.forward.time(flops, || w.apply(x, tokens))
    }

    /// Adds `x` to a Hessian the backend keeps. Its kernels may still run
    /// when this returns; [`LayerRunner::finish_hessian`] times the rest.
    fn accumulate(&mut self, hess: &mut HessianAccumulation, what: &str, x: &[f32]) -> Result<()> {
        let cols = hess.cols();
        let tokens = x.len() / cols;
        let flops = (tokens * cols * (cols + 1)) as f64;
        self.phases
            .hessian
            .time(flops, || hess.add_batch(what, x, tokens))
    }

    fn start_hessian(&self, cols: usize) -> Result<HessianAccumulation<'a>> {
        HessianAccumulation::new(self.backend, cols)
    }

    fn finish_hessian(&mut self, hess: HessianAccumulation) -> Result<Hessian> {
        self.phases.hessian.time(0.0, || hess.finish())
    }

    /// GPTQ (and, for the report, RTN) of the linears `kinds` of layer `i`,
    /// all reading the inputs whose Hessian is `hess`.
    fn quantize_site(
        &mut self,
        lw: &LayerWeights,
        i: usize,
        kinds: &[TensorKind],
        hess: &Hessian,
        on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
        reports: &mut Vec<LinearReport>,
    ) -> Result<Vec<QuantizedTensor>> {
        let mut out = Vec::with_capacity(kinds.len());
        let site = format!("layer {i} {}", site_label(kinds));
        let factored = self.factor(&site, hess)?;
        for &kind in kinds {
            let name = LayerWeights::tensor_name(self.view, i, kind)
                .expect("site kinds are block linears");
            let linear = lw.linear(kind).expect("site kinds are block linears");
            let w = dense(linear)?;
            let (q, report) = self.quantize_linear(&name, &w, linear, hess, &factored)?;
            on_event(GptqEvent::Tensor {
                name: &name,
                shape: [q.rows, q.cols],
                q: &q,
                w: &w,
            })?;
            reports.push(report);
            out.push(q);
        }
        Ok(out)
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
        hess: &Hessian,
        factored: &gptq::Factored,
    ) -> Result<(QuantizedTensor, LinearReport)> {
        let (rows, cols) = (linear.rows(), linear.cols());
        // RTN first, so its error is measured in the same trace call as GPTQ's.
        let t = Instant::now();
        let rq = rtn::quantize(self.backend, name, w, rows, cols, self.scheme)?;
        let rw = self.backend.dequantize(&rq)?;
        let rtn_seconds = t.elapsed().as_secs_f64();
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
        let (_, update_flops) = gptq::flops(rows, cols, self.opts.block);
        self.phases.update.add(r.seconds_update, update_flops);
        // Three traces (W, GPTQ's ΔW, RTN's ΔW) of 2·rows·cols² each.
        let trace_flops = 2.0 * (rows * cols * cols) as f64;
        self.phases
            .report
            .add(rtn_seconds + r.seconds_error, 3.0 * trace_flops);
        let rtn_error = r.baseline_errors[0];
        let report = LinearReport {
            name: name.to_string(),
            rows,
            cols,
            gptq_error: r.proxy_error,
            rtn_error,
            damp_used: r.damp_used,
            damp_retries: r.damp_retries,
            dead_columns: r.dead_columns,
            seconds: r.seconds_update,
        };
        Ok((q, report))
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
        let a = self.arch;
        let (h, f) = (a.hidden_size, a.intermediate_size);
        let chunks = self.chunks(hidden.len() / h);
        let mut reports = Vec::with_capacity(7);

        // q, k, v: the normed hidden state.
        let mut hess = self.start_hessian(h)?;
        for c in &chunks {
            let x = self.rms_norm(&hidden[c.start * h..c.end * h], &lw.attn_norm);
            self.accumulate(&mut hess, &format!("layer {i} q/k/v input"), &x)?;
        }
        let hess = self.finish_hessian(hess)?;
        check(&format!("layer {i} q/k/v"))?;
        let qkv = self.quantize_site(
            &lw,
            i,
            &[TensorKind::AttnQ, TensorKind::AttnK, TensorKind::AttnV],
            &hess,
            on_event,
            &mut reports,
        )?;
        let qkv = self.resident(&qkv)?;

        // o: attention output with the quantized q, k, v.
        let qw = a.num_heads * a.head_dim();
        let mut attn = Vec::with_capacity(hidden.len() / h * qw);
        let mut hess = self.start_hessian(qw)?;
        for c in &chunks {
            let x = self.rms_norm(&hidden[c.start * h..c.end * h], &lw.attn_norm);
            let out = self.attention(&lw, &qkv, &x)?;
            self.accumulate(&mut hess, &format!("layer {i} attention output"), &out)?;
            attn.extend_from_slice(&out);
        }
        let hess = self.finish_hessian(hess)?;
        check(&format!("layer {i} o"))?;
        let o = self.quantize_site(
            &lw,
            i,
            &[TensorKind::AttnOutput],
            &hess,
            on_event,
            &mut reports,
        )?;
        let o = self.resident(&o)?;
        for c in &chunks {
            let y = self.apply(&*o[0], &attn[c.start * qw..c.end * qw])?;
            ops::add_in_place(&mut hidden[c.start * h..c.end * h], &y);
        }
        drop(attn);

        // gate, up: the normed hidden state after attention.
        let mut hess = self.start_hessian(h)?;
        for c in &chunks {
            let x = self.rms_norm(&hidden[c.start * h..c.end * h], &lw.ffn_norm);
            self.accumulate(&mut hess, &format!("layer {i} gate/up input"), &x)?;
        }
        let hess = self.finish_hessian(hess)?;
        check(&format!("layer {i} gate/up"))?;
        let gate_up = self.quantize_site(
            &lw,
            i,
            &[TensorKind::MlpGate, TensorKind::MlpUp],
            &hess,
            on_event,
            &mut reports,
        )?;
        let gate_up = self.resident(&gate_up)?;

        // down: silu(gate)·up with the quantized gate and up.
        let mut hess = self.start_hessian(f)?;
        let mut kept = Vec::with_capacity(if self.store_mlp {
            hidden.len() / h * f
        } else {
            0
        });
        for c in &chunks {
            let act = self.mlp_activation(&lw, &gate_up, &hidden[c.start * h..c.end * h])?;
            self.accumulate(&mut hess, &format!("layer {i} down input"), &act)?;
            if self.store_mlp {
                kept.extend_from_slice(&act);
            }
        }
        let hess = self.finish_hessian(hess)?;
        check(&format!("layer {i} down"))?;
        let down = self.quantize_site(
            &lw,
            i,
            &[TensorKind::MlpDown],
            &hess,
            on_event,
            &mut reports,
        )?;
        let down = self.resident(&down)?;
        for c in &chunks {
            let recomputed;
            let act = match self.store_mlp {
                true => &kept[c.start * f..c.end * f],
                false => {
                    recomputed =
                        self.mlp_activation(&lw, &gate_up, &hidden[c.start * h..c.end * h])?;
                    &recomputed[..]
                }
            };
            let y = self.apply(&*down[0], act)?;
            ops::add_in_place(&mut hidden[c.start * h..c.end * h], &y);
        }
        check_hidden(i, hidden, h)?;
        Ok(reports)
    }

    /// Attention output `[rows, heads·hd]` of the normed input `x` of whole
    /// windows, with the quantized q, k, v.
    fn attention(
        &mut self,
        lw: &LayerWeights,
        qkv: &[Box<dyn ResidentLinear + '_>],
        x: &[f32],
    ) -> Result<Vec<f32>> {
        let a = self.arch;
        let mut q = self.apply(&*qkv[0], x)?;
        let mut k = self.apply(&*qkv[1], x)?;
        let mut v = self.apply(&*qkv[2], x)?;
        let shape = AttnShape {
            heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim(),
        };
        let (seq, inv) = (self.seq, &self.rope_inv);
        let (qw, kvw) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let windows = q.len() / (seq * qw);
        let flops = (windows * shape.heads * 4 * seq * seq * shape.head_dim) as f64;
        let backend = self.backend;
        self.phases.forward.time(flops, || {
            if let Some(b) = &lw.qkv_bias {
                ops::add_bias(&mut q, &b.q);
                ops::add_bias(&mut k, &b.k);
                ops::add_bias(&mut v, &b.v);
            }
            let rope = RopeTable::new(0, seq, inv);
            for b in 0..windows {
                rope.apply(
                    &mut q[b * seq * qw..][..seq * qw],
                    shape.heads,
                    a.rope_adjacent_pairs,
                );
                let kb = &mut k[b * seq * kvw..][..seq * kvw];
                rope.apply(kb, shape.kv_heads, a.rope_adjacent_pairs);
            }
            backend.causal_attention(&q, &k, &v, windows, seq, shape)
        })
    }

    /// `silu(gate(x))·up(x)` for `x = rms_norm(hidden)`, quantized gate and up.
    fn mlp_activation(
        &mut self,
        lw: &LayerWeights,
        gate_up: &[Box<dyn ResidentLinear + '_>],
        hidden: &[f32],
    ) -> Result<Vec<f32>> {
        let x = self.rms_norm(hidden, &lw.ffn_norm);
        let mut g = self.apply(&*gate_up[0], &x)?;
        let u = self.apply(&*gate_up[1], &x)?;
        let flops = 6.0 * g.len() as f64;
        self.phases
            .forward
            .time(flops, || ops::silu_mul(&mut g, &u));
        Ok(g)
    }

    /// GPTQ of the output head on the final normed hidden state.
    pub(super) fn head(
        &mut self,
        head: &Linear,
        hidden: &[f32],
        on_event: &mut dyn FnMut(GptqEvent) -> Result<()>,
    ) -> Result<LinearReport> {
        let norm = forward::load_final_norm(self.view)?;
        let h = self.arch.hidden_size;
        let mut hess = self.start_hessian(h)?;
        for c in self.chunks(hidden.len() / h) {
            let x = self.rms_norm(&hidden[c.start * h..c.end * h], &norm);
            self.accumulate(&mut hess, "output head input", &x)?;
        }
        let hess = self.finish_hessian(hess)?;
        let name = forward::global_tensor_name(self.view, "head");
        let factored = self.factor(&name, &hess)?;
        let w = dense(head)?;
        let (q, report) = self.quantize_linear(&name, &w, head, &hess, &factored)?;
        on_event(GptqEvent::Tensor {
            name: &name,
            shape: [q.rows, q.cols],
            q: &q,
            w: &w,
        })?;
        Ok(report)
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
