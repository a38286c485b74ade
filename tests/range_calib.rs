//! Range calibrators (`llmq_gpu::quant::range`) on distributions with a
//! known answer: a Gaussian with planted outliers, a Laplacian, a uniform.
//! The histogram is built batch by batch on the GPU (lavapipe in CI) and
//! on the CPU and must be identical; each calibrator's threshold is then
//! checked against the brute-force optimum of its own criterion, computed
//! here directly on the samples (MSE) or on the histogram (KL), and against
//! what the distribution implies (percentiles, no clipping of a uniform).

mod common;

use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::quant::range::{clipped_share, AbsHistogram, RangeCalibrator, DEFAULT_BINS};
use rand::Rng;

/// The three test distributions, `n` values each.
fn distributions(rng: &mut impl Rng, n: usize) -> Vec<(&'static str, Vec<f32>)> {
    let gauss: Vec<f32> = (0..n)
        .map(|i| {
            let v = common::normal(rng);
            // 0.05% planted outliers around ±40σ.
            if i % 2000 == 7 {
                v.signum() * (40.0 + v.abs())
            } else {
                v
            }
        })
        .collect();
    let laplace: Vec<f32> = (0..n)
        .map(|_| {
            let u: f32 = rng.gen_range(-0.5f32..0.5);
            -u.signum() * (1.0 - 2.0 * u.abs()).max(1e-12).ln()
        })
        .collect();
    let uniform: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    vec![
        ("gaussian+outliers", gauss),
        ("laplacian", laplace),
        ("uniform", uniform),
    ]
}

fn histogram(backend: &dyn Backend, x: &[f32]) -> AbsHistogram {
    let mut h = AbsHistogram::new(DEFAULT_BINS).unwrap();
    // Batches whose maxima grow make the range double on the way.
    for batch in x.chunks(x.len() / 7 + 1) {
        h.add(backend, "test", batch).unwrap();
    }
    h
}

/// Mean squared error of symmetric `bits`-bit quantization of `x` at threshold `t`.
fn sample_mse(x: &[f32], t: f32, bits: u32) -> f64 {
    let qmax = ((1u32 << (bits - 1)) - 1) as f64;
    let s = t as f64 / qmax;
    x.iter()
        .map(|&v| {
            let q = (v as f64 / s).round().clamp(-qmax, qmax) * s;
            (v as f64 - q).powi(2)
        })
        .sum::<f64>()
        / x.len() as f64
}

#[test]
fn gpu_and_cpu_histograms_are_identical() {
    let gpu = GpuBackend::new(common::gpu());
    let mut rng = common::rng("gpu_and_cpu_histograms_are_identical");
    for (name, x) in distributions(&mut rng, 200_003) {
        let (a, b) = (histogram(&CpuBackend, &x), histogram(&gpu, &x));
        assert_eq!(a, b, "{name}");
        assert_eq!(a.total, x.len() as u64);
        assert_eq!(a.counts.iter().sum::<u64>(), a.total, "{name}: counts lost");
        // Merging two halves gives the whole when the ranges agree.
        let (l, r) = x.split_at(x.len() / 2);
        let mut m = histogram(&CpuBackend, l);
        m.merge(&histogram(&CpuBackend, r)).unwrap();
        assert_eq!(m.total, a.total);
        assert_eq!(m.seen_max, a.seen_max);
    }
    // The GPU splits inputs over its binding limit.
    let ctx = common::fresh_gpu();
    ctx.set_max_binding(4096);
    let x: Vec<f32> = (0..10_000).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
    let want = CpuBackend.abs_histogram(&x, 256, 256.0 / 5.0).unwrap();
    let got = llmq_gpu::backend::gpu::histogram::abs_histogram(&ctx, &x, 256, 256.0 / 5.0).unwrap();
    assert_eq!(got, want);
}

#[test]
fn calibrators_find_each_distributions_optimum() {
    let mut rng = common::rng("calibrators_find_each_distributions_optimum");
    for (name, x) in distributions(&mut rng, 400_000) {
        let h = histogram(&CpuBackend, &x);
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(
            RangeCalibrator::MinMax.threshold(&h, 8).unwrap(),
            max,
            "{name}"
        );

        // Percentile: the share of |x| below the threshold, to a bin's width.
        let t = RangeCalibrator::Percentile(99.0).threshold(&h, 8).unwrap();
        let below = x.iter().filter(|v| v.abs() <= t).count() as f64 / x.len() as f64;
        let below_prev =
            x.iter().filter(|v| v.abs() <= t - h.width()).count() as f64 / x.len() as f64;
        assert!(
            below >= 0.99 && below_prev < 0.99,
            "{name}: p99 {t}: {below} / {below_prev}"
        );

        for bits in [4, 8] {
            // MSE: within 2% of the best error over 400 thresholds on the samples.
            let t = RangeCalibrator::Mse.threshold(&h, bits).unwrap();
            let best = (1..=400)
                .map(|k| sample_mse(&x, max * k as f32 / 400.0, bits))
                .fold(f64::INFINITY, f64::min);
            let ours = sample_mse(&x, t, bits);
            eprintln!(
                "{name} {bits}-bit MSE: T = {t:.3} (max {max:.3}), {ours:.4e} vs best {best:.4e}"
            );
            assert!(
                ours <= 1.02 * best,
                "{name} {bits}-bit: MSE {ours} vs best {best}"
            );
            assert!(
                ours <= sample_mse(&x, max, bits),
                "{name}: worse than min-max"
            );
        }

        // KL at 8 bits: clips the outliers (Gaussian), never a uniform.
        let t = RangeCalibrator::Kl.threshold(&h, 8).unwrap();
        eprintln!(
            "{name} KL: T = {t:.3} of {max:.3}, clips {:.4}%",
            100.0 * clipped_share(&h, t)
        );
        match name {
            "gaussian+outliers" => assert!(t > 3.0 && t < 20.0, "KL threshold {t}"),
            "uniform" => assert!(t >= 0.95 * max, "KL threshold {t} of {max}"),
            _ => assert!(t > 5.0 && t < max, "KL threshold {t} of {max}"),
        }
    }
}

#[test]
fn bad_calibration_requests_are_clear_errors() {
    for p in [0.0, -1.0, 100.5, f64::NAN] {
        let e = RangeCalibrator::parse("percentile", Some(p)).unwrap_err();
        assert!(e.to_string().contains("(0, 100]"), "{e}");
    }
    assert!(RangeCalibrator::parse("histogram", None)
        .unwrap_err()
        .to_string()
        .contains("minmax"));
    let mut h = AbsHistogram::new(DEFAULT_BINS).unwrap();
    let e = h
        .add(&CpuBackend, "blk.0.attn_q input", &[1.0, f32::NAN])
        .unwrap_err();
    assert!(e.to_string().contains("blk.0.attn_q input"), "{e}");
    // A dead channel (all zeros) gives threshold 0 for the caller to handle.
    h.add(&CpuBackend, "x", &[0.0; 10]).unwrap();
    assert_eq!(RangeCalibrator::Kl.threshold(&h, 8).unwrap(), 0.0);
    assert!(AbsHistogram::new(1000).is_err());
}
