//! `llmq-gpu bench`: dequant-matmul throughput against the copy bandwidth
//! measured on the same device in the same run; with `--model`, whole-model
//! prefill and decode speed against the matmul rate and copy bandwidth, and
//! with `--peer` against llama.cpp's llama-bench on the same work.

use llmq_gpu::backend::gpu::{DeviceChoice, GpuContext};
use llmq_gpu::backend::{Backend, CpuBackend, GpuBackend};
use llmq_gpu::bench::forward::{run_forward_bench, PeakRates};
use llmq_gpu::bench::gptq::{bench_model, bench_synthetic, SyntheticLayer};
use llmq_gpu::bench::peer::{default_llama_bench, run_llama_bench, PeerComparison};
use llmq_gpu::bench::{run_matmul_bench, MatmulBenchOptions};
use llmq_gpu::model::forward::open_forward;
use llmq_gpu::pipeline::calib::CalibConfig;
use llmq_gpu::pipeline::gptq::GptqSettings;
use llmq_gpu::quant::gptq::GptqOptions;
use llmq_gpu::{Error, Granularity, ModelView, QuantScheme, QuantizeConfig, Result};
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
    /// With --model on the CPU: also time llama.cpp's llama-bench on the
    /// same work (same prompt and decode lengths, same thread count) and
    /// print our tokens/s as a ratio to its.
    #[arg(long)]
    peer: bool,
    /// The llama-bench binary for --peer (default: the one
    /// scripts/build-llama-cpp.sh builds, .cache/llama.cpp/bin/llama-bench).
    #[arg(long, requires = "peer")]
    llama_bench: Option<PathBuf>,
    /// The GGUF llama-bench runs for --peer (default: --model when it is a
    /// GGUF file; for an llmq folder name llama.cpp's nearest type, e.g.
    /// its Q8_0 beside W8A8, Q4_0 beside RTN W4).
    #[arg(long, requires = "peer")]
    peer_model: Option<PathBuf>,
    /// Benchmark GPTQ by phase: the whole --model with --calib, or
    /// --synthetic-layers of a given shape.
    #[arg(long)]
    gptq: bool,
    /// With --gptq --model: GPTVQ instead of GPTQ (the --vq-* options; the
    /// GPTQ baseline of its report is skipped, so the phases are GPTVQ's).
    #[arg(long)]
    gptvq: bool,
    #[command(flatten)]
    vq: super::gptvq::VqArgs,
    /// GPTQ: calibration text for --model.
    #[arg(long)]
    calib: Option<PathBuf>,
    /// GPTQ: calibration windows (with --model).
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// GPTQ: tokens per calibration window (with --model or --synthetic-layers).
    #[arg(long, default_value_t = 512)]
    calib_len: usize,
    /// GPTQ: bits per weight.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// GPTQ: group size; 0 means per channel.
    #[arg(long, default_value_t = 128)]
    group_size: usize,
    /// GPTQ: run this many synthetic layers instead of a model.
    #[arg(long)]
    synthetic_layers: Option<usize>,
    /// Synthetic layers: hidden size (default Llama-7B's).
    #[arg(long, default_value_t = 4096)]
    hidden: usize,
    /// Synthetic layers: MLP size.
    #[arg(long, default_value_t = 11008)]
    ffn: usize,
    /// Synthetic layers: calibration tokens (default 128 x 512).
    #[arg(long, default_value_t = 65536)]
    calib_tokens: usize,
    /// Layers of the model the synthetic timing is extrapolated to.
    #[arg(long, default_value_t = 32)]
    extrapolate_layers: usize,
}

/// The backend `device` names and its matmul rate measured now.
fn backend_and_peak(a: &Args, iters: usize) -> Result<(Box<dyn Backend>, PeakRates)> {
    if a.device != DeviceChoice::Cpu {
        match GpuContext::new(a.device, a.adapter.as_deref()) {
            Ok(ctx) => {
                let ctx = Arc::new(ctx);
                let peak = PeakRates::gpu(&ctx, iters)?;
                return Ok((Box::new(GpuBackend::new(ctx)), peak));
            }
            Err(e) if a.device == DeviceChoice::Auto => {
                log::warn!("no GPU adapter ({e}); benchmarking the CPU backend")
            }
            Err(e) => return Err(e),
        }
    }
    Ok((Box::new(CpuBackend), PeakRates::cpu(iters)?))
}

fn run_gptq(a: &Args) -> Result<()> {
    let iters = a.iters.unwrap_or(3).max(1);
    let gran = if a.group_size == 0 {
        Granularity::PerChannel
    } else {
        Granularity::Group(a.group_size)
    };
    let scheme = QuantScheme::new(a.bits, false, gran)?;
    let (backend, peak) = backend_and_peak(a, iters)?;
    let report = match (&a.model, a.synthetic_layers) {
        (Some(model), None) => {
            let calib = a
                .calib
                .clone()
                .ok_or_else(|| Error::Config("bench --gptq --model needs --calib FILE".into()))?;
            let settings = GptqSettings::new(CalibConfig {
                samples: a.calib_samples,
                len: a.calib_len,
                ..CalibConfig::new(calib)
            });
            let config = QuantizeConfig::new(model, "unused", scheme);
            let config = match a.gptvq {
                true => {
                    let settings = GptqSettings {
                        gptq_baseline: false,
                        ..settings
                    };
                    config.gptvq(settings, a.vq.options(a.bits, 0)?)
                }
                false => config.gptq(settings),
            };
            bench_model(backend.as_ref(), peak, &config)?
        }
        (None, Some(layers)) => {
            let shape = SyntheticLayer {
                hidden: a.hidden,
                kv: a.hidden,
                ffn: a.ffn,
                tokens: a.calib_tokens,
                // Whole windows of --calib-len, about 2048 tokens.
                chunk: (2048 / a.calib_len.max(1)).max(1) * a.calib_len,
                seq: a.calib_len,
                head_dim: if a.hidden.is_multiple_of(128) {
                    128
                } else {
                    64
                },
            };
            bench_synthetic(
                backend.as_ref(),
                peak,
                shape,
                layers,
                &scheme,
                &GptqOptions::default(),
                a.extrapolate_layers,
            )?
        }
        _ => {
            return Err(Error::Config(
                "bench --gptq needs either --model M --calib FILE or --synthetic-layers N".into(),
            ))
        }
    };
    super::print_report(&report, a.json)
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
    if a.peer && !m.device().starts_with("cpu") {
        return Err(Error::Config(format!(
            "--peer runs llama.cpp's CPU build, so it compares only with --device cpu (this run \
             is on {})",
            m.device()
        )));
    }
    let mut report = run_forward_bench(m.as_ref(), peak, a.prompt_tokens, a.decode_tokens, iters)?;
    report.linears = llmq_gpu::eval::size::linear_storage(&ModelView::open(model)?).ok();
    if a.peer {
        let tool = a.llama_bench.clone().unwrap_or_else(default_llama_bench);
        let gguf = a.peer_model.as_deref().unwrap_or(model);
        let threads = rayon::current_num_threads();
        let run = run_llama_bench(
            &tool,
            gguf,
            a.prompt_tokens,
            a.decode_tokens,
            threads,
            iters,
        )?;
        report.peer = Some(PeerComparison::new(
            run,
            report.prefill_tokens_per_second,
            report.decode_tokens_per_second,
        ));
    }
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
    if a.gptq {
        return run_gptq(&a);
    }
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
    super::print_report(&report, a.json)
}
