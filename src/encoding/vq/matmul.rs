//! CPU VQ dequant-matmul `y[tokens, rows] = x[tokens, cols] · Wᵀ`, never
//! expanding W beyond a few rows: GEMV decodes each row by centroid
//! lookup into a row-sized scratch (the codebooks are a few KiB and stay in
//! L1) and takes the vectorised dot with every token; from
//! [`gemm::MIN_TOKENS`] tokens on, blocks of rows are decoded into a
//! cache-sized scratch and multiplied by SGEMM, as the affine kernels do.

use super::VqTensor;
use crate::encoding::affine::packing::unpack_code;
use crate::error::{Error, Result};
use crate::gemm::{self, dot};
use rayon::prelude::*;

/// Rows decoded together; each token's `x` row stays in L1 across them.
const ROW_BLOCK: usize = 8;

fn check_inputs(v: &VqTensor, x: &[f32], tokens: usize) -> Result<()> {
    v.validate("matmul weight")?;
    if x.len() != tokens * v.cols {
        return Err(Error::Config(format!(
            "matmul input has {} values, expected {tokens} tokens x {} columns",
            x.len(),
            v.cols
        )));
    }
    Ok(())
}

pub fn matmul(v: &VqTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
    check_inputs(v, x, tokens)?;
    let (rows, cols) = (v.rows, v.cols);
    if tokens == 0 {
        return Ok(Vec::new());
    }
    let nidx = cols / v.scheme.dim as usize;
    if tokens >= gemm::MIN_TOKENS {
        return Ok(gemm::blocked_xwt(x, tokens, cols, rows, &|r0, n, wb| {
            let mut idx = vec![0u32; nidx];
            for (i, out) in wb.chunks_exact_mut(cols).take(n).enumerate() {
                v.dequantize_row(r0 + i, &mut idx, out);
            }
        }));
    }
    let mut yt = vec![0f32; rows * tokens];
    yt.par_chunks_mut(ROW_BLOCK * tokens)
        .enumerate()
        .for_each_init(
            || (vec![0u32; nidx], vec![0f32; ROW_BLOCK * cols]),
            |(idx, w), (b, out)| {
                let r0 = b * ROW_BLOCK;
                let n = out.len() / tokens;
                for i in 0..n {
                    v.dequantize_row(r0 + i, idx, &mut w[i * cols..(i + 1) * cols]);
                }
                for t in 0..tokens {
                    let xt = &x[t * cols..(t + 1) * cols];
                    for i in 0..n {
                        out[i * tokens + t] = dot(&w[i * cols..(i + 1) * cols], xt);
                    }
                }
            },
        );
    if tokens == 1 {
        return Ok(yt);
    }
    Ok(gemm::transpose(&yt, tokens, rows))
}

/// Plain reference: each weight looked up on its own, accumulated in f64.
pub fn matmul_reference(v: &VqTensor, x: &[f32], tokens: usize) -> Result<Vec<f64>> {
    check_inputs(v, x, tokens)?;
    let (rows, cols, s) = (v.rows, v.cols, &v.scheme);
    let (d, words, len) = (
        s.dim as usize,
        super::index_words(s, cols),
        s.codebook_len(),
    );
    let mut y = vec![0f64; tokens * rows];
    for r in 0..rows {
        let row = &v.indices[r * words..(r + 1) * words];
        let w: Vec<f64> = (0..cols)
            .map(|j| {
                let i = unpack_code(row, s.index_bits(), j / d) as usize;
                let cb = s.codebook_of(cols, r, j);
                v.codebooks[cb * len + i * d + j % d] as f64
            })
            .collect();
        for t in 0..tokens {
            y[t * rows + r] = w
                .iter()
                .zip(&x[t * cols..(t + 1) * cols])
                .map(|(a, b)| a * *b as f64)
                .sum();
        }
    }
    Ok(y)
}
