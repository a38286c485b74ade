//! Command-line parsing and one module per subcommand.

mod act_args;
mod bench;
mod convert;
mod devices;
mod eval;
mod generate;
mod gguf_out;
mod gptvq;
mod inspect;
mod interrupt;
mod quantize;

pub use interrupt::EXIT_INTERRUPTED;

use clap::{Parser, Subcommand};
use llmq_gpu::{DeviceChoice, Result};

#[derive(Parser, Debug)]
#[command(
    name = "llmq-gpu",
    version,
    about = "Quantize large language models on any GPU (Vulkan, Metal, DX12 via wgpu) or the CPU",
    long_about = None
)]
pub struct Cli {
    /// Log what the run does (device chosen, per-tensor details). RUST_LOG overrides.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Quantize a model (GGUF file or Hugging Face safetensors folder) into an llmq folder.
    Quantize(Box<quantize::Args>),
    /// Perplexity, KL divergence and top-1 agreement vs a reference, size and speed of models on a text.
    Eval(eval::Args),
    /// Print architecture, tensors and metadata of a GGUF, safetensors or llmq model.
    Inspect(inspect::Args),
    /// List every GPU adapter with its limits and features.
    Devices(devices::Args),
    /// Continue a prompt with a model (reference or quantized), streaming the text.
    Generate(generate::Args),
    /// Measure INT4/INT8 GEMV and GEMM throughput per device against its copy bandwidth.
    Bench(bench::Args),
    /// Write a GGUF file as a Hugging Face safetensors folder (f16, bf16 or f32).
    Convert(convert::Args),
}

/// `--device` and `--adapter`, shared by every command that runs kernels.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where kernels run: auto (a real GPU if any, else the CPU backend), vulkan, metal, dx12, gl or cpu.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    pub device: DeviceChoice,
    /// Pick the adapter whose name contains this text (case-insensitive); see `llmq-gpu devices`.
    #[arg(long)]
    pub adapter: Option<String>,
}

pub fn parse_device(s: &str) -> std::result::Result<DeviceChoice, String> {
    DeviceChoice::parse(s).map_err(|e| e.to_string())
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Quantize(a) => quantize::run(*a),
        Command::Eval(a) => eval::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Devices(a) => devices::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Convert(a) => convert::run(a),
    }
}

pub use llmq_gpu::eval::table::human_bytes;

/// Writes `text` to stdout; a closed pipe (`llmq-gpu inspect m | head`)
/// ends the output quietly instead of panicking as `println!` would.
pub fn print_out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Prints `report` as pretty JSON (`--json`) or through its `Display`.
pub fn print_report<T: serde::Serialize + std::fmt::Display>(report: &T, json: bool) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| llmq_gpu::Error::Config(e.to_string()))?;
        println!("{text}");
    } else {
        println!("{report}");
    }
    Ok(())
}
