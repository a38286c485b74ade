//! GPU (WGSL on lavapipe in CI) vs CPU for the quantize kernel family:
//! group ranges, quantize+pack, pack, unpack, dequantize, and whole RTN.
//!
//! Tolerances: ranges, packing, unpacking and dequantization are exact
//! (integer work, or one correctly rounded f32 multiply). Quantized codes
//! may differ by 1 where `w * inv_scale` lands on a rounding tie and the GPU
//! compiler fuses the multiply-add; at most 0.01% of codes may differ.

mod common;

use llmq_gpu::backend::cpu::CpuBackend;
use llmq_gpu::backend::gpu::GpuBackend;
use llmq_gpu::backend::Backend;
use llmq_gpu::encoding::affine::packing::{pack_codes, unpack_codes};
use llmq_gpu::quant::rtn;
use llmq_gpu::quant::{Granularity, QuantScheme};
use rand::Rng;
use std::sync::Arc;

/// Shapes that are not multiples of the 256-invocation workgroup; 96 and
/// 100 leave a shorter last group for some group sizes.
const SHAPES: &[(usize, usize)] = &[(1, 64), (37, 96), (130, 256), (64, 384), (9, 100)];

fn schemes(cols: usize) -> Vec<QuantScheme> {
    let mut out = vec![];
    for bits in [2, 3, 4, 8] {
        for symmetric in [false, true] {
            let mut grans = vec![Granularity::PerTensor, Granularity::PerChannel];
            for g in [32, 64, 128] {
                if g < cols {
                    grans.push(Granularity::Group(g));
                }
            }
            for granularity in grans {
                out.push(QuantScheme::new(bits, symmetric, granularity).unwrap());
            }
        }
    }
    out
}

/// Counts codes that differ and fails if any differs by more than 1 or more
/// than 0.01% differ (with at least one allowed for small tensors).
fn assert_codes_close(what: &str, gpu: &[u32], cpu: &[u32]) {
    assert_eq!(gpu.len(), cpu.len(), "{what}: code count");
    let mut differ = 0usize;
    for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
        let d = a.abs_diff(*b);
        assert!(d <= 1, "{what}: code {i} differs by {d} (gpu {a}, cpu {b})");
        differ += (d > 0) as usize;
    }
    let allowed = (cpu.len() / 10_000).max(1);
    assert!(
        differ <= allowed,
        "{what}: {differ} of {} codes differ (allowed {allowed})",
        cpu.len()
    );
}

fn check_rtn(gpu: &dyn Backend, test: &str) {
    let mut rng = common::rng(test);
    let cpu = CpuBackend;
    for &(rows, cols) in SHAPES {
        let w = common::random_weights(&mut rng, rows * cols);
        for scheme in schemes(cols) {
            let what = format!("[{rows}x{cols}] {}", scheme.label());
            let qc = rtn::quantize(&cpu, "w", &w, rows, cols, &scheme).unwrap();
            let qg = rtn::quantize(gpu, "w", &w, rows, cols, &scheme).unwrap();
            // Ranges are exact, so scales and zeros must match exactly.
            assert_eq!(qg.scales, qc.scales, "{what}: scales");
            assert_eq!(qg.zeros, qc.zeros, "{what}: zeros");
            let bits = scheme.bits;
            let codes_g = unpack_codes(&qg.packed, rows, cols, bits);
            let codes_c = unpack_codes(&qc.packed, rows, cols, bits);
            assert_codes_close(&what, &codes_g, &codes_c);
            // Dequantize on both backends from the same packed tensor: exact.
            let dg = gpu.dequantize(&qc).unwrap();
            let dc = cpu.dequantize(&qc).unwrap();
            assert_eq!(dg, dc, "{what}: dequantize");
            // RTN's own contract: unclipped weights are within half a step.
            let glen = scheme.group_len(cols);
            for (i, (&x, &y)) in w.iter().zip(&dc).enumerate() {
                let s = qc.scales[(i / cols) * cols.div_ceil(glen) + (i % cols) / glen];
                let clip = if scheme.symmetric {
                    s * 0.5 + 1e-6
                } else {
                    0.0
                };
                let lo = y - s * 0.5 - s * 1e-3;
                assert!(
                    (x - y).abs() <= s * 0.5 * 1.001 + 1e-7
                        || (x > y && x - y <= s + clip)
                        || x < lo - s,
                    "{what}: weight {i} = {x} dequantized to {y} (scale {s})"
                );
            }
        }
    }
}

