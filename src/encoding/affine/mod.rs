//! Linear integer codes: `w = scale · (q − zero)` with one scale and
//! zero-point per group of a row ([`scheme`]), codes packed as a bit
//! stream per row ([`packing`]), the grid GPTQ rounds onto ([`grid`]) and
//! the `diag(H)`-weighted choice of a group's parameters ([`search`]).
//!
//! Stored parts of a weight `NAME` (the llmq format, see
//! [`crate::formats::llmq`]): `NAME.qweight` (U32 `[rows, words_per_row]`),
//! `NAME.scales` (F16 `[rows, groups]`) and, for asymmetric schemes only,
//! `NAME.zeros` (U8 `[rows, groups]`; symmetric zero-points are always
//! [`scheme::symmetric_zero`]). Resident on a backend, scales are f32 and
//! every group has a u8 zero-point.

pub mod clip;
pub mod grid;
pub mod matmul;
pub mod packing;
pub mod scheme;
pub mod search;
pub(crate) mod simd;

pub use grid::AffineGrid;
pub use scheme::{Granularity, QuantScheme};

use super::{to_f16, Dtype, Encoding, Part};
use crate::error::{Error, Result};
use packing::{unpack_row, words_per_row};
use rayon::prelude::*;
use scheme::symmetric_zero;

/// A `[rows, cols]` weight matrix (PyTorch order: rows = output channels)
/// quantized with one scheme, as resident in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub rows: usize,
    pub cols: usize,
    pub scheme: QuantScheme,
    /// `rows * words_per_row(cols, bits)` packed codes.
    pub packed: Vec<u32>,
    /// `rows * n_groups` scales, row-major.
    pub scales: Vec<f32>,
    /// `rows * n_groups` zero-points (codes), row-major.
    pub zeros: Vec<u8>,
}

/// The parts of a `[rows, cols]` weight under `s`.
pub(crate) fn parts(s: &QuantScheme, rows: usize, cols: usize) -> Vec<Part> {
    let groups = s.groups_per_row(cols);
    let mut parts = vec![
        Part {
            suffix: "qweight",
            dtype: Dtype::U32,
            shape: [rows, words_per_row(cols, s.bits)],
        },
        Part {
            suffix: "scales",
            dtype: Dtype::F16,
            shape: [rows, groups],
        },
    ];
    if !s.symmetric {
        parts.push(Part {
            suffix: "zeros",
            dtype: Dtype::U8,
            shape: [rows, groups],
        });
    }
    parts
}

/// Codes, f32 scales and u8 zero-points of a `[rows, cols]` weight under `s`.
pub(crate) fn resident_bytes(s: &QuantScheme, rows: usize, cols: usize) -> u64 {
    let params = (rows * s.groups_per_row(cols)) as u64;
    (rows * words_per_row(cols, s.bits)) as u64 * 4 + params * (4 + 1)
}

impl QuantizedTensor {
    pub fn encoding(&self) -> Encoding {
        Encoding::Affine(self.scheme)
    }

    /// Scale/zero pairs per row (the last group may be shorter).
    pub fn n_groups(&self) -> usize {
        self.scheme.groups_per_row(self.cols)
    }

    pub fn words_per_row(&self) -> usize {
        words_per_row(self.cols, self.scheme.bits)
    }

    /// Bytes stored in a file ([`Encoding::stored_bytes`]).
    pub fn stored_bytes(&self) -> u64 {
        self.encoding().stored_bytes(self.rows, self.cols)
    }

    /// Bytes a matmul reads when resident ([`Encoding::resident_bytes`]).
    pub fn resident_bytes(&self) -> u64 {
        self.encoding().resident_bytes(self.rows, self.cols)
    }

