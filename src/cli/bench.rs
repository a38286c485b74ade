//! `llmq-gpu bench`: dequant-matmul throughput against the copy bandwidth
//! measured on the same device in the same run; with `--model`, whole-model
//! prefill and decode speed against the matmul rate and copy bandwidth.

use llmq_gpu::backend::gpu::{DeviceChoice, GpuContext};
use llmq_gpu::bench::forward::{run_forward_bench, PeakRates};
use llmq_gpu::bench::{run_matmul_bench, MatmulBenchOptions};
use llmq_gpu::model::forward::open_forward;
use llmq_gpu::{Error, Result};
use std::path::{Path, PathBuf};
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
    /// Benchmark this model's forward pass (prefill and decode) instead of the kernels.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Prompt length of the prefill measurement (with --model).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens decoded one at a time (with --model).
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
}

fn run_forward(a: &Args, model: &Path) -> Result<()> {
    let m = open_forward(model, a.device, a.adapter.as_deref())?;
    let iters = a.iters.unwrap_or(3).max(1);
    let peak = if m.device().starts_with("cpu") {
        PeakRates::cpu(iters)?
    } else {
        let ctx = GpuContext::new(a.device, a.adapter.as_deref())?;
        PeakRates::gpu(&ctx, iters)?
    };
    let report = run_forward_bench(m.as_ref(), peak, a.prompt_tokens, a.decode_tokens, iters)?;
    if a.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        println!("{json}");
    } else {
        println!("{}\n{report}", model.display());
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    if let Some(model) = &a.model {
        return run_forward(&a, model);
    }
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
