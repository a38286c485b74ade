//! Dequant-matmul benchmark: CPU plus the Vulkan adapter when there is one.
//! `LLMQ_BENCH_QUICK=1` runs the small shapes (seconds on lavapipe).

use llmq_gpu::backend::gpu::{DeviceChoice, GpuContext};
use llmq_gpu::bench::{run_matmul_bench, MatmulBenchOptions};
use std::sync::Arc;

fn main() {
    let quick = std::env::var("LLMQ_BENCH_QUICK").is_ok_and(|v| v != "0");
    let mut opts = if quick {
        MatmulBenchOptions::quick()
    } else {
        MatmulBenchOptions::default()
    };
    match GpuContext::new(DeviceChoice::Vulkan, None) {
        Ok(ctx) => opts.gpu = Some(Arc::new(ctx)),
        Err(e) => eprintln!("no Vulkan adapter, CPU only: {e}"),
    }
    match run_matmul_bench(&opts) {
        Ok(report) => {
            println!("{report}");
            if let Ok(json) = serde_json::to_string(&report) {
                println!("{json}");
            }
        }
        Err(e) => {
            eprintln!("matmul bench failed: {e}");
            std::process::exit(1);
        }
    }
}
