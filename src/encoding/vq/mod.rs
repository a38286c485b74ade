//! Vector-quantized weights (GPTVQ, arXiv 2402.15319): each vector of
//! `dim` consecutive weights of a row is the index of a centroid in its
//! group's codebook ([`scheme`] has the grouping).
//!
//! Stored parts of a weight `NAME` `[rows, cols]`:
//! - `NAME.vq_indices` U32 `[rows, words]`: each row's `cols / dim`
//!   indices of `dim · bits` bits as a little-endian bit stream
//!   ([`crate::encoding::affine::packing`]'s layout);
//! - `NAME.codebooks` `[codebooks, k · dim]`: I8 with 8-bit codebooks (the
//!   value is `code · scale`), F16 with 0; codebook `c` of row group `g`
//!   and span `s` is `g · spans + s`, centroid `i`'s values at `i · dim ..`;
//! - `NAME.codebook_scales` F16 `[codebooks, 1]`, 8-bit codebooks only;
//! - SVD-compressed (1D, [`svd`]): `NAME.codebooks` holds each codebook's
//!   `[codebooks, rank]` factors on the same grid, and `NAME.codebook_basis`
//!   F16 `[rank, k]` the basis they multiply;
//! - with row-block scales ([`row_scale`]): `NAME.vq_row_scales` U8 and
//!   `NAME.vq_row_scale_range` F16.
//!
//! In memory ([`VqTensor`]) the codebooks are kept decoded to f32, which is
//! what every kernel reads; writing re-derives the integer codes.

pub mod assignment;
pub mod em;
pub mod grid;
pub mod matmul;
pub mod row_scale;
pub mod scheme;
mod simd;
pub mod svd;

pub use em::VqInit;
pub use grid::{AssignWeight, VqGrid};
pub use scheme::VqScheme;

use super::{to_f16, Dtype, Part};
use crate::encoding::affine::packing::{unpack_row, words_per_row};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// A vector-quantized `[rows, cols]` weight.
#[derive(Clone, Debug, PartialEq)]
pub struct VqTensor {
    pub rows: usize,
    pub cols: usize,
    pub scheme: VqScheme,
    /// `[rows, words_per_row(cols / dim, index_bits)]` packed indices.
    pub indices: Vec<u32>,
    /// `[codebooks, k · dim]` centroid values (decoded).
    pub codebooks: Vec<f32>,
    /// `[codebooks]` scale of each 8-bit codebook (of its factors when
    /// SVD-compressed; 1 for f16 codebooks).
    pub scales: Vec<f32>,
    /// The stored factors when `scheme.svd_rank > 0`; `codebooks` is their
    /// product.
    pub svd: Option<Box<svd::SvdCodebooks>>,
    /// The scale of every `scheme.scale_block` columns of each row, when
    /// the scheme has them: a weight is `scale · centroid`.
    pub row_scales: Option<Box<row_scale::RowScales>>,
}

pub(crate) fn parts(s: &VqScheme, rows: usize, cols: usize) -> Vec<Part> {
    let n = s.codebooks(rows, cols);
    let mut parts = vec![
        Part {
            suffix: "vq_indices",
            dtype: Dtype::U32,
            shape: [rows, index_words(s, cols)],
        },
        Part {
            suffix: "codebooks",
            dtype: if s.codebook_bits == 0 {
                Dtype::F16
            } else {
                Dtype::I8
            },
            shape: [n, s.stored_codebook_len()],
        },
    ];
    if s.codebook_bits != 0 {
        parts.push(Part {
            suffix: "codebook_scales",
            dtype: Dtype::F16,
            shape: [n, 1],
        });
    }
    if s.svd_rank > 0 {
        parts.push(Part {
            suffix: "codebook_basis",
            dtype: Dtype::F16,
            shape: [s.svd_rank as usize, s.centroids()],
        });
    }
    if s.scale_block > 0 {
        let blocks = cols / s.scale_block as usize;
        parts.push(Part {
            suffix: "vq_row_scales",
            dtype: Dtype::U8,
            shape: [rows, blocks.div_ceil(2)],
        });
        parts.push(Part {
            suffix: "vq_row_scale_range",
            dtype: Dtype::F16,
            shape: [blocks, 2],
        });
    }
    parts
}

