//! GPTVQ (issue 13) on random weights and Hessians of correlated inputs:
//! the stored VQ encoding (matmul against an f64 reference, parts written
//! and read back), the algorithm against GPTQ at equal or more bits, each
//! of its parts doing what it claims, and refused inputs.

mod common;

use common::correlated_inputs;
use llmq_gpu::backend::CpuBackend;
use llmq_gpu::encoding::affine::packing::pack_codes;
use llmq_gpu::encoding::vq::matmul::matmul_reference;
use llmq_gpu::encoding::vq::row_scale::RowScales;
use llmq_gpu::encoding::vq::{quantize_codebook, AssignWeight, VqInit};
use llmq_gpu::encoding::{Encoding, QuantScheme, VqScheme, VqTensor};
use llmq_gpu::quant::gptq::{self, GptqOptions, Hessian, Weight};
use llmq_gpu::quant::gptvq::{self, GptvqOptions};
use rand::Rng;

fn random_vq(rng: &mut impl Rng, s: VqScheme, rows: usize, cols: usize) -> VqTensor {
    let n = s.codebooks(rows, cols);
    let mut codebooks = vec![0f32; n * s.codebook_len()];
    let mut scales = vec![0f32; n];
    for (cb, sc) in codebooks.chunks_mut(s.codebook_len()).zip(&mut scales) {
        cb.iter_mut().for_each(|v| *v = rng.gen::<f32>() - 0.5);
        *sc = quantize_codebook(cb, s.codebook_bits);
    }
    let per_row = cols / s.dim as usize;
    let idx: Vec<u32> = (0..rows * per_row)
        .map(|_| rng.gen_range(0..s.centroids() as u32))
        .collect();
    // Row scales fitted to blocks whose magnitudes span 2^±4.
    let row_scales = (s.scale_block > 0).then(|| {
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.gen::<f32>() - 0.5) * (rng.gen::<f32>() * 8.0 - 4.0).exp2())
            .collect();
        let mut rs = RowScales::new(rows, cols / s.scale_block as usize);
        rs.fit(&w, 0, s.scale_block as usize);
        Box::new(rs)
    });
    VqTensor {
        rows,
        cols,
        scheme: s,
        indices: pack_codes(&idx, rows, per_row, s.index_bits()),
        codebooks,
        scales,
        svd: None,
        row_scales,
    }
}

fn scheme(d: u32, b: u32, group: usize, cb: u32, scale_block: u32) -> VqScheme {
    let s = VqScheme::new(d, b, group, cb).unwrap();
    match scale_block {
        0 => s,
        b => s.with_scale_block(b).unwrap(),
    }
}

