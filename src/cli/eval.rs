//! `llmq-gpu eval`: perplexity (llama.cpp protocol), KL divergence and top-1
//! agreement against a reference, size and speed of one or more models;
//! progress bar per window, then a summary, JSON, a markdown table or an SVG chart.

use super::{human_bytes, print_out, DeviceArgs};
use indicatif::{ProgressBar, ProgressStyle};
use llmq_gpu::eval::{self, EvalConfig, EvalProgress, EvalReport};
use llmq_gpu::{Error, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model to evaluate (GGUF file, Hugging Face folder or llmq folder); repeat to compare several.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// UTF-8 text to score (e.g. a novel): tokenized once, cut into windows of --ctx tokens.
    /// Repeat to evaluate on several texts (each reported, then their mean).
    #[arg(long, required = true)]
    text: Vec<PathBuf>,
    /// Tokens per window; the second half of each window is scored.
    #[arg(long, default_value_t = eval::run::DEFAULT_CTX)]
    ctx: usize,
    /// Most windows to evaluate (default: every whole window of the text).
    #[arg(long)]
    chunks: Option<usize>,
    /// Reference model (e.g. the unquantized one) for KL divergence and top-1 agreement.
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Print the report as JSON: one object, or an array for several models.
    #[arg(long)]
    json: bool,
    /// Write a markdown table of the results to this file.
    #[arg(long)]
    table: Option<PathBuf>,
    /// Write an SVG chart of perplexity against bits per weight to this file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Score GGUF files as llama.cpp's CPU backend runs them: each linear's
    /// input rounded to the activation type llama.cpp multiplies that
    /// tensor type with (q8_0 blocks for Q4_0..Q8_0 and IQ4_NL, q8_K for
    /// the k-quants, f16 for F16; none for F32). Needs --device cpu.
    #[arg(long)]
    llama_cpp_activations: bool,
    /// Run the models (not the reference) with INT8 activations: each
    /// block linear's input quantized per token to 8 bits and multiplied
    /// in integers with its 8-bit symmetric weights (quantize with --bits
    /// 8 --sym). Runs on either backend; models written with
    /// `quantize --act-bits 8` run W8A8 without it.
    #[arg(long, conflicts_with = "llama_cpp_activations")]
    int8_activations: bool,
    /// With --int8-activations: one static scale per linear input instead
    /// of per-token ones, its range chosen on --act-calib-text by this
    /// calibrator: minmax, percentile (--percentile), mse or kl.
    #[arg(long, requires = "int8_activations", requires = "act_calib_text")]
    act_calib: Option<String>,
    /// The calibration text of --act-calib (another text than --text).
    #[arg(long)]
    act_calib_text: Option<PathBuf>,
    /// Windows of --act-calib-text (at --ctx) the ranges are calibrated on.
    #[arg(long, default_value_t = 8)]
    act_calib_windows: usize,
    /// The percentile of --act-calib percentile, in (0, 100].
    #[arg(long)]
    percentile: Option<f64>,
    #[command(flatten)]
    device: DeviceArgs,
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

pub fn run(a: Args) -> Result<()> {
    let config = EvalConfig::new(a.model.clone(), &a.text[0])
        .reference(a.reference.clone())
        .ctx(a.ctx)
        .chunks(a.chunks)
        .device(a.device.device)
        .adapter(a.device.adapter.clone())
        .llama_cpp_activations(a.llama_cpp_activations)
        .int8_activations(a.int8_activations)
        .act_calib(match (&a.act_calib, &a.act_calib_text) {
            (Some(c), Some(t)) => Some(llmq_gpu::eval::ActCalib {
                calibrator: llmq_gpu::quant::range::RangeCalibrator::parse(c, a.percentile)?,
                text: t.clone(),
                windows: a.act_calib_windows,
            }),
            _ => None,
        });

    let bar = progress_bar();
    if a.text.len() > 1 {
        return run_texts(&a, &config, &bar);
    }
    let mut on_progress = |p: EvalProgress| show_progress(&bar, &a.text[0], p);
    let result = eval::evaluate(
        &config,
        &mut on_progress,
        &super::interrupt::cancel_on_signals(),
    );
    bar.finish_and_clear();
    let reports = result?;

    if let Some(path) = &a.table {
        write_file(path, &eval::markdown_table(&reports))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.chart {
        write_file(path, &eval::ppl_vs_bits_svg(&reports))?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        let json = match reports.as_slice() {
            [one] => serde_json::to_string_pretty(one),
            many => serde_json::to_string_pretty(many),
        }
        .map_err(|e| Error::Config(format!("cannot serialize the report: {e}")))?;
        print_out(&format!("{json}\n"));
        return Ok(());
    }
    for r in &reports {
        print_out(&summary(r));
    }
    if reports.len() > 1 {
        print_out(&format!("\n{}", eval::markdown_table(&reports)));
    }
    Ok(())
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} chunks {msg}",
        )
        .expect("static template"),
    );
    bar
}