/// The part named `suffix` among a scheme's parts (always there: the
/// scheme that asks for it also lists it).
fn find<'p>(ps: &'p [Part], suffix: &str) -> &'p Part {
    ps.iter().find(|p| p.suffix == suffix).unwrap_or(&ps[0])
}

/// Index words per row.
pub fn index_words(s: &VqScheme, cols: usize) -> usize {
    words_per_row(cols / s.dim as usize, s.index_bits())
}

/// What a matmul reads: the packed indices and the f32 codebooks.
pub(crate) fn resident_bytes(s: &VqScheme, rows: usize, cols: usize) -> u64 {
    let row_scales = match s.scale_block {
        0 => 0,
        b => rows * (cols / b as usize),
    };
    (rows * index_words(s, cols)) as u64 * 4
        + (s.codebooks(rows, cols) * s.codebook_len()) as u64 * 4
        + row_scales as u64 * 4
}

/// Largest magnitude of a signed `bits`-bit code.
pub fn max_code(bits: u32) -> f32 {
    ((1i32 << (bits - 1)) - 1) as f32
}

/// Rounds a codebook onto its stored grid in place: symmetric signed
/// `bits`-bit codes with `scale = max|c| / (2^(bits−1) − 1)` (the scale as
/// f16, as stored), or f16 values for `bits == 0`. Returns the scale.
pub fn quantize_codebook(values: &mut [f32], bits: u32) -> f32 {
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    if bits == 0 {
        values.iter_mut().for_each(|v| *v = f16(*v));
        return 1.0;
    }
    let maxq = max_code(bits);
    let amax = values.iter().fold(0f32, |m, v| m.max(v.abs()));
    // The scale is rounded up to f16 so no code exceeds the range.
    let mut scale = f16(amax / maxq).max(f32::MIN_POSITIVE);
    if amax / scale > maxq + 0.5 {
        scale = f16(scale * (1.0 + 1.0 / 1024.0));
    }
    for v in values.iter_mut() {
        *v = (*v / scale).round().clamp(-maxq, maxq) * scale;
    }
    scale
}

impl VqTensor {
    pub fn encoding(&self) -> super::Encoding {
        super::Encoding::Vq(self.scheme)
    }

    pub fn stored_bytes(&self) -> u64 {
        self.encoding().stored_bytes(self.rows, self.cols)
    }

    pub fn resident_bytes(&self) -> u64 {
        self.encoding().resident_bytes(self.rows, self.cols)
    }

