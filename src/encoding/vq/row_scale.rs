//! Row-block scaling of VQ weights (the official GPTVQ code's
//! `--vq-scaling-blocksize`, max norm, log domain, 4-bit scales): each
//! block of `B` columns of a row is divided by its largest magnitude before
//! its vectors are fitted and assigned, so one codebook serves rows of very
//! different ranges; a weight decodes as `scale · centroid`.
//!
//! A scale is stored as a 4-bit code of its base-2 logarithm on a grid per
//! block column: `log2 s = lo + q · step`, `q ∈ [0, 15]`, with `lo` and
//! `step` (f16) spanning the block column's smallest and largest logs over
//! all rows. Parts: `NAME.vq_row_scales` U8 `[rows, ⌈blocks/2⌉]` (two codes
//! a byte, low nibble first) and `NAME.vq_row_scale_range` F16
//! `[blocks, 2]` (`lo`, `step`).

use crate::error::{Error, Result};

/// Bits of one stored scale code.
pub const BITS: u32 = 4;
const LEVELS: f32 = ((1 << BITS) - 1) as f32;

/// The row scales of a `[rows, blocks · B]` weight.
#[derive(Clone, Debug, PartialEq)]
pub struct RowScales {
    pub rows: usize,
    pub blocks: usize,
    /// `[rows, blocks]` codes.
    pub codes: Vec<u8>,
    /// `[blocks, 2]`: `lo` and `step` of each block column (f16 values).
    pub range: Vec<f32>,
    /// `[rows, blocks]` decoded scales, `2^(lo + q · step)`.
    pub values: Vec<f32>,
}

fn f16(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

impl RowScales {
    /// All scales 1 (every code 0 on a zero range) until fitted.
    pub fn new(rows: usize, blocks: usize) -> Self {
        Self {
            rows,
            blocks,
            codes: vec![0; rows * blocks],
            range: vec![0.0; blocks * 2],
            values: vec![1.0; rows * blocks],
        }
    }

    /// Fits the block columns `first..first + n` to `w`, the current
    /// `[rows, n · b]` weights of those columns (row-major).
    pub fn fit(&mut self, w: &[f32], first: usize, b: usize) {
        let width = w.len() / self.rows.max(1);
        for blk in 0..width / b {
            let col = first + blk;
            // A block of zeros keeps scale 2^lo: any scale decodes it.
            let logs: Vec<f32> = w
                .chunks(width)
                .map(|row| {
                    let m = row[blk * b..(blk + 1) * b]
                        .iter()
                        .fold(0f32, |m, v| m.max(v.abs()));
                    if m > 1e-30 {
                        m.log2()
                    } else {
                        f32::NAN
                    }
                })
                .collect();
            let (lo, hi) = logs
                .iter()
                .filter(|l| l.is_finite())
                .fold((f32::MAX, f32::MIN), |(a, z), &l| (a.min(l), z.max(l)));
            let (lo, hi) = if lo <= hi { (lo, hi) } else { (0.0, 0.0) };
            let lo = f16(lo);
            let step = f16((hi - lo).max(0.0) / LEVELS);
            self.range[col * 2] = lo;
            self.range[col * 2 + 1] = step;
            for (r, l) in logs.iter().enumerate() {
                let q = match (l.is_finite(), step > 0.0) {
                    (true, true) => ((l - lo) / step).round().clamp(0.0, LEVELS),
                    _ => 0.0,
                };
                self.codes[r * self.blocks + col] = q as u8;
            }
        }
        self.decode();
    }

    /// `values` from `codes` and `range` (what a reader computes).
    pub fn decode(&mut self) {
        for r in 0..self.rows {
            for c in 0..self.blocks {
                let (lo, step) = (self.range[c * 2], self.range[c * 2 + 1]);
                let q = self.codes[r * self.blocks + c] as f32;
                self.values[r * self.blocks + c] = (lo + q * step).exp2();
            }
        }
    }

    /// The stored bytes: packed codes, then the f16 range.
    pub fn stored(&self) -> (Vec<u8>, Vec<f32>) {
        let per_row = self.blocks.div_ceil(2);
        let mut packed = vec![0u8; self.rows * per_row];
        for r in 0..self.rows {
            for c in 0..self.blocks {
                packed[r * per_row + c / 2] |= self.codes[r * self.blocks + c] << (4 * (c % 2));
            }
        }
        (packed, self.range.clone())
    }

    /// Reads back [`RowScales::stored`]; `name` names the tensor in errors.
    pub fn from_stored(
        name: &str,
        rows: usize,
        blocks: usize,
        packed: &[u8],
        range: Vec<f32>,
    ) -> Result<Self> {
        let per_row = blocks.div_ceil(2);
        if packed.len() != rows * per_row || range.len() != blocks * 2 {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "row scales: {} code bytes and {} range values for {rows} rows of {blocks} \
                     blocks (want {} and {})",
                    packed.len(),
                    range.len(),
                    rows * per_row,
                    blocks * 2
                ),
            });
        }
        if let Some(v) = range.iter().find(|v| !v.is_finite()) {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!("row scale range value {v}"),
            });
        }
        let mut s = Self::new(rows, blocks);
        for r in 0..rows {
            for c in 0..blocks {
                s.codes[r * blocks + c] = (packed[r * per_row + c / 2] >> (4 * (c % 2))) & 15;
            }
        }
        s.range = range;
        s.decode();
        Ok(s)
    }
}
