//! The shape of a vector-quantized weight (GPTVQ's grouping): vectors of
//! `dim` consecutive columns of a row, `bits` bits per weight (so
//! `k = 2^(dim·bits)` centroids per codebook), one codebook per group of
//! `group` weights laid out as `span` columns × `group / span` rows, with
//! `span = min(256, group)` as in the official code's `get_groupsize`. A
//! row's last span and a tensor's last row group may be shorter (ragged),
//! as long as every codebook covers at least `k` vectors.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Columns one codebook spans at most.
pub const MAX_SPAN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VqScheme {
    /// Weights per vector (1, 2 or 4 consecutive columns of a row).
    pub dim: u32,
    /// Bits per weight: each vector's index has `dim · bits` bits.
    pub bits: u32,
    /// Weights per codebook.
    pub group: usize,
    /// Bits of each stored centroid value: 8 (signed, one f16 scale per
    /// codebook) or 0 for f16 centroids.
    pub codebook_bits: u32,
    /// Rank of SVD-compressed codebooks ([`super::svd`], 1D only); 0 stores
    /// every codebook whole.
    #[serde(default)]
    pub svd_rank: u32,
    /// Columns of each row block with its own scale ([`super::row_scale`],
    /// the official code's `--vq-scaling-blocksize`); 0 for none.
    #[serde(default)]
    pub scale_block: u32,
}

impl VqScheme {
    pub fn new(dim: u32, bits: u32, group: usize, codebook_bits: u32) -> Result<Self> {
        let s = Self {
            dim,
            bits,
            group,
            codebook_bits,
            svd_rank: 0,
            scale_block: 0,
        };
        if ![1, 2, 4].contains(&dim) {
            return Err(Error::Config(format!(
                "VQ dimension {dim}: supported are 1, 2 and 4"
            )));
        }
        // Checked before `index_bits` multiplies them (a file may say anything).
        if bits == 0 || bits > 8 || s.index_bits() > 8 {
            return Err(Error::Config(format!(
                "VQ of {dim}-dimensional vectors at {bits} bits per weight: an index would have \
                 {} bits; at most 8 are supported (k ≤ 256 centroids)",
                u64::from(dim) * u64::from(bits)
            )));
        }
        if ![0, 8].contains(&codebook_bits) {
            return Err(Error::Config(format!(
                "codebook bits {codebook_bits}: supported are 8 (int8 with a scale per codebook) \
                 and 0 (f16)"
            )));
        }
        let span = s.span();
        if group == 0 || !group.is_multiple_of(span) || !span.is_multiple_of(dim as usize) {
            return Err(Error::Config(format!(
                "VQ group of {group} weights: it must be a multiple of {MAX_SPAN} (or smaller than \
                 {MAX_SPAN} and a multiple of the dimension {dim})"
            )));
        }
        if s.centroids() > group / dim as usize {
            return Err(Error::Config(format!(
                "VQ group of {group} weights holds {} vectors of {dim}, fewer than the {} \
                 centroids of a codebook at {bits} bits; use a larger group or fewer bits",
                group / dim as usize,
                s.centroids()
            )));
        }
        Ok(s)
    }

    /// This scheme with its codebooks stored at SVD rank `rank`
    /// ([`super::svd`]): 1D only, `0 < rank < k`.
    pub fn with_svd_rank(self, rank: u32) -> Result<Self> {
        if self.dim != 1 || rank == 0 || rank as usize >= self.centroids() {
            return Err(Error::Config(format!(
                "SVD rank {rank} of {}D codebooks of {} centroids: SVD compression needs 1D \
                 codebooks (sorted values share a basis) and a rank from 1 to {}",
                self.dim,
                self.centroids(),
                self.centroids() - 1
            )));
        }
        Ok(Self {
            svd_rank: rank,
            ..self
        })
    }

    /// This scheme with a scale per `block` columns of each row
    /// ([`super::row_scale`]): `block` a multiple of the dimension that
    /// divides the span.
    pub fn with_scale_block(self, block: u32) -> Result<Self> {
        let b = block as usize;
        if b == 0 || !b.is_multiple_of(self.dim as usize) || !self.span().is_multiple_of(b) {
            return Err(Error::Config(format!(
                "VQ scale block of {block} columns: it must be a multiple of the dimension {} \
                 that divides the codebook span of {} columns",
                self.dim,
                self.span()
            )));
        }
        Ok(Self {
            scale_block: block,
            ..self
        })
    }

