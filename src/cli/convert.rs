//! `llmq-gpu convert`: a GGUF file as a Hugging Face safetensors folder.

use super::human_bytes;
use indicatif::{ProgressBar, ProgressStyle};
use llmq_gpu::formats::gguf::{has_gguf_magic, GgufModel};
use llmq_gpu::formats::hf_export::{gguf_to_hf, HfDtype};
use llmq_gpu::{Error, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The GGUF file to convert (quantized tensors are dequantized).
    #[arg(long)]
    pub model: PathBuf,
    /// The Hugging Face folder to write: config.json, model.safetensors,
    /// tokenizer.json, tokenizer_config.json, generation_config.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Stored type of the weights: f16 (transformers' usual), bf16, or f32
    /// (exact for every GGUF block type: a dequantized block is exact in
    /// f32, not always in f16).
    #[arg(long, default_value = "f16")]
    pub dtype: String,
    /// Replace an existing --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    if !a.model.is_file() || !has_gguf_magic(&a.model)? {
        return Err(Error::Config(format!(
            "convert reads a GGUF file; {} is not one (a Hugging Face folder is already what \
             convert writes; `quantize --format gguf` writes GGUF)",
            a.model.display()
        )));
    }
    let dtype = HfDtype::parse(&a.dtype)?;
    let src = GgufModel::open(&a.model)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let report = gguf_to_hf(
        &src,
        &a.out,
        dtype,
        a.overwrite,
        &mut |done, total, name| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        },
    )?;
    bar.finish_and_clear();
    for s in &report.skipped {
        eprintln!("note: left out {s}");
    }
    if a.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Config(e.to_string()))?;
        println!("{text}");
    } else {
        println!(
            "wrote {} ({} tensors, {})",
            report.out.display(),
            report.tensors,
            human_bytes(report.bytes)
        );
    }
    Ok(())
}