#[test]
fn vq_matmul_matches_the_f64_reference() {
    let mut rng = common::rng("vq_matmul_matches_the_f64_reference");
    // Every CPU kernel: 16 centroids (nibbles), up to 8 (permuted), more
    // (gathered), units starting mid-word (2D 3-bit, blocks of 16) and
    // rows whose vectors are no multiple of 8 (584 columns).
    for (d, b, group, cb, sb, cols) in [
        (1, 3, 128, 8, 0, 576),
        (1, 2, 256, 8, 0, 584),
        (2, 2, 512, 8, 0, 576),
        (2, 3, 1024, 0, 0, 584),
        (2, 3, 1024, 8, 16, 576),
        (4, 2, 4096, 8, 0, 576),
        (2, 2, 512, 8, 64, 576),
        (4, 2, 4096, 8, 64, 576),
    ] {
        let s = scheme(d, b, group, cb, sb);
        // A shorter last row group where its codebooks still cover k vectors.
        let base = 8 * s.rows_per_codebook();
        let ragged = base + s.rows_per_codebook() / 2;
        let rows = if s.check_shape("t", ragged, cols).is_ok() {
            ragged
        } else {
            base
        };
        let t = random_vq(&mut rng, s, rows, cols);
        for tokens in [1, 3, 16] {
            let x: Vec<f32> = (0..tokens * cols).map(|_| rng.gen::<f32>() - 0.5).collect();
            let y = t.matmul(&x, tokens).unwrap();
            let want = matmul_reference(&t, &x, tokens).unwrap();
            for (a, w) in y.iter().zip(&want) {
                assert!(
                    (*a as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{s:?}: {a} vs {w}"
                );
            }
        }
        // Stored parts read back to the same tensor, and the bytes are
        // what the encoding counts.
        let parts = t.stored_parts("t").unwrap();
        let bytes: u64 = parts.iter().map(|(_, b)| b.len() as u64).sum();
        assert_eq!(bytes, Encoding::Vq(s).stored_bytes(rows, cols));
        let back = VqTensor::from_stored_parts("t", s, rows, cols, |p| {
            Ok(&parts.iter().find(|(q, _)| q == p).unwrap().1[..])
        })
        .unwrap();
        assert_eq!(back, t);
    }
}

/// A `[rows, cols]` problem: weights and the Hessian of correlated inputs.
fn problem(rng: &mut impl Rng, rows: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    let x = correlated_inputs(rng, 4 * cols, cols, cols / 2);
    let w = common::random_weights(rng, rows * cols);
    let mut h = Hessian::new(cols);
    h.add_batch(&CpuBackend, "x", &x, 4 * cols).unwrap();
    (w, h.h)
}

fn gptvq_error(w: &[f32], h: &[f32], rows: usize, cols: usize, o: &GptvqOptions) -> (f64, f64) {
    let weight = Weight::new("w", w, rows, cols, h).unwrap();
    let gopts = GptqOptions {
        act_order: false,
        ..GptqOptions::default()
    };
    let f = gptq::factor(&CpuBackend, "w", h, cols, &gopts).unwrap();
    let (t, r) = gptvq::quantize_factored(&CpuBackend, &weight, &f, o, 128, &[]).unwrap();
    let direct = common::proxy_error(w, &t.dequantize().unwrap(), h, rows, cols);
    assert!((direct - r.gptq.proxy_error).abs() <= 1e-3 * direct + 1e-9);
    assert!(r.gptq.proxy_error <= r.error_before_update + 1e-12);
    (r.gptq.proxy_error, r.error_before_update)
}

fn gptq_error(w: &[f32], h: &[f32], rows: usize, cols: usize, bits: u32, group: usize) -> f64 {
    let scheme =
        QuantScheme::new(bits, false, llmq_gpu::encoding::Granularity::Group(group)).unwrap();
    let (_, r) = gptq::quantize(
        &CpuBackend,
        "w",
        w,
        rows,
        cols,
        h,
        &scheme,
        &GptqOptions::recommended(),
    )
    .unwrap();
    r.proxy_error
}

/// At about 2 and 3 bits per weight GPTVQ 2D beats GPTQ (act-order, scale
/// search) with more bits per weight, and at 2 bits the codebook update helps.
#[test]
fn gptvq_beats_gptq_at_fewer_bits() {
    let mut rng = common::rng("gptvq_beats_gptq_at_fewer_bits");
    let (rows, cols) = (64, 512);
    let (w, h) = problem(&mut rng, rows, cols);
    for (bits, group, gptq_group) in [(2u32, 2048usize, 64usize), (3, 8192, 128)] {
        let s = VqScheme::new(2, bits, group, 8).unwrap();
        let affine = QuantScheme::new(
            bits,
            false,
            llmq_gpu::encoding::Granularity::Group(gptq_group),
        )
        .unwrap();
        let (vq_bpw, gptq_bpw) = (
            Encoding::Vq(s).stored_bits_per_weight(rows, cols),
            Encoding::Affine(affine).stored_bits_per_weight(rows, cols),
        );
        assert!(vq_bpw < gptq_bpw, "{vq_bpw} vs {gptq_bpw}");
        let (vq, before) = gptvq_error(&w, &h, rows, cols, &GptvqOptions::new(s));
        let gq = gptq_error(&w, &h, rows, cols, bits, gptq_group);
        eprintln!("{bits}b: GPTVQ 2D {vq_bpw:.3} bpw {vq:.5} (before update {before:.5}), GPTQ {gptq_bpw:.3} bpw {gq:.5}");
        assert!(vq < gq, "{bits} bits: GPTVQ {vq} vs GPTQ {gq}");
        // At 2 bits the update gains 0.4–5% here. At 3 bits the 64
        // centroids already sit near the optimum and the re-rounding to
        // int8 can undo the gain; the update is then dropped.
        if bits == 2 {
            assert!(
                vq < before,
                "the codebook update did not help: {before} → {vq}"
            );
        }
    }
}

/// With H = I the column loop feeds no error forward, so GPTVQ is
/// weighted k-means: every vector ends at its nearest centroid.
#[test]
fn identity_hessian_assigns_nearest_centroids() {
    let mut rng = common::rng("identity_hessian_assigns_nearest_centroids");
    let (rows, cols) = (16, 256);
    let w = common::random_weights(&mut rng, rows * cols);
    let h: Vec<f32> = (0..cols * cols)
        .map(|i| if i / cols == i % cols { 1.0 } else { 0.0 })
        .collect();
    for init in [VqInit::Mahalanobis, VqInit::KmeansPlusPlus] {
        let s = VqScheme::new(2, 2, 1024, 8).unwrap();
        let o = GptvqOptions {
            codebook_update: false,
            init,
            ..GptvqOptions::new(s)
        };
        let weight = Weight::new("w", &w, rows, cols, &h).unwrap();
        let gopts = GptqOptions {
            act_order: false,
            damp: 0.0,
            ..GptqOptions::default()
        };
        let f = gptq::factor(&CpuBackend, "w", &h, cols, &gopts).unwrap();
        let (t, _) = gptvq::quantize_factored(&CpuBackend, &weight, &f, &o, 128, &[]).unwrap();
        let q = t.dequantize().unwrap();
        let len = s.codebook_len();
        for r in 0..rows {
            for v in (0..cols).step_by(2) {
                let cb = &t.codebooks[s.codebook_of(cols, r, v) * len..][..len];
                let x = &w[r * cols + v..r * cols + v + 2];
                let (_, best) = llmq_gpu::encoding::vq::em::nearest(x, &[1.0, 1.0], cb, 2);
                let got = (x[0] - q[r * cols + v]).powi(2) + (x[1] - q[r * cols + v + 1]).powi(2);
                assert!(
                    got <= best + 1e-9,
                    "{init:?} row {r} vector {v}: {got} vs {best}"
                );
            }
        }
    }
}

/// Both assignment weightings and both inits run and land near the best
/// of the four. EM finds local optima, and the Mahalanobis init finds
/// worse ones on these Gaussian weights, with a heavy tail: over 340 seeds
/// (300–339, 1000–1299) the worst ratio to the best of the four was 1.71
/// for k-means++ (p99 1.27), 2.67 for the default Cholesky diagonal with
/// Mahalanobis (p99 1.97; CI failed at 2.81 with seed 7865445098585665066)
/// and 4.59 for the inverse diagonal with Mahalanobis (p99 4.24), so the
/// bounds are 2.2, 4 and 8: this test checks that each combination works,
/// not which is best (the README's ablations measure that).
#[test]
fn weightings_and_inits_all_work() {
    let mut rng = common::rng("weightings_and_inits_all_work");
    let (rows, cols) = (32, 256);
    let (w, h) = problem(&mut rng, rows, cols);
    let s = VqScheme::new(2, 2, 1024, 8).unwrap();
    let mut errors = Vec::new();
    for weighting in [AssignWeight::InverseDiag, AssignWeight::CholeskyDiag] {
        for init in [VqInit::Mahalanobis, VqInit::KmeansPlusPlus] {
            let o = GptvqOptions {
                weighting,
                init,
                ..GptvqOptions::new(s)
            };
            let (e, before) = gptvq_error(&w, &h, rows, cols, &o);
            eprintln!("{weighting:?} {init:?}: {e:.5} (before the update {before:.5})");
            errors.push((weighting, init, e));
        }
    }
    let best = errors.iter().fold(f64::MAX, |a, e| a.min(e.2));
    for &(weighting, init, e) in &errors {
        let bound = match (weighting, init) {
            (_, VqInit::KmeansPlusPlus) => 2.2,
            (AssignWeight::CholeskyDiag, VqInit::Mahalanobis) => 4.0,
            (AssignWeight::InverseDiag, VqInit::Mahalanobis) => 8.0,
        };
        assert!(
            e.is_finite() && e <= bound * best,
            "{weighting:?} {init:?}: {e} vs best {best}: {errors:?}"
        );
    }
}

#[test]
fn bad_inputs_are_refused_with_the_tensor_name() {
    let s = VqScheme::new(2, 2, 2048, 8).unwrap();
    let (rows, cols) = (12, 256);
    let w = vec![0.01f32; rows * cols];
    let h: Vec<f32> = (0..cols * cols)
        .map(|i| if i / cols == i % cols { 1.0 } else { 0.0 })
        .collect();
    let gopts = GptqOptions {
        act_order: false,
        ..GptqOptions::default()
    };
    let f = gptq::factor(&CpuBackend, "w", &h, cols, &gopts).unwrap();
    let run = |w: &[f32], rows: usize, cols: usize, s: VqScheme| {
        let weight = Weight::new("blk.0.attn_q", w, rows, cols, &h)?;
        gptvq::quantize_factored(&CpuBackend, &weight, &f, &GptvqOptions::new(s), 128, &[])
            .map(|_| ())
    };
    // 8 rows share a codebook of 256 centroids; of 9 rows the last group
    // has 1 row, 128 vectors: too few. (12 rows, a last group of 4 and 512
    // vectors, are fine: ragged like a row's last span.)
    let wide = VqScheme::new(2, 4, 2048, 8).unwrap();
    let e = run(&w[..9 * cols], 9, cols, wide).unwrap_err().to_string();
    assert!(e.contains("blk.0.attn_q") && e.contains("vectors"), "{e}");
    assert!(run(&w, rows, cols, s).is_ok());
    // d = 4 does not divide 254 columns (checked before anything else).
    let s4 = VqScheme::new(4, 2, 1024, 8).unwrap();
    let e = s4
        .check_shape("blk.0.attn_q", 16, 254)
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiple of 4"), "{e}");
    // A codebook larger than its group.
    assert!(VqScheme::new(2, 4, 256, 8)
        .unwrap_err()
        .to_string()
        .contains("centroids"));
    // NaN weights.
    let mut bad = vec![0.01f32; 16 * cols];
    bad[77] = f32::NAN;
    let e = run(&bad, 16, cols, s).unwrap_err().to_string();
    assert!(e.contains("blk.0.attn_q"), "{e}");
}

/// The GPU's VQ GEMV and GEMM (shaders/vq_decode.wgsl in the matmul
/// kernels) against the f64 reference, also with the weight split into
/// row-group chunks by a small binding limit. Tolerance as the affine
/// cross-check: f32 sums in another order, `1e-4 · Σ|w||x|`.
#[test]
fn vq_matmul_on_the_gpu_matches_the_f64_reference() {
    use llmq_gpu::backend::gpu::matmul::{matmul_resident, GpuQuantWeights};
    let ctx = common::fresh_gpu();
    let mut rng = common::rng("vq_matmul_on_the_gpu_matches_the_f64_reference");
    let cases = [
        (1, 3, 128, 8, 0),
        (2, 2, 512, 8, 0),
        (2, 3, 1024, 0, 0),
        (4, 2, 4096, 8, 0),
        (2, 2, 512, 8, 64),
    ];
    for (split, (d, b, group, cb, sb)) in [false, true]
        .into_iter()
        .flat_map(|s| cases.map(|c| (s, c)))
    {
        let s = scheme(d, b, group, cb, sb);
        let (base, cols) = (48 * s.rows_per_codebook(), 320);
        let ragged = base + s.rows_per_codebook() / 2;
        let rows = if s.check_shape("t", ragged, cols).is_ok() {
            ragged
        } else {
            base
        };
        let t = random_vq(&mut rng, s, rows, cols);
        // Split: bindings of two row groups' indices or codebooks (at least
        // one token's activations), so the 48 row groups take many chunks.
        let words = llmq_gpu::encoding::vq::index_words(&s, cols);
        let one = (s.rows_per_codebook() * words * 4).max(s.spans(cols) * s.codebook_len() * 4);
        ctx.set_max_binding(if split {
            (2 * one).max(rows.max(cols) * 4) as u64
        } else {
            128 << 20
        });
        let w = GpuQuantWeights::upload_vq(&ctx, &t).unwrap();
        assert_eq!(w.n_chunks() > 1, split, "{s:?}");
        let dense = t.dequantize().unwrap();
        for tokens in [1, 3, 70] {
            let x: Vec<f32> = (0..tokens * cols).map(|_| rng.gen::<f32>() - 0.5).collect();
            let got = matmul_resident(&ctx, &w, &x, tokens).unwrap();
            let want = matmul_reference(&t, &x, tokens).unwrap();
            for (i, (g, r)) in got.iter().zip(&want).enumerate() {
                let (tk, row) = (i / rows, i % rows);
                let mag: f64 = (0..cols)
                    .map(|j| (dense[row * cols + j] * x[tk * cols + j]).abs() as f64)
                    .sum();
                assert!(
                    (*g as f64 - r).abs() <= 1e-4 * (mag + 1e-6),
                    "{s:?} split {split} tokens {tokens} [{tk}, {row}]: {g} vs {r}"
                );
            }
        }
    }
}

/// SVD-compressed 1D codebooks (`--svd-rank`): sorting keeps every weight,
/// a rank-r set of codebooks survives rank r, the compressed weight stores
/// fewer bytes and reads back equal, the
/// codebook update in the factors' coordinates does not raise the error,
/// and the error stays within 10× the whole codebooks'. Seen on 3-bit 1D
/// g256 (k = 8, rank 4) over seeds: 1.2× to 6.2× (rank 4 of 8 loses much
/// of codebooks that differ between groups: the paper too finds int8
/// codebooks better than SVD at equal bits; codebooks within 1–4%).
#[test]
fn svd_compressed_codebooks_store_less_and_read_back() {
    use llmq_gpu::encoding::vq::svd;
    let mut rng = common::rng("svd_compressed_codebooks_store_less_and_read_back");
    let (rows, cols) = (32, 512);
    let (w, h) = problem(&mut rng, rows, cols);
    let s = VqScheme::new(1, 3, 256, 8).unwrap();
    let (whole, _) = gptvq_error(&w, &h, rows, cols, &GptvqOptions::new(s));
    let o = GptvqOptions::new(s.with_svd_rank(4).unwrap());
    let (compressed, before) = gptvq_error(&w, &h, rows, cols, &o);
    eprintln!("whole codebooks {whole:.5}, rank 4 {compressed:.5} (before the update {before:.5})");
    assert!(compressed <= before + 1e-12);
    assert!(compressed < 10.0 * whole, "{compressed} vs {whole}");

    // Storage: factors + basis, fewer bytes than the whole codebooks, read
    // back equal.
    let t = random_vq(&mut rng, s, rows, cols);
    let c = svd::compress(&t, 4).unwrap();
    assert_eq!(c.scheme.svd_rank, 4);
    assert!(c.stored_bytes() < t.stored_bytes());
    let parts = c.stored_parts("w").unwrap();
    assert_eq!(parts.last().unwrap().0.suffix, "codebook_basis");
    let stored: u64 = parts.iter().map(|(_, b)| b.len() as u64).sum();
    assert_eq!(stored, c.stored_bytes());
    let back = VqTensor::from_stored_parts("w", c.scheme, rows, cols, |p| {
        parts
            .iter()
            .find(|(q, _)| q.suffix == p.suffix)
            .map(|(_, b)| b.as_slice())
            .ok_or_else(|| llmq_gpu::Error::Config(p.suffix.into()))
    })
    .unwrap();
    assert_eq!(back, c);
    // Rank-2 codebooks, descending (so sorting must remap every index), at
    // rank 2: nothing lost but rounding.
    let mut r2 = t.clone();
    for (n, cb) in r2.codebooks.chunks_mut(8).enumerate() {
        for (i, v) in cb.iter_mut().enumerate() {
            *v = (n as f32 * 0.1 + 0.3) * (3.5 - i as f32) + (n % 3) as f32 * 0.05;
        }
    }
    let c2 = svd::compress(&r2, 2).unwrap();
    let (a, b) = (r2.dequantize().unwrap(), c2.dequantize().unwrap());
    let max = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        worst <= 1e-2 * max,
        "rank-2 codebooks at rank 2: {worst} of {max}"
    );
    // Refused: SVD of 2D codebooks, a rank of k or more.
    assert!(VqScheme::new(2, 2, 1024, 8)
        .unwrap()
        .with_svd_rank(8)
        .is_err());
    assert!(s.with_svd_rank(8).is_err());
}