    /// Columns sharing one decoded scale in a row: the scale block, or the
    /// whole span without row scales (what the kernels iterate over).
    pub fn unit(&self) -> usize {
        match self.scale_block {
            0 => self.span(),
            b => b as usize,
        }
    }

    /// Values stored per codebook: `k · dim`, or the SVD rank.
    pub fn stored_codebook_len(&self) -> usize {
        match self.svd_rank {
            0 => self.codebook_len(),
            r => r as usize,
        }
    }

    /// Bits of one vector's index.
    pub fn index_bits(&self) -> u32 {
        self.dim * self.bits
    }

    /// Centroids per codebook, `2^(dim·bits)`.
    pub fn centroids(&self) -> usize {
        1 << self.index_bits()
    }

    /// f32 values of one codebook: `k · dim`.
    pub fn codebook_len(&self) -> usize {
        self.centroids() * self.dim as usize
    }

    /// Columns one codebook spans (the last span of a row may be shorter).
    pub fn span(&self) -> usize {
        self.group.min(MAX_SPAN)
    }

    /// Consecutive rows sharing one codebook.
    pub fn rows_per_codebook(&self) -> usize {
        self.group / self.span()
    }

    /// Codebooks along a row of `cols` columns.
    pub fn spans(&self, cols: usize) -> usize {
        cols.div_ceil(self.span())
    }

    /// Codebooks of a `[rows, cols]` weight, row group by row group.
    pub fn codebooks(&self, rows: usize, cols: usize) -> usize {
        rows.div_ceil(self.rows_per_codebook()) * self.spans(cols)
    }

    /// The codebook of the weight at `(row, col)`.
    pub fn codebook_of(&self, cols: usize, row: usize, col: usize) -> usize {
        row / self.rows_per_codebook() * self.spans(cols) + col / self.span()
    }

    /// Checks that the scheme fits a `[rows, cols]` weight named `name`.
    pub fn check_shape(&self, name: &str, rows: usize, cols: usize) -> Result<()> {
        let d = self.dim as usize;
        let rpc = self.rows_per_codebook();
        if rows == 0 || cols == 0 || !cols.is_multiple_of(d) {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "shape [{rows}, {cols}]: VQ with vectors of {d} needs the row length to be a \
                     multiple of {d}"
                ),
            });
        }
        let b = self.scale_block as usize;
        if b > 0 && !cols.is_multiple_of(b) {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "shape [{rows}, {cols}]: row scales per {b} columns need the row length to \
                     be a multiple of {b}"
                ),
            });
        }
        // A shorter last row group and a shorter last span (ragged, like
        // SmolLM2's 576 = 2 × 256 + 64) still need k vectors per codebook.
        let last = |n: usize, of: usize| if n.is_multiple_of(of) { of } else { n % of };
        let (r_last, c_last) = (last(rows, rpc), last(cols, self.span()));
        let smallest = r_last.min(rows) * c_last.min(cols) / d;
        if smallest < self.centroids() {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "shape [{rows}, {cols}]: with codebooks over {rpc} rows x {} columns, the \
                     last ones cover {r_last} x {c_last} weights, {smallest} vectors for {} \
                     centroids; use {} or fewer bits",
                    self.span(),
                    self.centroids(),
                    match r_last < rpc.min(rows) {
                        true => format!(
                            "a group whose rows divide {rows} (e.g. {})",
                            largest_fitting_group(rows, self.span())
                        ),
                        false => "a larger group (more rows per codebook)".to_string(),
                    }
                ),
            });
        }
        Ok(())
    }

    /// Bits per weight the paper counts: `bits + k·dim·b_c / group` (its
    /// tables' 2.125, 2.25, ...; per-codebook scales are not in it, and
    /// [`crate::encoding::Encoding::stored_bits_per_weight`] counts them).
    pub fn nominal_bits_per_weight(&self) -> f64 {
        let bc = if self.codebook_bits == 0 {
            16
        } else {
            self.codebook_bits
        };
        let row_scales = match self.scale_block {
            0 => 0.0,
            b => super::row_scale::BITS as f64 / b as f64,
        };
        self.bits as f64
            + (self.stored_codebook_len() as f64 * bc as f64) / self.group as f64
            + row_scales
    }

    /// The group size whose nominal bits per weight are `target` (the
    /// paper's `--bpw` tables), rounded to a power of two; an error when
    /// `target` leaves no room for codebooks.
    pub fn group_for_bpw(dim: u32, bits: u32, codebook_bits: u32, target: f64) -> Result<usize> {
        let bc = if codebook_bits == 0 {
            16
        } else {
            codebook_bits
        } as f64;
        let overhead = target - bits as f64;
        if overhead.is_nan() || overhead <= 0.0 || !target.is_finite() {
            return Err(Error::Config(format!(
                "--bpw {target} with {bits}-bit indices leaves no bits for the codebooks; \
                 ask for more than {bits}"
            )));
        }
        let entries = (1u64 << dim.saturating_mul(bits).min(20)) as f64 * dim as f64;
        let group = entries * bc / overhead;
        Ok((group.log2().round().exp2() as usize).max(dim as usize))
    }

    /// `VQ 2D 2b g2048` as reports print it.
    pub fn label(&self) -> String {
        let cb = match self.codebook_bits {
            0 => "f16".to_string(),
            b => format!("int{b}"),
        };
        let svd = match self.svd_rank {
            0 => String::new(),
            r => format!(" svd{r}"),
        };
        let scaled = match self.scale_block {
            0 => String::new(),
            b => format!(" rowscale{b}"),
        };
        format!(
            "VQ {}D {}b g{} {cb}{svd}{scaled}",
            self.dim, self.bits, self.group
        )
    }
}

