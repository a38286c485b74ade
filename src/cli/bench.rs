//! `llmq-gpu bench`: dequant-matmul throughput against the copy bandwidth
//! measured on the same device in the same run.

use llmq_gpu::backend::gpu::{DeviceChoice, GpuContext};
use llmq_gpu::bench::{run_matmul_bench, MatmulBenchOptions};
use llmq_gpu::{Error, Result};
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Small shapes (seconds on software Vulkan) instead of Llama-7B-sized ones.
    #[arg(long)]
    quick: bool,
    /// Devices to measure: the CPU backend and/or a GPU. `auto` (default)
    /// measures the CPU plus the Vulkan/Metal/DX12 adapter if there is one.
    #[arg(long, default_value = "auto", value_parser = super::parse_device)]
    device: DeviceChoice,
    /// Pick the adapter whose name contains this text (case-insensitive).
    #[arg(long)]
    adapter: Option<String>,
    /// Timed repetitions per kernel.
    #[arg(long)]
    iters: Option<usize>,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let mut opts = if a.quick {
        MatmulBenchOptions::quick()
    } else {
        MatmulBenchOptions::default()
    };
    if let Some(n) = a.iters {
        opts.iters = n.max(1);
    }
    match a.device {
        DeviceChoice::Cpu => opts.gpu = None,
        DeviceChoice::Auto => {
            // Any adapter wgpu offers, software ones included: a benchmark
            // should show what each device does, not only the fast one.
            let gpu = GpuContext::new(DeviceChoice::Vulkan, a.adapter.as_deref())
                .or_else(|_| GpuContext::new(DeviceChoice::Auto, a.adapter.as_deref()));
            match gpu {
                Ok(ctx) => opts.gpu = Some(Arc::new(ctx)),
                Err(e) => log::warn!("no GPU adapter, CPU only: {e}"),
            }
        }
        choice => {
            opts.cpu = true;
            opts.gpu = Some(Arc::new(GpuContext::new(choice, a.adapter.as_deref())?));
        }
    }
    let report = run_matmul_bench(&opts)?;
    if a.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        println!("{json}");
    } else {
        println!("{report}");
    }
    Ok(())
}
