//! One linear under GPTVQ in the sequential pipeline: its phases (EM,
//! column loop, codebook update) and, for the report, GPTQ at the
//! pipeline's affine scheme on the same factored Hessian.

use super::layer::LayerRunner;
use crate::encoding::VqTensor;
use crate::error::Result;
use crate::quant::gptq::{self, Factored, GptqReport};
use crate::quant::gptvq::{self, GptvqOptions};
use std::time::Instant;

impl LayerRunner<'_> {
    /// GPTVQ of `w` `[rows, cols]` scored against RTN's `rw` and, when
    /// asked, GPTQ's (whose error is returned as the third value; its time
    /// counts with the report, not with GPTVQ).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gptvq_linear(
        &mut self,
        name: &str,
        w: &[f32],
        (rows, cols): (usize, usize),
        h: &[f32],
        factored: &Factored,
        o: &GptvqOptions,
        rw: &[f32],
    ) -> Result<(VqTensor, GptqReport, Option<f64>)> {
        let gw = match self.gptq_baseline {
            true => {
                let t = Instant::now();
                let (gq, _) = gptq::quantize_factored(
                    self.backend,
                    name,
                    w,
                    rows,
                    cols,
                    h,
                    factored,
                    self.scheme,
                    self.opts,
                    &[],
                )?;
                let gw = self.backend.dequantize(&gq)?;
                let (_, flops) = gptq::flops(rows, cols, self.opts.block);
                self.phases.report.add(t.elapsed().as_secs_f64(), flops);
                Some(gw)
            }
            false => None,
        };
        let weight = gptq::Weight::new(name, w, rows, cols, h)?;
        let mut baselines: Vec<&[f32]> = vec![rw];
        baselines.extend(gw.as_deref());
        let (v, r) = gptvq::quantize_factored(
            self.backend,
            &weight,
            factored,
            o,
            self.opts.block,
            &baselines,
        )?;
        self.phases.em.add(r.seconds_em, r.em_flops);
        self.phases.update.add(r.seconds_assign, r.assign_flops);
        self.phases
            .codebook
            .add(r.seconds_codebook_update, r.codebook_flops);
        let baseline = r.gptq.baseline_errors.get(1).copied();
        Ok((v, r.gptq, baseline))
    }
}
