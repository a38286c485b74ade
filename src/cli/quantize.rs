//! `llmq-gpu quantize`: progress bar per tensor, then a summary.

use super::{human_bytes, DeviceArgs};
use indicatif::{ProgressBar, ProgressStyle};
use llmq_gpu::{
    CancelToken, Error, Granularity, Method, Progress, QuantScheme, QuantizeConfig, Result,
};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input model: a GGUF file, a Hugging Face folder (config.json + *.safetensors), or an llmq folder.
    #[arg(long)]
    model: PathBuf,
    /// Output folder (written atomically: nothing appears unless the run succeeds).
    #[arg(long)]
    out: PathBuf,
    /// Quantization method.
    #[arg(long, default_value = "rtn", value_parser = ["rtn"])]
    method: String,
    /// Bits per weight: 2 to 8.
    #[arg(long, default_value_t = 4)]
    bits: u32,
    /// Weights per scale/zero pair along the input dimension. If it does not
    /// divide a row, the row's last group is shorter (see --strict-groups).
    #[arg(long, default_value_t = 128, conflicts_with_all = ["per_channel", "per_tensor"])]
    group_size: usize,
    /// One scale/zero pair per output channel instead of per group.
    #[arg(long)]
    per_channel: bool,
    /// One scale/zero pair for the whole tensor.
    #[arg(long, conflicts_with = "per_channel")]
    per_tensor: bool,
    /// Refuse a group size that leaves a shorter last group in some tensor
    /// (by default that group is quantized as is, GPTQ-style).
    #[arg(long)]
    strict_groups: bool,
    /// Symmetric quantization (zero-point fixed at 2^(bits-1)); default asymmetric.
    #[arg(long)]
    sym: bool,
    /// Quantize the output head too (kept in f16 by default).
    #[arg(long)]
    quantize_output: bool,
    /// Replace the output folder if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Lower the GPU storage-binding limit in bytes (to test splitting of large tensors).
    #[arg(long, hide = true)]
    max_binding: Option<u64>,
    /// Print the report as JSON instead of the summary table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let granularity = if a.per_tensor {
        Granularity::PerTensor
    } else if a.per_channel {
        Granularity::PerChannel
    } else {
        Granularity::Group(a.group_size)
    };
    let scheme = QuantScheme::new(a.bits, a.sym, granularity)?;
    let method = match a.method.as_str() {
        "rtn" => Method::Rtn,
        other => return Err(Error::Config(format!("unknown method '{other}'"))),
    };
    let config = QuantizeConfig::new(&a.model, &a.out, scheme)
        .method(method)
        .device(a.device.device)
        .adapter(a.device.adapter.clone())
        .quantize_output_head(a.quantize_output)
        .strict_groups(a.strict_groups)
        .overwrite(a.overwrite)
        .max_binding(a.max_binding);

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let mut on_progress = |p: Progress| match p {
        Progress::Started { tensors, backend } => {
            bar.set_length(tensors as u64);
            bar.println(format!(
                "quantizing {} with {} on {backend}",
                a.model.display(),
                scheme.label()
            ));
        }
        Progress::Tensor { name, .. } => {
            bar.inc(1);
            bar.set_message(name);
        }
        Progress::Writing => bar.set_message("writing"),
    };
    let result = llmq_gpu::quantize_model(&config, &mut on_progress, &CancelToken::default());
    bar.finish_and_clear();
    let report = result?;

    if a.json {
        let json =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        println!("{json}");
        return Ok(());
    }
    println!("wrote {}", report.out.display());
    println!("  method           {} {}", method.name(), report.scheme);
    println!("  device           {}", report.backend);
    println!(
        "  tensors          {} quantized, {} kept in f16",
        report.quantized_tensors, report.kept_tensors
    );
    if report.ragged_group_tensors > 0 {
        println!(
            "                   {} quantized tensors end each row in a shorter group",
            report.ragged_group_tensors
        );
    }
    println!("  source size      {}", human_bytes(report.source_bytes));
    println!("  as f16           {}", human_bytes(report.f16_bytes));
    println!("  output size      {}", human_bytes(report.output_bytes));
    println!(
        "  bits per weight  {:.3} (quantized tensors: codes + scales + zeros)",
        report.bits_per_weight
    );
    println!("  time             {:.1} s", report.seconds);
    println!("  mean relative reconstruction error ‖W−Ŵ‖/‖W‖ by kind:");
    for k in &report.errors_by_kind {
        println!(
            "    {:<12} {:>3} tensors  {:.4}",
            k.kind, k.tensors, k.mean_relative_error
        );
    }
    Ok(())
}
