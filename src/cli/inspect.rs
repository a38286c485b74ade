//! `llmq-gpu inspect`: what a model file holds.

use super::print_out;
use llmq_gpu::{Error, ModelView, Result};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF file, a Hugging Face safetensors folder or file, or an llmq output folder.
    path: PathBuf,
    /// Print every metadata value in full (long arrays such as vocabularies are shortened otherwise).
    #[arg(long)]
    full: bool,
}

/// Shortens long arrays and strings so the listing stays readable.
fn short_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(a) if a.len() > 8 => {
            let head: Vec<String> = a.iter().take(4).map(short_value).collect();
            format!("[{}, ... {} items]", head.join(", "), a.len())
        }
        serde_json::Value::String(s) if s.chars().count() > 80 => {
            format!(
                "{:?}... ({} chars)",
                s.chars().take(60).collect::<String>(),
                s.chars().count()
            )
        }
        other => other.to_string(),
    }
}

pub fn run(a: Args) -> Result<()> {
    let model = ModelView::open(&a.path)?;
    // Built as one string so `inspect | head` ends quietly (see print_out).
    let mut out = String::new();
    let arch = model.arch();
    writeln!(out, "{} ({})", a.path.display(), model.format_name()).ok();
    let arch_json = serde_json::to_value(arch).map_err(|e| Error::Config(e.to_string()))?;
    writeln!(out, "architecture:").ok();
    if let Some(obj) = arch_json.as_object() {
        for (k, v) in obj {
            writeln!(out, "  {k:<22} {v}").ok();
        }
    }
    let meta = model.metadata();
    writeln!(out, "metadata ({} entries):", meta.len()).ok();
    for (k, v) in &meta {
        let shown = if a.full {
            v.to_string()
        } else {
            short_value(v)
        };
        writeln!(out, "  {k:<40} {shown}").ok();
    }
    let tensors = model.tensors();
    let params: usize = tensors.iter().map(|t| t.numel()).sum();
    writeln!(
        out,
        "tensors ({}, {:.1} M parameters):",
        tensors.len(),
        params as f64 / 1e6
    )
    .ok();
    for t in tensors {
        writeln!(out, "  {:<48} {:<16} {:?}", t.name, t.dtype, t.shape).ok();
    }
    // Models without decoder linears (or of unknown types) just lack the line.
    if let Ok(s) = llmq_gpu::eval::size::linear_storage(&model) {
        writeln!(out, "{s}").ok();
    }
    print_out(&out);
    Ok(())
}
