//! GPU memory accounting: the peak a GPU matmul reports through the
//! `Backend` covers its weights, input and output, and every buffer it
//! created is freed when it returns.

mod common;

use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::encoding::affine::packing::pack_codes;
use llmq_gpu::encoding::affine::scheme::{Granularity, QuantScheme};
use llmq_gpu::encoding::QuantizedTensor;
use std::sync::Arc;

#[test]
fn matmul_peak_covers_its_buffers_and_frees_them() {
    // A fresh context, so no other test's buffers are live or in the peak.
    let ctx = Arc::new(common::fresh_gpu());
    let backend = GpuBackend::new(ctx.clone());
    let (rows, cols, tokens) = (96, 256, 3);
    let scheme = QuantScheme::new(4, false, Granularity::Group(64)).unwrap();
    let codes: Vec<u32> = (0..rows * cols).map(|i| (i % 16) as u32).collect();
    let groups = rows * scheme.groups_per_row(cols);
    let q = QuantizedTensor {
        rows,
        cols,
        scheme,
        packed: pack_codes(&codes, rows, cols, scheme.bits),
        scales: vec![0.01; groups],
        zeros: vec![8; groups],
    };
    let x: Vec<f32> = (0..tokens * cols).map(|i| (i % 7) as f32 - 3.0).collect();

    let weights = (q.packed.len() * 4 + q.scales.len() * 4 + q.zeros.len()) as u64;
    let (x_bytes, y_bytes) = ((x.len() * 4) as u64, (tokens * rows * 4) as u64);
    let need = weights + x_bytes + y_bytes;

    let live_before = ctx.gpu_bytes_live();
    backend.reset_memory_peak();
    assert_eq!(
        backend.memory_peak(),
        Some(live_before),
        "after a reset the peak is the bytes live now"
    );
    let y = backend.matmul(&q, &x, tokens).unwrap();
    assert_eq!(y.len(), tokens * rows);

    let peak = backend
        .memory_peak()
        .expect("the GPU backend reports a peak");
    let used = peak - live_before;
    eprintln!("matmul [{rows}x{cols}] x {tokens} tokens: peak {used} bytes, buffers {need}");
    assert!(
        used >= need,
        "peak GPU memory {used} bytes is below the {need} bytes of packed weights, \
         scales, zeros, input and output the matmul must hold at once"
    );
    // Generous: the readback staging copy of y, uniforms and padding come on
    // top; twice the buffers would mean something is counted twice.
    assert!(
        used <= 2 * need,
        "peak GPU memory {used} bytes is more than twice the {need} bytes the matmul needs"
    );
    assert_eq!(
        ctx.gpu_bytes_live(),
        live_before,
        "GPU buffers still counted live after the matmul returned (leak or missed drop)"
    );
    assert_eq!(ctx.gpu_bytes_peak(), peak);

    backend.reset_memory_peak();
    assert_eq!(ctx.gpu_bytes_peak(), live_before);
    assert_eq!(
        CpuBackend.memory_peak(),
        None,
        "the CPU has no device memory"
    );
}
