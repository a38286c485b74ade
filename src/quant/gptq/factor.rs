//! What GPTQ derives from a Hessian alone: dead inputs, the act-order
//! permutation, and the upper Cholesky factor of the damped H⁻¹ (damping
//! raised automatically when Cholesky fails).

use super::GptqOptions;
use crate::backend::{Backend, CpuBackend};
use crate::error::{Error, Result};
use crate::quant::rtn::check_finite;
use rayon::prelude::*;
use std::time::Instant;

/// The next damping after a failed Cholesky.
fn raise_damp(damp: f64) -> f64 {
    (2.0 * damp).max(1e-3)
}

/// What GPTQ derives from a Hessian alone, shared by the linears that read
/// the same inputs (q/k/v, gate/up): dead inputs, the act-order permutation
/// and the upper Cholesky factor of the damped, permuted H⁻¹.
#[derive(Clone, Debug)]
pub struct Factored {
    pub cols: usize,
    /// Inputs with `H[i, i] == 0`.
    pub dead: Vec<usize>,
    /// With act-order, `perm[k]` is the original index of the k-th column.
    pub perm: Option<Vec<usize>>,
    /// `[cols, cols]` f32, upper triangular, in permuted order.
    pub hinv: Vec<f32>,
    pub damp_requested: f64,
    pub damp_used: f64,
    pub damp_retries: u32,
    pub seconds: f64,
}

/// Checks and factors the Hessian `h` `[cols, cols]` of the inputs of the
/// linear(s) `name` (see [`Factored`]).
pub fn factor(
    backend: &dyn Backend,
    name: &str,
    h: &[f32],
    cols: usize,
    opts: &GptqOptions,
) -> Result<Factored> {
    let t = Instant::now();
    if h.len() != cols * cols {
        return Err(Error::BadTensor {
            name: format!("{name} (Hessian)"),
            msg: format!("{} values for [{cols}, {cols}]", h.len()),
        });
    }
    if opts.block == 0 || !opts.damp.is_finite() || opts.damp < 0.0 {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': block {} and damp {} (need block > 0, damp >= 0)",
            opts.block, opts.damp
        )));
    }
    if check_finite(name, h).is_err() {
        return Err(Error::BadTensor {
            name: format!("{name} (Hessian)"),
            msg: "has non-finite entries: the calibration inputs overflow f32 when \
                  squared; check the weights of the earlier layers"
                .into(),
        });
    }
    // Dead inputs: a feature that was always zero carries no information;
    // give it a unit diagonal (its weights are zeroed by `quantize_factored`).
    // O(cols²) host passes, in parallel: a 11008² H is 121M values.
    let mut hd: Vec<f64> = h.par_iter().map(|&v| v as f64).collect();
    let mut dead = Vec::new();
    for i in 0..cols {
        let d = hd[i * cols + i];
        if d < 0.0 {
            return Err(Error::BadTensor {
                name: format!("{name} (Hessian)"),
                msg: format!("negative diagonal H[{i}, {i}] = {d}; not a Hessian of inputs"),
            });
        }
        if d == 0.0 {
            hd[i * cols + i] = 1.0;
            dead.push(i);
        }
    }
    if !(0.0..=1.0).contains(&opts.diag_blend) {
        return Err(Error::Config(format!(
            "GPTQ of '{name}': diagonal blend {} (need 0 to 1)",
            opts.diag_blend
        )));
    }
    // H ← (1−λ)·H + λ·diag(H): the correlations shrunk toward none.
    if opts.diag_blend > 0.0 {
        let keep = 1.0 - opts.diag_blend;
        hd.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
            for (j, v) in row.iter_mut().enumerate() {
                if i != j {
                    *v *= keep;
                }
            }
        });
    }
    // Act-order: rows and columns of H by decreasing diag(H).
    let mut perm = None;
    if opts.act_order {
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| hd[b * cols + b].total_cmp(&hd[a * cols + a]));
        let mut permuted = vec![0f64; cols * cols];
        permuted
            .par_chunks_mut(cols)
            .zip(order.par_iter())
            .for_each(|(row, &i)| {
                for (x, &j) in row.iter_mut().zip(&order) {
                    *x = hd[i * cols + j];
                }
            });
        hd = permuted;
        perm = Some(order);
    }
    // Damping, then the upper Cholesky factor of H⁻¹.
    let (hinv, damp_used, damp_retries) = inverse_cholesky_upper(backend, name, &hd, cols, opts)?;
    Ok(Factored {
        cols,
        dead,
        perm,
        hinv,
        damp_requested: opts.damp,
        damp_used,
        damp_retries,
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// `U` with `H⁻¹ = UᵀU` for `H + λ·mean(diag H)·I` (gptq.py: cholesky,
/// cholesky_inverse, cholesky upper), as f32 `[cols, cols]`, by the
/// backend's [`Backend::inverse_cholesky_upper`] (one Cholesky and one
/// triangular inverse). When the factorisation fails, λ is raised and it is
/// retried, with a warning; a GPU (f32) failure is first retried in f64 on
/// the CPU so the damping used does not depend on the device.
/// Returns the factor, the λ used and the number of retries.
fn inverse_cholesky_upper(
    backend: &dyn Backend,
    name: &str,
    h: &[f64],
    cols: usize,
    opts: &GptqOptions,
) -> Result<(Vec<f32>, f64, u32)> {
    let mean_diag = (0..cols).map(|i| h[i * cols + i]).sum::<f64>() / cols as f64;
    let mut damp = opts.damp;
    let mut retries = 0;
    loop {
        let lambda = damp * mean_diag;
        let damped: Vec<f32> = h
            .par_iter()
            .enumerate()
            .map(|(k, &v)| (v + if k % (cols + 1) == 0 { lambda } else { 0.0 }) as f32)
            .collect();
        let mut u = backend.inverse_cholesky_upper(&damped, cols)?;
        if u.is_none() && !backend.name().starts_with("cpu") {
            u = CpuBackend.inverse_cholesky_upper(&damped, cols)?;
        }
        match u {
            Some(u) => {
                if retries > 0 {
                    log::warn!(
                        "{name}: used damping {damp} (asked for {}) after {retries} failed Cholesky attempt(s)",
                        opts.damp
                    );
                }
                return Ok((u, damp, retries));
            }
            None if retries < opts.max_damp_retries => {
                let next = raise_damp(damp);
                log::warn!(
                    "{name}: Hessian not positive definite with damping {damp}; retrying with {next}"
                );
                damp = next;
                retries += 1;
            }
            None => {
                return Err(Error::BadTensor {
                    name: format!("{name} (Hessian)"),
                    msg: format!(
                        "not positive definite even with damping {damp} × mean diagonal after \
                         {retries} retries; the calibration inputs are degenerate"
                    ),
                })
            }
        }
    }
}
