//! The CPU backend: rayon over rows. It is the reference the GPU kernels are
//! tested against, and a real choice on machines without a GPU.

pub mod cholesky;
pub mod gptq;
pub mod ops;
pub mod trace;

use super::{
    check_attention_args, check_cholesky_args, check_gptq_args, check_hessian_start,
    check_trace_args, Backend, CodebookSystem, GptqColumns, GptqSpec, GroupParams, ResidentHessian,
};
use crate::encoding::affine::packing::{pack_row, unpack_codes, words_per_row};
use crate::encoding::affine::scheme::quantize_value;
use crate::encoding::vq::assignment::Assignment;
use crate::encoding::{QuantizedTensor, VqTensor};
use crate::error::Result;
use ops::AttnShape;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

/// [`CodebookSystem`] on the host: the reference operator and an SGEMM.
struct CpuCodebookSystem<'a> {
    p: Assignment<'a>,
    h: &'a [f32],
    rows: usize,
    cols: usize,
}

impl CodebookSystem for CpuCodebookSystem<'_> {
    fn apply(&mut self, c: &[f32]) -> Result<Vec<f64>> {
        self.apply_dense(&self.p.expand(c))
    }

    fn apply_dense(&mut self, w: &[f32]) -> Result<Vec<f64>> {
        let (r, c) = (self.rows, self.cols);
        Ok(self.p.gather(&crate::gemm::dense_xwt(w, self.h, r, c, c)))
    }

    fn gather(&mut self, g: &[f32]) -> Result<Vec<f64>> {
        Ok(self.p.gather(g))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn vq_em(
        &self,
        points: &[f32],
        weights: &[f32],
        groups: usize,
        k: usize,
        iters: usize,
        centroids: &mut [f32],
    ) -> Result<usize> {
        let d = super::check_vq_em_args(points, weights, groups, k, centroids)?;
        let n = weights.len() / (groups * d);
        Ok(centroids
            .par_chunks_mut(k * d)
            .zip(points.par_chunks(n * d))
            .zip(weights.par_chunks(n * d))
            .map(|((cb, pts), wts)| crate::encoding::vq::em::iterate(pts, wts, d, k, iters, cb))
            .max()
            .unwrap_or(0))
    }

    fn vq_codebook_system<'a>(
        &'a self,
        t: &'a VqTensor,
        h: &'a [f32],
    ) -> Result<Box<dyn CodebookSystem + 'a>> {
        super::check_codebook_system_args(t, h)?;
        Ok(Box::new(CpuCodebookSystem {
            p: Assignment::new(t),
            h,
            rows: t.rows,
            cols: t.cols,
        }))
    }

    fn abs_histogram(&self, x: &[f32], bins: usize, inv_width: f32) -> Result<Vec<u32>> {
        Ok(ops::abs_histogram(x, bins, inv_width))
    }

    fn group_ranges(
        &self,
        w: &[f32],
        _rows: usize,
        cols: usize,
        group_len: usize,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        // Per row, so a shorter last group never spills into the next row.
        let per_row: Vec<Vec<(f32, f32)>> = w
            .par_chunks(cols)
            .map(|row| {
                row.chunks(group_len)
                    .map(|g| {
                        g.iter()
                            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
                                (lo.min(x), hi.max(x))
                            })
                    })
                    .collect()
            })
            .collect();
        Ok(per_row.into_iter().flatten().unzip())
    }

    fn quantize_codes(
        &self,
        w: &[f32],
        _rows: usize,
        cols: usize,
        p: &GroupParams,
    ) -> Result<Vec<u32>> {
        let wpr = words_per_row(cols, p.bits);
        let groups = cols.div_ceil(p.group_len);
        let maxq = (1u32 << p.bits) - 1;
        let mut out = vec![0u32; w.len() / cols * wpr];
        out.par_chunks_mut(wpr)
            .zip(w.par_chunks(cols))
            .enumerate()
            .for_each_init(
                || vec![0u32; cols],
                |codes, (r, (packed, row))| {
                    for (g, (c, x)) in codes
                        .chunks_mut(p.group_len)
                        .zip(row.chunks(p.group_len))
                        .enumerate()
                    {
                        let (inv, zero) = (p.inv_scales[r * groups + g], p.zeros[r * groups + g]);
                        for (c, &x) in c.iter_mut().zip(x) {
                            *c = quantize_value(x, inv, zero, maxq);
                        }
                    }
                    pack_row(codes, p.bits, packed);
                },
            );
        Ok(out)
    }

    fn pack(&self, codes: &[u32], _rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>> {
        let wpr = words_per_row(cols, bits);
        let mut out = vec![0u32; codes.len() / cols * wpr];
        out.par_chunks_mut(wpr)
            .zip(codes.par_chunks(cols))
            .for_each(|(o, c)| pack_row(c, bits, o));
        Ok(out)
    }

    fn unpack(&self, packed: &[u32], rows: usize, cols: usize, bits: u32) -> Result<Vec<u32>> {
        Ok(unpack_codes(packed, rows, cols, bits))
    }

    fn dequantize(&self, q: &QuantizedTensor) -> Result<Vec<f32>> {
        q.dequantize()
    }

    fn matmul(&self, q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        q.matmul(x, tokens)
    }

    fn causal_attention(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        windows: usize,
        seq: usize,
        shape: AttnShape,
    ) -> Result<Vec<f32>> {
        check_attention_args(q, k, v, windows, seq, shape)?;
        let (qw, kvw) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let mut out = Vec::with_capacity(q.len());
        for b in 0..windows {
            let (qs, ks) = (
                b * seq * qw..(b + 1) * seq * qw,
                b * seq * kvw..(b + 1) * seq * kvw,
            );
            out.extend(ops::attention(
                &q[qs],
                &k[ks.clone()],
                &v[ks],
                seq,
                0,
                shape,
            ));
        }
        Ok(out)
    }

    fn resident_hessian<'a>(
        &'a self,
        h: Vec<f32>,
        cols: usize,
        n_seen: usize,
    ) -> Result<Box<dyn ResidentHessian + 'a>> {
        check_hessian_start(&h, cols)?;
        Ok(Box::new(gptq::CpuHessian::new(h, cols, n_seen)))
    }

    fn gptq_columns<'a>(
        &'a self,
        w: Vec<f32>,
        rows: usize,
        cols: usize,
        spec: GptqSpec<'a>,
    ) -> Result<Box<dyn GptqColumns + 'a>> {
        check_gptq_args(&w, rows, cols, &spec)?;
        Ok(Box::new(gptq::CpuGptqColumns::new(w, rows, cols, spec)))
    }

    fn inverse_cholesky_upper(&self, h: &[f32], n: usize) -> Result<Option<Vec<f32>>> {
        check_cholesky_args(h, n)?;
        Ok(cholesky::inverse_cholesky_upper(h, n))
    }

    fn quadratic_traces(&self, h: &[f32], cols: usize, mats: &[&[f32]]) -> Result<Vec<f64>> {
        check_trace_args(h, cols, mats)?;
        Ok(mats
            .iter()
            .map(|a| trace::quadratic_trace(a, h, cols))
            .collect())
    }
}