/// The largest power-of-two group whose rows per codebook divide `rows`.
fn largest_fitting_group(rows: usize, span: usize) -> usize {
    let mut rpc = 1;
    while rows.is_multiple_of(rpc * 2) {
        rpc *= 2;
    }
    rpc * span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_of_the_paper() {
        for (d, b, bpw, want) in [
            (1, 2, 2.125, 256),
            (2, 2, 2.125, 2048),
            (4, 2, 2.125, 65536),
            (2, 2, 2.25, 1024),
            (1, 3, 3.125, 512),
            (2, 3, 3.125, 8192),
            (2, 4, 4.125, 32768),
        ] {
            assert_eq!(VqScheme::group_for_bpw(d, b, 8, bpw).unwrap(), want);
            let s = VqScheme::new(d, b, want, 8).unwrap();
            assert!((s.nominal_bits_per_weight() - bpw).abs() < 1e-9);
        }
        assert!(VqScheme::group_for_bpw(2, 2, 8, 2.0).is_err());
    }

    #[test]
    fn bad_schemes_are_refused() {
        assert!(VqScheme::new(3, 2, 2048, 8).is_err());
        assert!(VqScheme::new(4, 3, 2048, 8).is_err()); // 12-bit indices
        assert!(VqScheme::new(2, 2, 300, 8).is_err()); // not a multiple of 256
        assert!(VqScheme::new(2, 4, 256, 8).is_err()); // 256 centroids, 128 vectors
        let s = VqScheme::new(2, 2, 2048, 8).unwrap();
        assert_eq!((s.span(), s.rows_per_codebook()), (256, 8));
        // 12 rows: a last row group of 4 (ragged, 512 vectors: fine).
        assert!(s.check_shape("t", 12, 512).is_ok());
        assert!(s.check_shape("t", 16, 511).is_err());
        // 4D 2 bits, 256 rows per codebook: a last row group of 1 row and
        // 64 columns holds 16 vectors for 256 centroids.
        let s4 = VqScheme::new(4, 2, 65536, 8).unwrap();
        assert!(s4.check_shape("t", 257, 576).is_err());
        assert!(s4.check_shape("t", 576, 576).is_ok());
        assert!(s.check_shape("t", 16, 576).is_ok());
        assert_eq!(s.codebooks(16, 576), 2 * 3);
        assert_eq!(s.codebook_of(576, 9, 513), 3 + 2);
    }
}
