//! The scale searches of ggml-quants.c that the k-quant reference
//! quantizers run on each sub-block, ported operation for operation (same
//! f32 arithmetic, same order) so that the codes match llama.cpp's bit for
//! bit.

/// ggml-quants.c `GROUP_MAX_EPS`: a block whose largest value is below it
/// is all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml-quants.c `nearest_int`: round half to even by adding 1.5·2²³
/// (valid for |v| ≤ 2²², as there).
pub(crate) fn nearest_int(v: f32) -> i32 {
    let t = v + 12582912.0;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// ggml-quants.c `make_qx_quants` with `rmse_type` 1: codes `L` in
/// `0..2·nmax` of the symmetric scale that, over 19 trial scales around
/// `max / −nmax`, maximises `(Σ w·x·l)² / Σ w·l²`, `w` the importance
/// weights `qw` or, without them, `x²`; returns that scale.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], codes: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let max = crate::encoding::ggml::legacy::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        codes.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let (l, w) = (code(iscale, v) as f32, qw.map_or(v * v, |q| q[i]));
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let iscale = -(nmax as f32) / max;
    for (l, &v) in codes.iter_mut().zip(x) {
        *l = (code(iscale, v) + nmax) as i8;
    }
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in codes.iter_mut().zip(x) {
                *l = (code(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// ggml-quants.c `make_q3_quants` with `do_rmse`: symmetric codes in
/// `0..2·nmax` from the scale `max / −nmax`, then up to 5 passes that move
/// single codes while `(Σ w·x·l)² / Σ w·l²` (`w = x²`) grows; returns the
/// least-squares scale of the final codes.
pub(super) fn make_q3_quants(nmax: i32, x: &[f32], codes: &mut [i8]) -> f32 {
    let max = crate::encoding::ggml::legacy::signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        codes.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (l, &v) in codes.iter_mut().zip(x) {
        *l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as i8;
        let (lf, w) = (f32::from(*l), v * v);
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (l, &v) in codes.iter_mut().zip(x) {
            let w = v * v;
            let old = f32::from(*l);
            let mut slx = sumlx - w * v * old;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * old * old;
                let new = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new != i32::from(*l) {
                    let nf = new as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new as i8;
                        (sumlx, suml2) = (slx, sl2);
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    codes.iter_mut().for_each(|l| *l += nmax as i8);
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// The trial scales of [`make_qkx2_quants`]: `nmax + rmin + rdelta·is`
/// for `is` in `0..=nstep`, and whether errors are absolute (`use_mad`)
/// rather than squared.
pub(crate) struct Qkx2 {
    pub rmin: f32,
    pub rdelta: f32,
    pub nstep: i32,
    pub use_mad: bool,
}

/// ggml-quants.c `make_qkx2_quants` (and `make_qkx3_quants`, which the
/// imatrix quantizers run: the same search given weights): asymmetric codes `L` in `0..=nmax`
/// for `x ≈ scale·L − min` (min ≥ 0 returned in `.1`), starting from the
/// min-max fit and keeping, over the trial scales, the weighted
/// least-squares (scale, min) of lowest weighted error.
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    codes: &mut [u8],
    p: &Qkx2,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes.iter_mut().for_each(|l| *l = 0);
        return (0.0, -min);
    }
    let err = |d: f32| if p.use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        codes[i] = nearest_int(iscale * (x[i] - min)).clamp(0, nmax) as u8;
        best_error += weights[i] * err(scale * f32::from(codes[i]) + min - x[i]);
    }
    if p.nstep < 1 {
        return (scale, -min);
    }
    let mut aux = [0u8; 32];
    let aux = &mut aux[..n];
    for is in 0..=p.nstep {
        iscale = (p.rmin + p.rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, lf) = (weights[i], l as f32);
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                cur_error += weights[i] * err(this_scale * f32::from(aux[i]) + this_min - x[i]);
            }
            if cur_error < best_error {
                codes.copy_from_slice(aux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// ggml-quants.c `make_qp_quants`: non-negative `x` (sub-block scales or
/// mins) as integers `L` in `0..=nmax` of one scale, chosen over 9 trial
/// scales by weighted squared error, then single codes moved while
/// `(Σ w·x·l)² / Σ w·l²` grows; returns the least-squares scale.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], codes: &mut [u8], qw: &[f32]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| m.max(v));
    if max < GROUP_MAX_EPS {
        codes.iter_mut().for_each(|l| *l = 0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    let mse = |iscale: f32, cap: bool| {
        let scale = 1.0 / iscale;
        x.iter().zip(qw).fold(0f32, |e, (&v, &w)| {
            let l = nearest_int(iscale * v);
            let l = if cap { l.min(nmax) } else { l };
            let diff = v - scale * l as f32;
            e + w * diff * diff
        })
    };
    let mut best = mse(iscale, false);
    for is in (-4..=4).filter(|&is| is != 0) {
        let trial = (0.1 * is as f32 + nmax as f32) / max;
        let e = mse(trial, true);
        if e < best {
            best = e;
            iscale = trial;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for ((l, &v), &w) in codes.iter_mut().zip(x).zip(qw) {
        *l = nearest_int(iscale * v).min(nmax) as u8;
        let lf = f32::from(*l);
        sumlx += w * v * lf;
        suml2 += w * lf * lf;
    }
    for _ in 0..5 {
        let mut changed = false;
        for ((l, &v), &w) in codes.iter_mut().zip(x).zip(qw) {
            let old = f32::from(*l);
            let mut slx = sumlx - w * v * old;
            let mut sl2 = suml2 - w * old * old;
            if slx > 0.0 && sl2 > 0.0 {
                let new = nearest_int(v * sl2 / slx).min(nmax);
                if new != i32::from(*l) {
                    let nf = new as f32;
                    slx += w * v * nf;
                    sl2 += w * nf * nf;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l = new as u8;
                        (sumlx, suml2) = (slx, sl2);
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_fit_their_blocks() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-3.5), -4);
        let x: Vec<f32> = (0..16).map(|i| (i as f32 - 7.3) * 0.1).collect();
        let mut q = [0i8; 16];
        let s = make_q3_quants(4, &x, &mut q);
        for (&v, &l) in x.iter().zip(&q) {
            assert!((0..8).contains(&l));
            assert!(
                (v - s * f32::from(l - 4)).abs() <= s.abs() * 0.75,
                "{v} {l} {s}"
            );
        }
        let w = vec![1f32; 16];
        let mut u = [0u8; 16];
        let p = Qkx2 {
            rmin: -0.5,
            rdelta: 0.1,
            nstep: 15,
            use_mad: false,
        };
        let (s, m) = make_qkx2_quants(15, &x, &w, &mut u, &p);
        for (&v, &l) in x.iter().zip(&u) {
            assert!(
                (v - (s * f32::from(l) - m)).abs() <= s * 0.75,
                "{v} {l} {s} {m}"
            );
        }
        make_qkx2_quants(3, &[0.0; 16], &w, &mut u, &p);
        assert!(u.iter().all(|&l| l == 0));
    }
}
