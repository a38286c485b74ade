//! `quantize --format gguf` (a GGUF file of llama.cpp's block types) and `--format gptq` (a Hugging Face GPTQ checkpoint made from the llmq folder).

use super::human_bytes;
use indicatif::{ProgressBar, ProgressStyle};
use llmq_gpu::encoding::ggml::GgmlType;
use llmq_gpu::encoding::{Granularity, QuantScheme};
use llmq_gpu::formats::gguf::export::{self, ExportReport, GgufExport, GgufLayout};
use llmq_gpu::formats::gguf::from_source::FloatType;
use llmq_gpu::formats::gguf::presets::{Preset, TypeRule};
use llmq_gpu::formats::gguf::{has_gguf_magic, GgufModel};
use llmq_gpu::model::view::ModelView;
use llmq_gpu::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct GgufArgs {
    /// Output format: llmq (a folder of llmq-gpu's own encodings, the
    /// default), gguf (one file of llama.cpp's block types, loaded by
    /// llama.cpp and every tool built on it; --gguf-type picks them) or
    /// gptq (a Hugging Face GPTQ checkpoint as transformers, GPTQModel and
    /// vLLM load it: 2, 4 or 8 bits, per channel or group, --method rtn or
    /// gptq).
    #[arg(long, default_value = "llmq", value_parser = ["llmq", "gguf", "gptq"])]
    pub format: String,
    /// With --format gguf: llama-quantize's preset (F32, F16, BF16, Q8_0,
    /// Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K_S, Q3_K_M, Q3_K_L, Q4_K_S,
    /// Q4_K_M, Q5_K_S, Q5_K_M, Q6_K, IQ4_NL), with its per-tensor mix as
    /// llama.cpp's: the output head (or the tied token embedding) takes
    /// Q6_K (Q8_0 when its rows are no multiple of 256), the _M/_L mixes
    /// give value and down projections of some layers more bits, and a
    /// 256-block type on rows it does not divide falls back to a 32-block
    /// type (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, Q2_K/Q3_K→Q4_0).
    #[arg(long, default_value = "Q8_0")]
    pub gguf_type: String,
    /// With --format gguf: REGEX=TYPE gives the tensors whose name matches
    /// that type (repeatable; the first match wins), as llama-quantize's
    /// option, e.g. --tensor-type 'ffn_down=Q8_0'.
    #[arg(long, value_name = "REGEX=TYPE")]
    pub tensor_type: Vec<String>,
}

