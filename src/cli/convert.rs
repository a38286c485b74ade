//! `llmq-gpu convert`: GGUF ⇄ Hugging Face safetensors folder, llmq
//! folder → GGUF, GGUF → llmq folder.

use super::human_bytes;
use indicatif::{ProgressBar, ProgressStyle};
use llmq_gpu::formats::gguf::from_source::to_gguf;
use llmq_gpu::formats::gguf::{has_gguf_magic, GgufModel};
use llmq_gpu::formats::hf_export::{gguf_to_hf, FloatType};
use llmq_gpu::formats::llmq::from_gguf::gguf_to_llmq;
use llmq_gpu::model::view::ModelView;
use llmq_gpu::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model to convert: a GGUF file, a Hugging Face folder or an llmq
    /// folder.
    #[arg(long)]
    pub model: PathBuf,
    /// What to write (atomically): a file for gguf, a folder for hf and llmq.
    #[arg(long)]
    pub out: PathBuf,
    /// Output format: hf (a transformers folder: config.json,
    /// model.safetensors, tokenizer.json, tokenizer_config.json,
    /// generation_config.json; quantized GGUF tensors are dequantized),
    /// gguf (llama.cpp's file: names, q/k layout and tokenizer as its
    /// converter writes them; an llmq folder's codes are kept in their
    /// block type: ggml blocks byte for byte, 4/5/8-bit groups of 32 as
    /// Q4_0/Q4_1/Q5_0/Q5_1/Q8_0) or llmq (a GGUF's blocks kept in an llmq
    /// folder). Default: hf for a GGUF model, gguf otherwise.
    #[arg(long, value_parser = ["hf", "gguf", "llmq"])]
    pub to: Option<String>,
    /// Stored type of the float tensors: auto keeps each one's type
    /// (F32/F16/BF16 round trip bit for bit; dequantized GGUF tensors
    /// become f16), or f32, f16, bf16 for all (f32 holds every dequantized
    /// GGUF block exactly). GGUF output stores 1-D tensors as F32, as
    /// llama.cpp does.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Replace an existing --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn is_gguf(p: &Path) -> Result<bool> {
    Ok(p.is_file() && has_gguf_magic(p)?)
}

pub fn run(a: Args) -> Result<()> {
    // Conversion cannot stop midway: a signal deletes its partial output.
    super::interrupt::exit_on_signals();
    let dtype = FloatType::parse(&a.dtype)?;
    let gguf_in = is_gguf(&a.model)?;
    let to = match (&a.to, gguf_in) {
        (Some(t), _) => t.as_str(),
        (None, true) => "hf",
        (None, false) => "gguf",
    };
    if !gguf_in && (to != "gguf" || !a.model.is_dir()) {
        return Err(Error::Config(format!(
            "{} is not one of the models convert --to {to} reads: a GGUF file (--to hf or \
             llmq) or a Hugging Face or llmq folder (--to gguf)",
            a.model.display()
        )));
    }
    if gguf_in && to == "gguf" {
        return Err(Error::Config(format!(
            "{} is already GGUF; `llmq-gpu quantize --format gguf --gguf-type F16` rewrites its \
             types",
            a.model.display()
        )));
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let mut progress = |done: usize, total: usize, name: &str| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    };
    let summary = match to {
        "hf" => {
            let src = GgufModel::open(&a.model)?;
            let r = gguf_to_hf(&src, &a.out, dtype, a.overwrite, &mut progress)?;
            for s in &r.skipped {
                eprintln!("note: left out {s}");
            }
            report(&r, a.json, r.tensors, r.bytes)?
        }
        "llmq" => {
            let src = GgufModel::open(&a.model)?;
            let r = gguf_to_llmq(&src, &a.out, a.overwrite, &mut progress)?;
            report(&r, a.json, r.tensors, r.bytes)?
        }
        _ => {
            let view = ModelView::open(&a.model)?;
            let r = to_gguf(view.source(), &a.out, dtype, a.overwrite, &mut progress)?;
            report(&r, a.json, r.tensors, r.file_bytes)?
        }
    };
    bar.finish_and_clear();
    match summary {
        Ok(json) => println!("{json}"),
        Err(figures) => println!("wrote {} ({figures})", a.out.display()),
    }
    Ok(())
}

/// `r` as JSON (`Ok`), or the summary line's figures (`Err`).
fn report<R: Serialize>(
    r: &R,
    json: bool,
    tensors: usize,
    bytes: u64,
) -> Result<std::result::Result<String, String>> {
    if json {
        let text = serde_json::to_string_pretty(r).map_err(|e| Error::Config(e.to_string()))?;
        return Ok(Ok(text));
    }
    Ok(Err(format!("{tensors} tensors, {}", human_bytes(bytes))))
}
