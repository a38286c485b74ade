//! Round-to-nearest (RTN) linear quantization, written once over [`Backend`].
//!
//! 1. reject NaN/Inf (naming the tensor),
//! 2. the backend computes each group's range,
//! 3. the host turns ranges into scales/zero-points (one shared formula,
//!    [`params_from_range`], so both backends agree exactly),
//! 4. the backend quantizes and packs.

use crate::backend::{Backend, GroupParams};
use crate::encoding::affine::clip::{clipped_params, WeightClip};
use crate::encoding::affine::scheme::{params_from_range, Granularity, QuantScheme};
use crate::encoding::affine::search::fit_weighted;
use crate::encoding::QuantizedTensor;
use crate::error::{Error, Result};
use crate::quant::range::RangeCalibrator;
use rayon::prelude::*;

/// Errors with the tensor's name and the first bad index if `w` holds NaN or Inf.
pub fn check_finite(name: &str, w: &[f32]) -> Result<()> {
    // Fast path: a branch-free scan per chunk that the compiler vectorises;
    // the slow search for the first bad index only runs on failure.
    let all_finite = w
        .par_chunks(1 << 16)
        .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()));
    if all_finite {
        return Ok(());
    }
    match w.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => {
            let count = w.par_iter().filter(|x| !x.is_finite()).count();
            Err(Error::BadTensor {
                name: name.into(),
                msg: format!(
                    "{count} non-finite value(s) (first at flat index {i}: {}); the source weights are corrupt",
                    w[i]
                ),
            })
        }
    }
}

/// Quantizes a `[rows, cols]` weight with RTN on `backend`.
pub fn quantize(
    backend: &dyn Backend,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    scheme: &QuantScheme,
) -> Result<QuantizedTensor> {
    quantize_weighted(backend, name, w, rows, cols, scheme, None)
}

/// RTN whose group parameters, given the columns' importances `hdiag`
/// (`diag(H)`, `[cols]`), come from the weighted scale search
/// ([`crate::encoding::affine::search`], the imatrix idea) instead of the
/// range; `None` is plain [`quantize`].
pub fn quantize_weighted(
    backend: &dyn Backend,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    scheme: &QuantScheme,
    hdiag: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    let clip = match hdiag {
        Some(_) => WeightClip::Mse,
        None => WeightClip::MinMax,
    };
    quantize_clipped(backend, name, w, rows, cols, scheme, clip, hdiag)
}

/// RTN with each group's range chosen by `clip` ([`WeightClip`]); the MSE
/// search is weighted by `hdiag` when given, uniform otherwise.
#[allow(clippy::too_many_arguments)]
pub fn quantize_clipped(
    backend: &dyn Backend,
    name: &str,
    w: &[f32],
    rows: usize,
    cols: usize,
    scheme: &QuantScheme,
    clip: WeightClip,
    hdiag: Option<&[f32]>,
) -> Result<QuantizedTensor> {
    scheme.check_shape(name, rows, cols)?;
    if w.len() != rows * cols {
        return Err(Error::BadTensor {
            name: name.into(),
            msg: format!("{} values for shape [{rows}, {cols}]", w.len()),
        });
    }
    check_finite(name, w)?;
    let group_len = scheme.group_len(cols);
    let (scales, zeros) = match (clip, hdiag) {
        (_, Some(h)) if h.len() != cols => {
            return Err(Error::BadTensor {
                name: name.into(),
                msg: format!("{} importances for {cols} input columns", h.len()),
            })
        }
        (WeightClip::MinMax, _) => range_params(backend, w, rows, cols, scheme)?,
        (WeightClip::Mse, Some(h)) => searched_params(w, cols, h, scheme),
        (WeightClip::Mse, None) => searched_params(w, cols, &vec![1.0; cols], scheme),
        (WeightClip::Threshold(c), _) => threshold_params(w, cols, c, scheme)?,
    };
    let inv_scales: Vec<f32> = scales.iter().map(|s| 1.0 / s).collect();
    let packed = backend.quantize_codes(
        w,
        rows,
        cols,
        &GroupParams {
            bits: scheme.bits,
            group_len,
            inv_scales: &inv_scales,
            zeros: &zeros,
        },
    )?;
    Ok(QuantizedTensor {
        rows,
        cols,
        scheme: *scheme,
        packed,
        scales,
        zeros: zeros.iter().map(|&z| z as u8).collect(),
    })
}

/// Each group's parameters from its range (the backend computes the ranges).
fn range_params(
    backend: &dyn Backend,
    w: &[f32],
    rows: usize,
    cols: usize,
    scheme: &QuantScheme,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let (mut mins, mut maxs) = backend.group_ranges(w, rows, cols, scheme.group_len(cols))?;
    if scheme.granularity == Granularity::PerTensor {
        // One range for the whole tensor, broadcast to every row.
        let lo = mins.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = maxs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        mins.iter_mut().for_each(|m| *m = lo);
        maxs.iter_mut().for_each(|m| *m = hi);
    }
    Ok(mins
        .iter()
        .zip(&maxs)
        .map(|(&lo, &hi)| params_from_range(lo, hi, scheme.bits, scheme.symmetric))
        .unzip())
}

/// Each group's parameters from its range clipped at `calibrator`'s
/// threshold ([`clipped_params`]), rows in parallel.
fn threshold_params(
    w: &[f32],
    cols: usize,
    calibrator: RangeCalibrator,
    scheme: &QuantScheme,
) -> Result<(Vec<f32>, Vec<u32>)> {
    let fit = |x: &[f32]| clipped_params(x, calibrator, scheme.bits, scheme.symmetric);
    let rows = w.len() / cols;
    if scheme.granularity == Granularity::PerTensor {
        let p = fit(w)?;
        return Ok((vec![p.0; rows], vec![p.1; rows]));
    }
    let g = scheme.group_len(cols);
    let params = w
        .par_chunks(cols)
        .map(|row| row.chunks(g).map(fit).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    Ok(params.into_iter().flatten().unzip())
}

/// Each group's parameters by the weighted scale search, on the host (rows
/// in parallel); a per-tensor scheme searches once over the whole weight.
fn searched_params(
    w: &[f32],
    cols: usize,
    hdiag: &[f32],
    scheme: &QuantScheme,
) -> (Vec<f32>, Vec<u32>) {
    let fit = |x: &[f32], h: &[f32]| fit_weighted(x, h, scheme.bits, scheme.symmetric);
    let rows = w.len() / cols;
    if scheme.granularity == Granularity::PerTensor {
        let h: Vec<f32> = hdiag.iter().copied().cycle().take(w.len()).collect();
        let p = fit(w, &h);
        return (vec![p.0; rows], vec![p.1; rows]);
    }
    let g = scheme.group_len(cols);
    w.par_chunks(cols)
        .flat_map_iter(|row| row.chunks(g).zip(hdiag.chunks(g)).map(|(x, h)| fit(x, h)))
        .collect::<Vec<_>>()
        .into_iter()
        .unzip()
}
