//! The CPU backend: rayon over rows. It is the reference the GPU kernels are
//! tested against, and a real choice on machines without a GPU.

pub mod cholesky;
pub mod gemm;
pub mod gptq;
pub mod matmul;
mod simd;
pub mod trace;

use super::{
    check_cholesky_args, check_gptq_block_args, check_gptq_rest_args, check_hessian_args,
    check_trace_args, Backend, GptqBlock, GptqBlockOut, GroupParams,
};
use crate::error::Result;
use crate::quant::packed::{pack_row, unpack_codes, unpack_row, words_per_row, QuantizedTensor};
use crate::quant::scheme::quantize_value;
use rayon::prelude::*;

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
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
        q.validate("dequantize input")?;
        let mut out = vec![0f32; q.rows * q.cols];
        out.par_chunks_mut(q.cols).enumerate().for_each_init(
            || vec![0u32; q.cols],
            |codes, (r, row)| dequantize_row(q, r, codes, row),
        );
        Ok(out)
    }

    fn matmul(&self, q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        matmul::matmul(q, x, tokens)
    }

    fn hessian_update(
        &self,
        h: &mut [f32],
        cols: usize,
        n_seen: usize,
        x: &[f32],
        tokens: usize,
    ) -> Result<()> {
        check_hessian_args(h, cols, x, tokens)?;
        gptq::hessian_update(h, cols, n_seen, x, tokens);
        Ok(())
    }

    fn gptq_block(
        &self,
        w: &mut [f32],
        rows: usize,
        cols: usize,
        block: &GptqBlock,
        out: &mut GptqBlockOut,
    ) -> Result<()> {
        check_gptq_block_args(w, rows, cols, block, out)?;
        gptq::gptq_block(w, cols, block, out);
        Ok(())
    }

    fn gptq_update_rest(
        &self,
        w: &mut [f32],
        rows: usize,
        cols: usize,
        end: usize,
        err: &[f32],
        hinv_rest: &[f32],
    ) -> Result<()> {
        check_gptq_rest_args(w, rows, cols, end, err, hinv_rest)?;
        gptq::gptq_update_rest(w, cols, end, err, hinv_rest);
        Ok(())
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

/// Row `r` of a validated `q` as f32 into `out` (`cols` values); `codes` is
/// scratch of at least `cols`.
pub(crate) fn dequantize_row(q: &QuantizedTensor, r: usize, codes: &mut [u32], out: &mut [f32]) {
    let (wpr, groups, glen) = (q.words_per_row(), q.n_groups(), q.scheme.group_len(q.cols));
    let codes = &mut codes[..q.cols];
    unpack_row(&q.packed[r * wpr..(r + 1) * wpr], q.scheme.bits, codes);
    for (g, (y, c)) in out[..q.cols]
        .chunks_mut(glen)
        .zip(codes.chunks(glen))
        .enumerate()
    {
        let (s, z) = (q.scales[r * groups + g], q.zeros[r * groups + g] as f32);
        for (y, &c) in y.iter_mut().zip(c.iter()) {
            *y = s * (c as f32 - z);
        }
    }
}