fn show_progress(bar: &ProgressBar, text: &Path, p: EvalProgress) {
    match p {
        EvalProgress::Loading { model } => bar.set_message(format!("loading {}", model.display())),
        EvalProgress::Started {
            chunks,
            ctx,
            text_tokens,
            device,
        } => {
            bar.set_position(0);
            bar.set_length(chunks as u64);
            bar.set_message("");
            bar.println(format!(
                "evaluating on {device}: {chunks} windows of {ctx} tokens from {} ({text_tokens} tokens)",
                text.display()
            ));
        }
        EvalProgress::Chunk { ppl, .. } => {
            bar.inc(1);
            let shown: Vec<String> = ppl.iter().map(|p| format!("{p:.3}")).collect();
            bar.set_message(format!("PPL {}", shown.join(" / ")));
        }
    }
}

/// Several texts: a table per text, then the models' means.
fn run_texts(a: &Args, config: &EvalConfig, bar: &ProgressBar) -> Result<()> {
    let mut on_progress = |i: usize, p: EvalProgress| show_progress(bar, &a.text[i], p);
    let result = eval::evaluate_texts(
        config,
        &a.text,
        &mut on_progress,
        &super::interrupt::cancel_on_signals(),
    );
    bar.finish_and_clear();
    let report = result?;
    if let Some(path) = &a.table {
        write_file(path, &eval::markdown_texts_table(&report))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &a.chart {
        write_file(path, &eval::ppl_vs_bits_svg(&eval::mean_reports(&report)))?;
        eprintln!("wrote {}", path.display());
    }
    if a.json {
        let json = serde_json::to_string_pretty(&report)
            .map_err(|e| Error::Config(format!("cannot serialize the report: {e}")))?;
        print_out(&format!("{json}\n"));
        return Ok(());
    }
    for reports in &report.texts {
        print_out(&format!("{}\n", eval::markdown_table(reports)));
    }
    print_out(&eval::markdown_texts_table(&report));
    Ok(())
}

fn summary(r: &EvalReport) -> String {
    let mut s = format!(
        "{}\n  text             {} ({} tokens; {} windows of {}, {} tokens scored{})\n",
        r.model.display(),
        r.text.display(),
        r.text_tokens,
        r.chunks,
        r.ctx,
        r.tokens_scored,
        if r.bos {
            ", BOS at each window start"
        } else {
            ""
        }
    );
    s += &format!("  device           {}\n", r.device);
    s += &format!("  perplexity       {:.4} ± {:.4}\n", r.ppl, r.ppl_stderr);
    if let (Some(k), Some(ke), Some(t), Some(reference)) =
        (r.kld, r.kld_stderr, r.top1_agreement, &r.reference)
    {
        s += &format!(
            "  KL divergence    {k:.6} ± {ke:.6} nats (vs {})\n",
            reference.display()
        );
        s += &format!("  top-1 agreement  {:.2}%\n", t * 100.0);
    }
    s += &format!("  size on disk     {}\n", human_bytes(r.size_bytes));
    s += &format!(
        "  bits per weight  {:.3} (decoder linear layers)\n",
        r.bits_per_weight
    );
    s += &format!("  {}\n", r.linears);
    s += &format!(
        "  speed            {:.1} tokens/s ({} tokens in {:.1} s of forward passes)\n",
        r.tokens_per_second, r.tokens_evaluated, r.forward_seconds
    );
    s += &format!("  time             {:.1} s\n", r.seconds);
    s
}
