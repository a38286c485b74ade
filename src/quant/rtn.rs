//! Round-to-nearest (RTN) linear quantization, written once over [`Backend`].
//!
//! 1. reject NaN/Inf (naming the tensor),
//! 2. the backend computes each group's range,
//! 3. the host turns ranges into scales/zero-points (one shared formula,
//!    [`params_from_range`], so both backends agree exactly),
//! 4. the backend quantizes and packs.

use crate::backend::{Backend, GroupParams};
use crate::encoding::affine::scheme::{params_from_range, Granularity, QuantScheme};
use crate::encoding::QuantizedTensor;
use crate::error::{Error, Result};
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
    scheme.check_shape(name, rows, cols)?;
    if w.len() != rows * cols {
        return Err(Error::BadTensor {
            name: name.into(),
            msg: format!("{} values for shape [{rows}, {cols}]", w.len()),
        });
    }
    check_finite(name, w)?;
    let group_len = scheme.group_len(cols);
    let (mut mins, mut maxs) = backend.group_ranges(w, rows, cols, group_len)?;
    if scheme.granularity == Granularity::PerTensor {
        // One range for the whole tensor, broadcast to every row.
        let lo = mins.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = maxs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        mins.iter_mut().for_each(|m| *m = lo);
        maxs.iter_mut().for_each(|m| *m = hi);
    }
    let (scales, zeros): (Vec<f32>, Vec<u32>) = mins
        .iter()
        .zip(&maxs)
        .map(|(&lo, &hi)| params_from_range(lo, hi, scheme.bits, scheme.symmetric))
        .unzip();
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