    /// Checks that the buffer lengths agree with the shape and scheme.
    pub fn validate(&self, name: &str) -> Result<()> {
        self.scheme.check_shape(name, self.rows, self.cols)?;
        let params = self.rows * self.n_groups();
        let want = self.rows * self.words_per_row();
        if self.packed.len() != want || self.scales.len() != params || self.zeros.len() != params {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "inconsistent quantized buffers: {} code words (want {want}), {} scales and {} zeros (want {params})",
                    self.packed.len(),
                    self.scales.len(),
                    self.zeros.len()
                ),
            });
        }
        Ok(())
    }

    /// The bytes of each stored part ([`parts`]) of the weight `name`,
    /// little-endian; checked first (shapes, scales that fit f16, the
    /// zero-points of a symmetric scheme), so a bad tensor stores nothing.
    pub fn stored_parts(&self, name: &str) -> Result<Vec<(Part, Vec<u8>)>> {
        self.validate(name)?;
        let scales = self
            .scales
            .iter()
            .map(|&s| to_f16(name, s))
            .collect::<Result<Vec<_>>>()?;
        if self.scheme.symmetric {
            let mid = symmetric_zero(self.scheme.bits);
            if self.zeros.iter().any(|&z| z as u32 != mid) {
                return Err(Error::BadTensor {
                    name: name.into(),
                    msg: format!("symmetric scheme but a zero-point is not {mid}"),
                });
            }
        }
        let bytes = |p: &Part| match p.suffix {
            "qweight" => self.packed.iter().flat_map(|v| v.to_le_bytes()).collect(),
            "scales" => scales
                .iter()
                .flat_map(|h| h.to_bits().to_le_bytes())
                .collect(),
            _ => self.zeros.clone(),
        };
        Ok(self
            .encoding()
            .parts(self.rows, self.cols)
            .into_iter()
            .map(|p| {
                let b = bytes(&p);
                (p, b)
            })
            .collect())
    }

    /// Reads back what [`QuantizedTensor::stored_parts`] stored: `part`
    /// gives the bytes of each part (already checked against its shape and
    /// dtype).
    pub fn from_stored_parts<'a>(
        name: &str,
        scheme: QuantScheme,
        rows: usize,
        cols: usize,
        part: impl Fn(&Part) -> Result<&'a [u8]>,
    ) -> Result<Self> {
        let parts = parts(&scheme, rows, cols);
        let packed = part(&parts[0])?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let scales: Vec<f32> = part(&parts[1])?
            .chunks_exact(2)
            .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
            .collect();
        let zeros = match parts.get(2) {
            Some(p) => part(p)?.to_vec(),
            None => vec![symmetric_zero(scheme.bits) as u8; scales.len()],
        };
        let q = QuantizedTensor {
            rows,
            cols,
            scheme,
            packed,
            scales,
            zeros,
        };
        q.validate(name)?;
        Ok(q)
    }

    /// `y = x · Wᵀ` on the CPU for `x` `[tokens, cols]`: `[tokens, rows]`,
    /// without expanding W ([`matmul`]).
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        matmul::matmul(self, x, tokens)
    }

    /// Every weight as f32, row-major `[rows, cols]` (the reference
    /// dequantization; rows in parallel).
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.validate("dequantize input")?;
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each_init(
            || vec![0u32; self.cols],
            |codes, (r, row)| self.dequantize_row(r, codes, row),
        );
        Ok(out)
    }

    /// Row `r` (of a validated tensor) dequantized into `out` (`cols`
    /// values): the reference every kernel is checked against. `codes` is
    /// scratch of at least `cols`.
    pub fn dequantize_row(&self, r: usize, codes: &mut [u32], out: &mut [f32]) {
        let (wpr, groups) = (self.words_per_row(), self.n_groups());
        let glen = self.scheme.group_len(self.cols);
        let codes = &mut codes[..self.cols];
        unpack_row(
            &self.packed[r * wpr..(r + 1) * wpr],
            self.scheme.bits,
            codes,
        );
        for (g, (y, c)) in out[..self.cols]
            .chunks_mut(glen)
            .zip(codes.chunks(glen))
            .enumerate()
        {
            let (s, z) = (
                self.scales[r * groups + g],
                self.zeros[r * groups + g] as f32,
            );
            for (y, &c) in y.iter_mut().zip(c.iter()) {
                *y = s * (c as f32 - z);
            }
        }
    }
}