#[test]
fn rtn_gpu_matches_cpu_all_schemes() {
    let gpu = GpuBackend::new(common::gpu());
    check_rtn(&gpu, "rtn_gpu_matches_cpu_all_schemes");
}

#[test]
fn rtn_gpu_matches_cpu_with_split_bindings() {
    // 2 KiB bindings (one row is at most 1.5 KiB here) force every tensor
    // above through many row chunks.
    let ctx = common::fresh_gpu();
    ctx.set_max_binding(2048);
    let gpu = GpuBackend::new(Arc::new(ctx));
    check_rtn(&gpu, "rtn_gpu_matches_cpu_with_split_bindings");
}

#[test]
fn pack_and_unpack_gpu_match_cpu_exactly() {
    let mut rng = common::rng("pack_and_unpack_gpu_match_cpu_exactly");
    let gpu = GpuBackend::new(common::gpu());
    for bits in 2..=8u32 {
        for &(rows, cols) in &[(3usize, 7usize), (37, 96), (5, 1000)] {
            let codes: Vec<u32> = (0..rows * cols)
                .map(|_| rng.gen_range(0..1u32 << bits))
                .collect();
            let packed_cpu = CpuBackend.pack(&codes, rows, cols, bits).unwrap();
            assert_eq!(
                packed_cpu,
                pack_codes(&codes, rows, cols, bits),
                "cpu pack vs reference"
            );
            let packed_gpu = gpu.pack(&codes, rows, cols, bits).unwrap();
            assert_eq!(packed_gpu, packed_cpu, "pack {bits}-bit [{rows}x{cols}]");
            let unpacked = gpu.unpack(&packed_cpu, rows, cols, bits).unwrap();
            assert_eq!(unpacked, codes, "unpack {bits}-bit [{rows}x{cols}]");
        }
    }
}

#[test]
fn group_ranges_gpu_match_cpu_exactly() {
    let mut rng = common::rng("group_ranges_gpu_match_cpu_exactly");
    let gpu = GpuBackend::new(common::gpu());
    let (rows, cols) = (300, 128);
    let w = common::random_weights(&mut rng, rows * cols);
    for g in [32, 48, 64, 128] {
        assert_eq!(
            gpu.group_ranges(&w, rows, cols, g).unwrap(),
            CpuBackend.group_ranges(&w, rows, cols, g).unwrap(),
            "group {g}"
        );
    }
}

#[test]
fn nan_weights_are_rejected_with_the_tensor_name() {
    let mut w = vec![0.5f32; 64];
    w[17] = f32::NAN;
    let scheme = QuantScheme::new(4, false, Granularity::Group(32)).unwrap();
    let err = rtn::quantize(&CpuBackend, "blk.3.ffn_up.weight", &w, 2, 32, &scheme).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("blk.3.ffn_up.weight") && msg.contains("non-finite"),
        "{msg}"
    );
    w[17] = f32::INFINITY;
    assert!(rtn::quantize(&CpuBackend, "t", &w, 2, 32, &scheme).is_err());
}

#[test]
fn strict_group_check_names_the_tensor() {
    let scheme = QuantScheme::new(4, false, Granularity::Group(128)).unwrap();
    let err = scheme
        .check_groups_divide("blk.0.attn_q.weight", 576)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("group size 128 does not divide") && err.contains("576"),
        "{err}"
    );
    assert!(err.contains("blk.0.attn_q.weight"), "{err}");
    assert!(scheme
        .check_groups_divide("blk.0.ffn_down.weight", 1536)
        .is_ok());
}

#[test]
fn shorter_last_group_gets_its_own_range() {
    // 5 weights in groups of 2: groups [0,1], [2,3], [4].
    let w = [1.0f32, -1.0, 2.0, 3.0, -7.0];
    let cpu = CpuBackend.group_ranges(&w, 1, 5, 2).unwrap();
    assert_eq!(cpu, (vec![-1.0, 2.0, -7.0], vec![1.0, 3.0, -7.0]));
    let gpu = GpuBackend::new(common::gpu());
    assert_eq!(gpu.group_ranges(&w, 1, 5, 2).unwrap(), cpu);
}
