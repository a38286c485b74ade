//! The real model: every linear layer of SmolLM2-135M quantized with RTN on
//! the Vulkan device (lavapipe in CI) and on the CPU must give the same codes.
//!
//! The reference weights are the dequantized GGUF tensors (the file stores
//! them as Q4_1). W4 g128 asymmetric does not align with the file's 32-weight
//! Q4_1 blocks, so it is a real quantization of those weights, not a copy.
//! Bound: scales and zeros identical; codes differ by at most 1, in at most
//! 0.01% of all codes (rounding ties where the GPU fuses multiply-add).

mod common;

use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::encoding::affine::packing::unpack_codes;
use llmq_gpu::model::TensorKind;
use llmq_gpu::quant::rtn;
use llmq_gpu::{Granularity, ModelView, QuantScheme};

#[test]
fn smollm2_rtn_w4g128_codes_match_between_vulkan_and_cpu() {
    let model = ModelView::open(common::smollm2_gguf()).expect("SmolLM2 opens");
    let gpu = GpuBackend::new(common::gpu());
    let scheme = QuantScheme::new(4, false, Granularity::Group(128)).unwrap();
    let (mut total, mut differ, mut tensors) = (0usize, 0usize, 0usize);
    let (mut err_num, mut err_den) = (0f64, 0f64);
    for t in model.tensors() {
        if !TensorKind::of(&t.name).is_block_linear() {
            continue;
        }
        let (rows, cols) = (t.shape[0], t.shape[1]);
        let w = model.load_f32(&t.name).unwrap();
        let qc = rtn::quantize(&CpuBackend, &t.name, &w, rows, cols, &scheme).unwrap();
        let qg = rtn::quantize(&gpu, &t.name, &w, rows, cols, &scheme).unwrap();
        assert_eq!(qg.scales, qc.scales, "{}: scales", t.name);
        assert_eq!(qg.zeros, qc.zeros, "{}: zeros", t.name);
        let cg = unpack_codes(&qg.packed, rows, cols, 4);
        let cc = unpack_codes(&qc.packed, rows, cols, 4);
        for (a, b) in cg.iter().zip(&cc) {
            assert!(a.abs_diff(*b) <= 1, "{}: codes {a} vs {b}", t.name);
            differ += (a != b) as usize;
        }
        total += cc.len();
        tensors += 1;
        let deq = CpuBackend.dequantize(&qc).unwrap();
        for (x, y) in w.iter().zip(&deq) {
            err_num += ((x - y) as f64).powi(2);
            err_den += (*x as f64).powi(2);
        }
    }
    let rel = (err_num / err_den).sqrt();
    eprintln!("{tensors} tensors, {total} codes, {differ} differ; relative error {rel:.4}");
    assert_eq!(tensors, 30 * 7, "every linear layer of the 30 blocks");
    assert!(
        differ * 10_000 <= total,
        "{differ} of {total} codes differ (> 0.01%)"
    );
    // 4-bit RTN of roughly Gaussian weights leaves ~10% relative error; far
    // more would mean a broken scale or layout.
    assert!(
        rel > 0.01 && rel < 0.2,
        "relative reconstruction error {rel}"
    );
}
