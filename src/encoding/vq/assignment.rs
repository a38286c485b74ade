//! The assignment structure `P` of a VQ weight: `Q = P c` scatters each
//! codebook value `c` onto the weights whose vectors point at it (times
//! the weight's row scale, when the scheme has them). GPTVQ's
//! codebook update ([`crate::quant::gptvq::update`]) solves normal
//! equations built from `P c` ([`Assignment::expand`]) and `Pᵀ g`
//! ([`Assignment::gather`]); this is their CPU reference, and
//! `shaders/vq_codebook.wgsl` the GPU's.

use super::{index_words, VqTensor};
use crate::encoding::affine::packing::unpack_row;
use rayon::prelude::*;

/// `P` of one VQ weight, its indices unpacked.
pub struct Assignment<'a> {
    t: &'a VqTensor,
    idx: Vec<u32>,
}

impl<'a> Assignment<'a> {
    pub fn new(t: &'a VqTensor) -> Self {
        let s = &t.scheme;
        let (n, words) = (t.cols / s.dim as usize, index_words(s, t.cols));
        let mut idx = vec![0u32; t.rows * n];
        idx.par_chunks_mut(n).enumerate().for_each(|(r, o)| {
            unpack_row(&t.indices[r * words..(r + 1) * words], s.index_bits(), o)
        });
        Self { t, idx }
    }

    /// Codebook values of the weight (`P`'s columns).
    pub fn values(&self) -> usize {
        self.t.codebooks.len()
    }

    /// Slot of the weight `(r, j)` among the codebook values.
    #[inline]
    fn slot(&self, r: usize, j: usize) -> usize {
        let s = &self.t.scheme;
        let d = s.dim as usize;
        let i = self.idx[r * (self.t.cols / d) + j / d] as usize;
        s.codebook_of(self.t.cols, r, j) * s.codebook_len() + i * d + j % d
    }

    /// The row scale of the weight `(r, j)` (1 without row scales).
    #[inline]
    fn scale(&self, r: usize, j: usize) -> f32 {
        self.t.unit_scale(r, j / self.t.scheme.unit())
    }

    /// `P c`: the `[rows, cols]` weight the codebook values `c` decode to.
    pub fn expand(&self, c: &[f32]) -> Vec<f32> {
        let cols = self.t.cols;
        let mut q = vec![0f32; self.t.rows * cols];
        q.par_chunks_mut(cols).enumerate().for_each(|(r, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.scale(r, j) * c[self.slot(r, j)];
            }
        });
        q
    }

    /// `Pᵀ g` for a `[rows, cols]` `g`: each weight's value added onto its
    /// codebook value, in f64 (row groups in parallel: each owns its
    /// codebooks).
    pub fn gather(&self, g: &[f32]) -> Vec<f64> {
        let s = &self.t.scheme;
        let (rows, cols, rpc) = (self.t.rows, self.t.cols, s.rows_per_codebook());
        let per_group = s.spans(cols) * s.codebook_len();
        let mut out = vec![0f64; self.values()];
        out.par_chunks_mut(per_group)
            .enumerate()
            .for_each(|(rg, o)| {
                let base = rg * per_group;
                for r in rg * rpc..((rg + 1) * rpc).min(rows) {
                    for j in 0..cols {
                        o[self.slot(r, j) - base] +=
                            self.scale(r, j) as f64 * g[r * cols + j] as f64;
                    }
                }
            });
        out
    }
}
