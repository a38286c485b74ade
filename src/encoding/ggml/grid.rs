//! A ggml block type as the grid GPTQ rounds onto ([`crate::encoding::Grid`]):
//! GPTQ with llama.cpp's own block formats as its quantizer.
//!
//! Groups are the type's sub-blocks (one `(step, min)` each); a whole
//! block (a k-quant super-block: 8 or 16 sub-blocks sharing two f16
//! scales) is fitted at once, on the host, by the weighted search
//! `llama-quantize --imatrix` runs ([`super::coded`]), with GPTQ's
//! `diag(H)` as the importances. The column loop therefore runs these
//! grids with static groups, refitted from the current weights when the
//! loop reaches each block (`quant::gptq`). Each group's parameters:
//! `[step, min, d, dmin, sc, m]`: the values the codes are rounded
//! against (as the dequantization computes them) and the header they come
//! from (f16 bits and integers, exact in f32), from which [`GgmlGrid::blocks`]
//! packs the file's bytes.

use super::coded::{self, Header, Layout, Rounding};
use super::GgmlType;
use crate::encoding::affine::packing::unpack_row;
use crate::encoding::{Grid, GridCodes};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// f32 parameters per group (sub-block).
const PARAMS: usize = 6;

/// One block type as a GPTQ grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GgmlGrid {
    pub ty: GgmlType,
    pub layout: Layout,
}

impl GgmlGrid {
    /// The grid of `ty` for the weight `tensor` with rows of `cols`;
    /// errors when GPTQ cannot round onto `ty` or its blocks do not tile
    /// the rows.
    pub fn new(tensor: &str, ty: GgmlType, cols: usize) -> Result<Self> {
        let layout = coded::layout(ty).ok_or_else(|| {
            Error::Config(format!(
                "tensor '{tensor}': GPTQ cannot round onto {} (it rounds onto Q8_0, Q4_0, Q4_1, \
                 Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K)",
                ty.name()
            ))
        })?;
        if !cols.is_multiple_of(ty.block_size()) {
            return Err(Error::Config(format!(
                "tensor '{tensor}': rows of {cols} weights do not split into {} blocks of {}",
                ty.name(),
                ty.block_size()
            )));
        }
        Ok(Self { ty, layout })
    }

    /// Columns of one group (a sub-block).
    pub fn group_len(&self) -> usize {
        self.layout.sub
    }

    /// The header of the block whose groups' parameters are `params`.
    fn header(&self, params: &[f32]) -> Header {
        let bits = |v: f32| (v as u16).to_le_bytes();
        let mut h = Header {
            d: bits(params[2]),
            dmin: bits(params[3]),
            ..Header::default()
        };
        for (j, p) in params.chunks_exact(PARAMS).enumerate() {
            (h.sc[j], h.m[j]) = (p[4] as u8, p[5] as u8);
        }
        h
    }

    /// GPTQ's codes of a `[rows, cols]` weight as the type's bytes, rows
    /// after rows.
    pub fn blocks(&self, rows: usize, cols: usize, codes: &GridCodes) -> Result<Vec<u8>> {
        let (sub, subs, bits) = (self.layout.sub, self.layout.subs, self.layout.bits);
        let wpr = crate::encoding::affine::packing::words_per_row(cols, bits);
        let row_params = cols / sub * PARAMS;
        if codes.packed.len() != rows * wpr || codes.params.len() != rows * row_params {
            return Err(Error::Config(format!(
                "{} blocks of [{rows}, {cols}]: {} code words and {} parameters",
                self.ty.name(),
                codes.packed.len(),
                codes.params.len()
            )));
        }
        let rows: Vec<Vec<u8>> = (0..rows)
            .into_par_iter()
            .map(|r| {
                let mut q = vec![0u32; cols];
                unpack_row(&codes.packed[r * wpr..(r + 1) * wpr], bits, &mut q);
                let params = &codes.params[r * row_params..(r + 1) * row_params];
                let mut out = Vec::with_capacity(cols / self.ty.block_size() * self.ty.type_size());
                for (q, p) in q
                    .chunks_exact(sub * subs)
                    .zip(params.chunks_exact(subs * PARAMS))
                {
                    let q: Vec<u8> = q.iter().map(|&c| c as u8).collect();
                    out.extend(coded::pack(self.ty, &self.header(p), &q));
                }
                out
            })
            .collect();
        Ok(rows.concat())
    }
}

impl Grid for GgmlGrid {
    fn key(&self) -> String {
        format!("ggml-{}", self.ty.name())
    }

    fn code_bits(&self) -> u32 {
        self.layout.bits
    }

    fn params_per_group(&self) -> usize {
        PARAMS
    }

    /// Fits the blocks of `w` (whole blocks of the type): their headers by
    /// the weighted search, importances `diag(H)` (all ones for a block
    /// whose inputs never fired).
    fn fit(&self, w: &[f32], hdiag: &[f32], params: &mut [f32]) {
        let n = self.layout.sub * self.layout.subs;
        for ((x, hd), p) in w
            .chunks(n)
            .zip(hdiag.chunks(n))
            .zip(params.chunks_mut(self.layout.subs * PARAMS))
        {
            let qw: Vec<f32> = match hd.iter().any(|&v| v > 0.0) {
                true => hd.iter().map(|&v| v.max(0.0)).collect(),
                false => vec![1.0; x.len()],
            };
            let head = coded::fit_weighted(self.ty, x, &qw).unwrap_or_default();
            for (j, g) in p.chunks_exact_mut(PARAMS).enumerate() {
                let (step, min) = coded::sub_values(self.ty, &head, j);
                let f16 = |b: [u8; 2]| f32::from(u16::from_le_bytes(b));
                g.copy_from_slice(&[
                    step,
                    min,
                    f16(head.d),
                    f16(head.dmin),
                    f32::from(head.sc[j]),
                    f32::from(head.m[j]),
                ]);
            }
        }
    }

    fn round(&self, w: f32, params: &[f32]) -> (u32, f32) {
        coded::round(self.layout.rounding, w, params[0], params[1])
    }

    fn wgsl(&self) -> String {
        let (kind, max, lo, hi) = match self.layout.rounding {
            Rounding::Affine { max } => (0, max as i32, 0, 0),
            Rounding::Symmetric { lo, hi } => (1, 0, lo, hi),
            Rounding::Table => (2, 0, 0, 0),
        };
        format!(
            "const GRID_PARAMS: u32 = {PARAMS}u;\nconst GGML_KIND: u32 = {kind}u;\n\
             const GGML_MAX: f32 = {max}.0;\nconst GGML_LO: f32 = {lo}.0;\n\
             const GGML_HI: f32 = {hi}.0;\n{}",
            include_str!("../../../shaders/ggml_grid.wgsl")
        )
    }

    fn host_fit_groups(&self) -> Option<usize> {
        Some(self.layout.subs)
    }
}