/// A temporary folder beside `out` for the llmq folder a GPTQ checkpoint
/// is made from; refuses an existing `out` without `overwrite` up front.
pub fn gptq_staging(out: &Path, overwrite: bool) -> Result<tempfile::TempDir> {
    if out.exists() && !overwrite {
        return Err(Error::Config(format!(
            "{} exists; pass --overwrite to replace it",
            out.display()
        )));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    tempfile::Builder::new()
        .prefix(".llmq-gptq-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))
}

/// The llmq folder `llmq` rewritten as a GPTQ checkpoint at `out`.
pub fn write_gptq(llmq: &Path, out: &Path, overwrite: bool, json: bool) -> Result<()> {
    let view = ModelView::open(llmq)?;
    let r = llmq_gpu::formats::gptq_export::llmq_to_gptq(&view, out, overwrite, &mut |_, _, _| {})?;
    if !json {
        println!(
            "GPTQ checkpoint: {} linears, {} bits, group size {}, {} ({})",
            r.quantized_linears,
            r.bits,
            r.group_size,
            if r.symmetric {
                "symmetric"
            } else {
                "asymmetric"
            },
            human_bytes(r.bytes)
        );
    }
    Ok(())
}

impl GgufArgs {
    pub fn wanted(&self) -> bool {
        self.format == "gguf"
    }
}

/// The export's options from the arguments.
fn options(a: &GgufArgs, overwrite: bool) -> Result<GgufExport> {
    Ok(GgufExport {
        preset: Preset::parse(&a.gguf_type)?,
        rules: a
            .tensor_type
            .iter()
            .map(|r| r.parse::<TypeRule>())
            .collect::<Result<_>>()?,
        overwrite,
    })
}

/// Runs `f` on `model` laid out as a GGUF file: a GGUF file as itself, a
/// Hugging Face or llmq folder as llama.cpp's converter writes it.
fn with_layout<T>(model: &Path, f: impl FnOnce(&GgufLayout) -> Result<T>) -> Result<T> {
    if model.is_file() && has_gguf_magic(model)? {
        let src = GgufModel::open(model)?;
        return f(&GgufLayout::of_gguf(&src));
    }
    let view = ModelView::open(model)?;
    f(&GgufLayout::of_source(view.source(), FloatType::Auto)?)
}

/// `--method gptq` (or RTN with `--calib`) with `--format gguf`: the
/// block type every tensor gets (the preset's mix and the rules, as the
/// file will hold them), which the pipeline rounds each linear onto
/// (GPTQ onto the type, or the imatrix-weighted rounding), and the scheme
/// of any linear left in a float type (quantized in the calibration
/// forward as 8-bit groups, written from the source).
pub fn coded_plan(
    a: &GgufArgs,
    model: &Path,
    method: &str,
) -> Result<(QuantScheme, BTreeMap<String, GgmlType>)> {
    let opts = options(a, false)?;
    // Keyed by the source's names, which the pipeline quantizes.
    let types: BTreeMap<String, GgmlType> = with_layout(model, |src| {
        let plan = export::plan(src, &opts)?;
        Ok(plan
            .tensors
            .iter()
            .zip(&src.tensors)
            .filter(|(p, _)| llmq_gpu::encoding::ggml::layout(p.ty).is_some())
            .map(|(p, t)| (t.source.clone(), p.ty))
            .collect())
    })?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for ty in types.values() {
        *counts.entry(ty.name()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    eprintln!(
        "note: --method {method} rounds onto {}'s block types ({}; --bits, --group-size and \
         --sym are ignored)",
        opts.preset.name(),
        counts.join(", ")
    );
    Ok((QuantScheme::new(8, true, Granularity::Group(32))?, types))
}

/// The GGUF file of `model` whose linears are the codes of the llmq folder
/// `llmq` (quantized from it under [`coded_plan`]).
pub fn write_coded(
    a: &GgufArgs,
    model: &Path,
    llmq: &Path,
    out: &Path,
    overwrite: bool,
    json: bool,
) -> Result<()> {
    let opts = options(a, overwrite)?;
    let codes = ModelView::open(llmq)?;
    let report = with_layout(model, |src| {
        export::export_codes(src, Some(codes.source()), out, &opts, &mut |_, _, _| {})
    })?;
    finish(&report, out, json)
}

/// Writes the GGUF file by llama.cpp's reference rounding.
pub fn run(a: &GgufArgs, model: &Path, out: &Path, overwrite: bool, json: bool) -> Result<()> {
    let opts = options(a, overwrite)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("static template"),
    );
    let report = with_layout(model, |src| {
        export::export(src, out, &opts, &mut |done, total, name| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
            bar.set_message(name.to_string());
        })
    })?;
    bar.finish_and_clear();
    finish(&report, out, json)
}

fn finish(report: &ExportReport, out: &Path, json: bool) -> Result<()> {
    for n in &report.notes {
        eprintln!("warning: {n}");
    }
    match json {
        true => {
            let text =
                serde_json::to_string_pretty(report).map_err(|e| Error::Config(e.to_string()))?;
            println!("{text}");
        }
        false => print_summary(report, out),
    }
    Ok(())
}

fn print_summary(r: &ExportReport, out: &Path) {
    let mut counts: Vec<(&str, usize, u64)> = Vec::new();
    for t in &r.tensors {
        match counts.iter_mut().find(|c| c.0 == t.to) {
            Some(c) => (c.1, c.2) = (c.1 + 1, c.2 + t.bytes),
            None => counts.push((t.to, 1, t.bytes)),
        }
    }
    println!(
        "wrote {} ({} preset) in {:.1} s",
        out.display(),
        r.preset,
        r.seconds
    );
    if r.from_codes > 0 {
        println!(
            "  {} tensors written from the calibrated codes (the rest by llama.cpp's rounding)",
            r.from_codes
        );
    }
    for (ty, n, bytes) in counts {
        println!("  {ty:<6} {n:>4} tensors  {}", human_bytes(bytes));
    }
    println!(
        "  file size        {} ({:.3} bits per weight over all tensors)",
        human_bytes(r.file_bytes),
        r.bits_per_weight
    );
}