/// Row-block scales (`--vq-scale-block`): on rows whose magnitudes differ
/// by up to 16× sharing codebooks, dividing each 64-column block by its
/// largest magnitude before EM and assignment lowers GPTVQ's output error
/// (seen: 0.70–0.77× the unscaled error with 2D g2048, the scaled EM weighting
/// each point by its squared scale); the CPU matmul
/// and the stored parts are checked with the other encodings above.
#[test]
fn row_scales_help_rows_of_different_ranges() {
    let mut rng = common::rng("row_scales_help_rows_of_different_ranges");
    let (rows, cols) = (32, 512);
    let (mut w, h) = problem(&mut rng, rows, cols);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let m = (((r * 7) % 5) as f32 - 2.0).exp2();
        row.iter_mut().for_each(|v| *v *= m);
    }
    let s = VqScheme::new(2, 2, 2048, 8).unwrap();
    let (plain, _) = gptvq_error(&w, &h, rows, cols, &GptvqOptions::new(s));
    let o = GptvqOptions::new(s.with_scale_block(64).unwrap());
    let (scaled, _) = gptvq_error(&w, &h, rows, cols, &o);
    eprintln!("unscaled {plain:.5}, row scales per 64 {scaled:.5}");
    assert!(scaled < plain, "{scaled} vs {plain}");
    // A block that does not divide the span, or the row, is refused.
    assert!(s.with_scale_block(96).is_err());
    assert!(s
        .with_scale_block(64)
        .unwrap()
        .check_shape("t", 8, 544)
        .is_err());
}
