//! Shared test helpers: the GPU context every cross-check uses, and fresh
//! random inputs with their seed printed so a failure can be replayed.
#![allow(dead_code)]

use llmq_gpu::backend::gpu::{DeviceChoice, GpuContext};
use rand::{Rng, SeedableRng};
use std::sync::{Arc, OnceLock};

/// The Vulkan device (lavapipe in CI). A machine without one fails the test
/// with instructions; GPU tests never pass silently.
pub fn gpu() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let name = std::env::var("LLMQ_TEST_ADAPTER").ok();
        match GpuContext::new(DeviceChoice::Vulkan, name.as_deref()) {
            Ok(ctx) => Arc::new(ctx),
            Err(e) => panic!(
                "GPU-vs-CPU tests need a Vulkan adapter (lavapipe is enough: \
                 `apt-get install mesa-vulkan-drivers`): {e}"
            ),
        }
    })
    .clone()
}

/// A fresh GPU context, for tests that change its settings (binding limit).
pub fn fresh_gpu() -> GpuContext {
    let name = std::env::var("LLMQ_TEST_ADAPTER").ok();
    GpuContext::new(DeviceChoice::Vulkan, name.as_deref())
        .unwrap_or_else(|e| panic!("GPU-vs-CPU tests need a Vulkan adapter: {e}"))
}

/// A seeded RNG; the seed comes from `LLMQ_TEST_SEED` or is fresh, and is printed.
pub fn rng(test: &str) -> rand::rngs::StdRng {
    let seed = std::env::var("LLMQ_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen::<u64>());
    eprintln!("{test}: seed {seed} (replay with LLMQ_TEST_SEED={seed})");
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Weights with a realistic spread: mostly small normal-ish values plus a
/// few outliers, so rounding and clipping are both exercised.
pub fn random_weights(rng: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = (0..4).map(|_| rng.gen::<f32>() - 0.5).sum::<f32>() * 0.05;
            if rng.gen::<f32>() < 0.002 {
                u * 20.0
            } else {
                u
            }
        })
        .collect()
}
