//! One linear rounded onto a ggml block type in the sequential pipeline
//! (`quantize --format gguf` with calibration): GPTQ whose grid is the
//! type itself ([`GgmlGrid`]), or the weighted rounding `llama-quantize
//! --imatrix` does (the `diag(H)`-weighted fit, no error feedback), both
//! scored against llama.cpp's reference rounding of the same type (what
//! `llama-quantize` writes without an imatrix).

use super::layer::LayerRunner;
use crate::encoding::affine::packing::{pack_row, words_per_row};
use crate::encoding::ggml::{self, GgmlGrid, GgmlTensor, GgmlType};
use crate::encoding::{Grid, GridCodes};
use crate::error::{Error, Result};
use crate::quant::gptq::{self, Factored, GptqReport};
use rayon::prelude::*;
use std::time::Instant;

/// llama.cpp's reference rounding of `w` onto `ty`, dequantized: the RTN
/// baseline of a linear written as `ty`.
pub(super) fn reference(name: &str, ty: GgmlType, w: &[f32], cols: usize) -> Result<Vec<f32>> {
    let bytes = ggml::quantize(name, ty, w, cols)?;
    ggml::dequantize(ty, &bytes, w.len()).ok_or_else(|| {
        Error::Config(format!(
            "tensor '{name}': its {} blocks could not be read back",
            ty.name()
        ))
    })
}

/// The weighted rounding of `w` onto `grid` without error feedback: each
/// block fitted by the `diag(H)`-weighted search, each weight to its
/// nearest value.
fn weighted_rounding(grid: &GgmlGrid, w: &[f32], cols: usize, hdiag: &[f32]) -> GridCodes {
    let (span, per_group) = (grid.group_len() * grid.layout.subs, grid.params_per_group());
    let (bits, wpr) = (grid.code_bits(), words_per_row(cols, grid.code_bits()));
    let row_params = cols / grid.group_len() * per_group;
    let rows = w.len() / cols;
    let mut packed = vec![0u32; rows * wpr];
    let mut params = vec![0f32; rows * row_params];
    packed
        .par_chunks_mut(wpr)
        .zip(params.par_chunks_mut(row_params))
        .zip(w.par_chunks(cols))
        .for_each(|((out, p), row)| {
            let mut codes = vec![0u32; cols];
            for (b, x) in row.chunks(span).enumerate() {
                let bp = &mut p[b * grid.layout.subs * per_group..][..grid.layout.subs * per_group];
                grid.fit(x, &hdiag[b * span..b * span + x.len()], bp);
                for (i, &v) in x.iter().enumerate() {
                    let g = &bp[i / grid.group_len() * per_group..][..per_group];
                    codes[b * span + i] = grid.round(v, g).0;
                }
            }
            pack_row(&codes, bits, out);
        });
    GridCodes { packed, params }
}

impl LayerRunner<'_> {
    /// `w` `[rows, cols]` as blocks of `ty`: GPTQ onto the type (`gptq`)
    /// or its weighted rounding, scored against the reference rounding `rw`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ggml_linear(
        &mut self,
        name: &str,
        w: &[f32],
        (rows, cols): (usize, usize),
        h: &[f32],
        factored: &Factored,
        ty: GgmlType,
        gptq: bool,
        rw: &[f32],
    ) -> Result<(GgmlTensor, GptqReport)> {
        let weight = gptq::Weight::new(name, w, rows, cols, h)?;
        let grid = GgmlGrid::new(name, ty, cols)?;
        let t = Instant::now();
        let codes = match gptq {
            true => gptq::quantize_on_grid(
                self.backend,
                &weight,
                factored,
                &grid,
                grid.group_len(),
                self.opts,
            )?,
            false => {
                let hdiag: Vec<f32> = (0..cols).map(|i| h[i * cols + i]).collect();
                weighted_rounding(&grid, w, cols, &hdiag)
            }
        };
        let tensor = GgmlTensor {
            ty,
            rows,
            cols,
            data: grid.blocks(rows, cols, &codes)?,
        };
        let seconds_update = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut report = gptq::error_report(
            self.backend,
            &weight,
            factored,
            &tensor.dequantize()?,
            &[rw],
        )?;
        report.seconds_update = seconds_update;
        report.seconds_error = t.elapsed().as_secs_f64();
        Ok((tensor, report))
    }
}