    /// Checks the scheme against the shape and the buffers against both.
    pub fn validate(&self, name: &str) -> Result<()> {
        let s = &self.scheme;
        s.check_shape(name, self.rows, self.cols)?;
        let n = s.codebooks(self.rows, self.cols);
        let words = self.rows * index_words(s, self.cols);
        if self.indices.len() != words
            || self.codebooks.len() != n * s.codebook_len()
            || self.scales.len() != n
        {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "inconsistent VQ buffers: {} index words (want {words}), {} codebook values \
                     (want {}) and {} scales (want {n})",
                    self.indices.len(),
                    self.codebooks.len(),
                    n * s.codebook_len(),
                    self.scales.len()
                ),
            });
        }
        let r = s.svd_rank as usize;
        let svd_ok = match &self.svd {
            None => r == 0,
            Some(f) => r > 0 && f.factors.len() == n * r && f.basis.len() == r * s.centroids(),
        };
        if !svd_ok {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "SVD factors do not match the scheme's rank {r} for {n} codebooks of {} \
                     centroids",
                    s.centroids()
                ),
            });
        }
        let scales_ok = match (&self.row_scales, s.scale_block) {
            (None, 0) => true,
            (Some(rs), b) if b > 0 => {
                let blocks = self.cols / b as usize;
                rs.rows == self.rows && rs.blocks == blocks && rs.values.len() == self.rows * blocks
            }
            _ => false,
        };
        if !scales_ok {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "row scales do not match the scheme's blocks of {} columns",
                    s.scale_block
                ),
            });
        }
        if let Some(i) = self.codebooks.iter().position(|v| !v.is_finite()) {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!("codebook value {i} is {}", self.codebooks[i]),
            });
        }
        Ok(())
    }

    /// The bytes of every stored part, in [`parts`] order.
    pub fn stored_parts(&self, name: &str) -> Result<Vec<(Part, Vec<u8>)>> {
        self.validate(name)?;
        let s = &self.scheme;
        let f16_bytes = |v: &[f32]| -> Result<Vec<u8>> {
            let mut out = Vec::with_capacity(v.len() * 2);
            for &x in v {
                out.extend_from_slice(&to_f16(name, x)?.to_bits().to_le_bytes());
            }
            Ok(out)
        };
        // What the codebooks part holds: the codebooks, or their SVD factors.
        let stored = self.svd.as_ref().map_or(&self.codebooks, |f| &f.factors);
        let codebooks = match s.codebook_bits {
            0 => f16_bytes(stored)?,
            bits => {
                let maxq = max_code(bits);
                let len = s.stored_codebook_len();
                let mut out = Vec::with_capacity(stored.len());
                for (cb, &scale) in stored.chunks(len).zip(&self.scales) {
                    for &v in cb {
                        let q = (v / scale).round();
                        if q.is_nan() || q.abs() > maxq {
                            return Err(Error::BadTensor {
                                name: name.into(),
                                msg: format!(
                                    "codebook value {v} is not on its {bits}-bit grid of scale \
                                     {scale}"
                                ),
                            });
                        }
                        out.push(q as i8 as u8);
                    }
                }
                out
            }
        };
        let mut bytes = vec![
            self.indices.iter().flat_map(|v| v.to_le_bytes()).collect(),
            codebooks,
        ];
        if s.codebook_bits != 0 {
            bytes.push(f16_bytes(&self.scales)?);
        }
        if let Some(f) = &self.svd {
            bytes.push(f16_bytes(&f.basis)?);
        }
        if let Some(rs) = &self.row_scales {
            let (codes, range) = rs.stored();
            bytes.push(codes);
            bytes.push(f16_bytes(&range)?);
        }
        Ok(parts(s, self.rows, self.cols)
            .into_iter()
            .zip(bytes)
            .collect())
    }

    /// Reads back what [`VqTensor::stored_parts`] stored.
    pub fn from_stored_parts<'a>(
        name: &str,
        scheme: VqScheme,
        rows: usize,
        cols: usize,
        part: impl Fn(&Part) -> Result<&'a [u8]>,
    ) -> Result<Self> {
        scheme.check_shape(name, rows, cols)?;
        let ps = parts(&scheme, rows, cols);
        let f16s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(2)
                .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
                .collect()
        };
        let indices = part(&ps[0])?
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (stored, scales) = match scheme.codebook_bits {
            0 => {
                let cb = f16s(part(&ps[1])?);
                let n = cb.len() / scheme.stored_codebook_len().max(1);
                (cb, vec![1.0; n])
            }
            _ => {
                let scales = f16s(part(&ps[2])?);
                let len = scheme.stored_codebook_len();
                let cb = part(&ps[1])?
                    .iter()
                    .enumerate()
                    .map(|(i, &b)| b as i8 as f32 * scales.get(i / len).copied().unwrap_or(0.0))
                    .collect();
                (cb, scales)
            }
        };
        let (codebooks, svd) = match scheme.svd_rank {
            0 => (stored, None),
            r => {
                let basis = f16s(part(find(&ps, "codebook_basis"))?);
                let (r, k) = (r as usize, scheme.centroids());
                if basis.len() != r * k || !stored.len().is_multiple_of(r) {
                    return Err(Error::BadTensor {
                        name: name.into(),
                        msg: format!(
                            "SVD codebooks: {} basis values (want {r} x {k}) and {} factors \
                             (want a multiple of {r})",
                            basis.len(),
                            stored.len()
                        ),
                    });
                }
                let codebooks = svd::decode(&stored, &basis, r, k);
                let factors = svd::SvdCodebooks {
                    factors: stored,
                    basis,
                };
                (codebooks, Some(Box::new(factors)))
            }
        };
        let row_scales = match scheme.scale_block {
            0 => None,
            b => Some(Box::new(row_scale::RowScales::from_stored(
                name,
                rows,
                cols / b as usize,
                part(find(&ps, "vq_row_scales"))?,
                f16s(part(find(&ps, "vq_row_scale_range"))?),
            )?)),
        };
        let t = Self {
            rows,
            cols,
            scheme,
            indices,
            codebooks,
            scales,
            svd,
            row_scales,
        };
        t.validate(name)?;
        Ok(t)
    }

    /// `y = x · Wᵀ` on the CPU for `x` `[tokens, cols]`: `[tokens, rows]`,
    /// without expanding W ([`matmul::matmul`]).
    pub fn matmul(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        matmul::matmul(self, x, tokens)
    }

    /// Every weight as f32, row-major `[rows, cols]`.
    pub fn dequantize(&self) -> Result<Vec<f32>> {
        self.validate("dequantize input")?;
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols).enumerate().for_each_init(
            || vec![0u32; self.cols],
            |idx, (r, row)| self.dequantize_row(r, idx, row),
        );
        Ok(out)
    }

    /// The scale of unit `u` (of [`VqScheme::unit`] columns) of row `r`: its
    /// row scale, or 1.
    #[inline]
    pub fn unit_scale(&self, r: usize, u: usize) -> f32 {
        match &self.row_scales {
            Some(rs) => rs.values[r * rs.blocks + u],
            None => 1.0,
        }
    }

    /// Row `r` (of a validated tensor) into `out` (`cols` values): the
    /// reference dequantization. `idx` is scratch of at least `cols / dim`.
    pub fn dequantize_row(&self, r: usize, idx: &mut [u32], out: &mut [f32]) {
        let s = &self.scheme;
        let (d, words) = (s.dim as usize, index_words(s, self.cols));
        let idx = &mut idx[..self.cols / d];
        unpack_row(
            &self.indices[r * words..(r + 1) * words],
            s.index_bits(),
            idx,
        );
        let (len, unit) = (s.codebook_len(), s.unit());
        for (u, (y, ix)) in out[..self.cols]
            .chunks_mut(unit)
            .zip(idx.chunks(unit / d))
            .enumerate()
        {
            let c = s.codebook_of(self.cols, r, u * unit);
            let cb = &self.codebooks[c * len..(c + 1) * len];
            let scale = self.unit_scale(r, u);
            for (v, &i) in y.chunks_exact_mut(d).zip(ix) {
                for (o, &c) in v.iter_mut().zip(&cb[i as usize * d..(i as usize + 1) * d]) {
                    *o = scale * c;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codebook_grid_is_exact_and_in_range() {
        let mut v: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 - 31.3) * 0.0137)
            .collect();
        let orig = v.clone();
        let scale = quantize_codebook(&mut v, 8);
        for (a, b) in v.iter().zip(&orig) {
            let q = a / scale;
            assert!((q - q.round()).abs() < 1e-3 && q.abs() <= 127.0);
            assert!((a - b).abs() <= 0.5 * scale + 1e-7);
        }
    }
}
