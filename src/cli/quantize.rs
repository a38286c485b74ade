//! `llmq-gpu quantize`: progress bar per tensor, then a summary.

use super::{human_bytes, DeviceArgs};
use indicatif::{ProgressBar, ProgressStyle};
use llmq_gpu::pipeline::calib::{CalibConfig, CalibSource};
use llmq_gpu::pipeline::checkpoint;
use llmq_gpu::pipeline::gptq::{GptqRunReport, GptqSettings, LinearReport};
use llmq_gpu::quant::gptq::GptqOptions;
use llmq_gpu::{Error, Granularity, Method, Progress, QuantScheme, QuantizeConfig, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input model: a GGUF file, a Hugging Face folder (config.json + *.safetensors), or an llmq folder.
    #[arg(long)]
    model: PathBuf,
    /// Output folder (a file with --format gguf), written atomically:
    /// nothing appears unless the run succeeds.
    #[arg(long)]
    out: PathBuf,
    /// Quantization method: rtn (round to nearest, no data), gptq (layer by
    /// layer on calibration text, needs --calib) or gptvq (vector
    /// quantization with Hessian-weighted codebooks, needs --calib; the
    /// affine --bits/--group-size scheme is the GPTQ/RTN baseline it is
    /// scored against).
    #[arg(long, default_value = "rtn", value_parser = ["rtn", "gptq", "gptvq"])]
    method: String,
    /// Calibration source, repeatable: a UTF-8 text file, a folder of them,
    /// either with a weight (FILE@2: twice the windows of a weight-1
    /// source), or self:N (N windows sampled from the model itself,
    /// seeded, temperature 1). Needed by gptq; with rtn, each group's scale
    /// and zero come from a search weighted by the columns' Σx² on it (the
    /// imatrix idea).
    #[arg(long, value_name = "SOURCE")]
    calib: Vec<String>,
    /// Calibration windows drawn from the text sources (split by weight;
    /// self:N sources add their N).
    #[arg(long, default_value_t = 128)]
    calib_samples: usize,
    /// GPTQ: tokens per calibration window.
    #[arg(long, default_value_t = 512)]
    calib_len: usize,
    /// Share of the --calib-samples windows sampled from the model itself
    /// when --calib names only texts (0 to 1; 0: the texts alone). Half and
    /// half carried over best to text of other domains.
    #[arg(long, default_value_t = 0.5)]
    calib_self_share: f64,
    /// GPTQ: further windows drawn after --calib-samples and held out of the
    /// Hessians; the report gives GPTQ's and RTN's errors on them too, so
    /// overfitting shows (default: --calib-samples / 16, at least 1; 0: none).
    #[arg(long)]
    calib_holdout: Option<usize>,
    /// GPTQ: seed of the window positions.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal, with
    /// static groups so the output needs no reordering at inference (the
    /// default; see --no-act-order).
    #[arg(long, overrides_with = "no_act_order")]
    act_order: bool,
    /// GPTQ: quantize columns in their natural order (plain GPTQ).
    #[arg(long, overrides_with = "act_order")]
    no_act_order: bool,
    /// GPTQ: damping added to the Hessian diagonal, as a fraction of its mean
    /// (raised automatically when the Hessian is not positive definite).
    #[arg(long, default_value_t = 0.01)]
    damp: f64,
    /// GPTQ: fit each group's scale and zero by the diag(H)-weighted search
    /// (the default; see --no-scale-search).
    #[arg(long, overrides_with = "no_scale_search")]
    scale_search: bool,
    /// GPTQ: groups take their min/max range (GPTQ's own rule).
    #[arg(long, overrides_with = "scale_search")]
    no_scale_search: bool,
    /// GPTQ: blend the Hessian toward its diagonal, H ← (1−λ)H + λ·diag(H),
    /// 0 to 1 (0: plain GPTQ; 1: each column weighted by its Σx² alone).
    /// The default carried over best to text unlike the calibration text.
    #[arg(long, default_value_t = GptqOptions::RECOMMENDED_DIAG_BLEND)]
    diag_blend: f64,
    /// GPTQ: columns per block of the lazy batch update.
    #[arg(long, default_value_t = 128)]
    block_size: usize,
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
    /// Go on from where a stopped run of this command (killed, crashed,
    /// Ctrl-C) left off: calibrated runs keep their finished layers in
    /// `.OUT.llmq-partial` beside the output. The settings and files must
    /// be the same; the weights written are the same bytes as a run that
    /// never stopped.
    #[arg(long, conflicts_with = "no_checkpoint")]
    resume: bool,
    /// Keep no checkpoint. Calibrated runs store one after every layer: the
    /// finished layers (about the output's size) and the calibration
    /// windows' hidden state (windows × length × hidden × 4 bytes).
    #[arg(long)]
    no_checkpoint: bool,
    /// Lower the GPU storage-binding limit in bytes (to test splitting of large tensors).
    #[arg(long, hide = true)]
    max_binding: Option<u64>,
    /// Print the report as JSON instead of the summary table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    act: super::act_args::ActArgs,
    #[command(flatten)]
    vq: super::gptvq::VqArgs,
    #[command(flatten)]
    gguf: super::gguf_out::GgufArgs,
    /// GPTVQ: skip the GPTQ run at the --bits/--group-size scheme that the
    /// report compares every linear against (saves its time).
    #[arg(long)]
    no_gptq_baseline: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    // GGUF: llama.cpp's reference rounding, or (GPTQ, calibrated RTN) the
    // codes of an llmq folder on the preset's grid, written as its blocks.
    let gguf_codes = a.gguf.wanted() && (a.method != "rtn" || !a.calib.is_empty());
    if gguf_codes && a.method == "gptvq" {
        return Err(Error::Config(
            "--method gptvq --format gguf: GPTVQ's codebooks have no ggml block type; use \
             --method gptq (GPTQ onto the preset's blocks) or --format llmq"
                .into(),
        ));
    }
    let act = a.act.settings()?;
    let clip = a.act.weight_clip()?;
    if act.is_some() && (a.gguf.wanted() || a.gguf.format == "gptq") {
        return Err(Error::Config(
            "--act-bits: INT8 input scales are stored in the llmq format only (no GGUF or GPTQ              runtime reads them); leave out --format"
                .into(),
        ));
    }
    if a.gguf.wanted() && !gguf_codes {
        return super::gguf_out::run(&a.gguf, &a.model, &a.out, a.overwrite, a.json);
    }
    let granularity = if a.per_tensor {
        Granularity::PerTensor
    } else if a.per_channel {
        Granularity::PerChannel
    } else {
        Granularity::Group(a.group_size)
    };
    let (scheme, ggml_types) = match gguf_codes {
        true => super::gguf_out::coded_plan(&a.gguf, &a.model, &a.method)?,
        false => (
            QuantScheme::new(a.bits, a.sym, granularity)?,
            Default::default(),
        ),
    };
    let method = match a.method.as_str() {
        "rtn" => Method::Rtn,
        "gptq" => Method::Gptq,
        "gptvq" => Method::Gptvq,
        other => return Err(Error::Config(format!("unknown method '{other}'"))),
    };
    // --format gptq: the llmq folder is written to a temporary place, then
    // rewritten as the GPTQ checkpoint (refused early if --out exists).
    let gptq_stage = match a.gguf.format == "gptq" || gguf_codes {
        true => Some(super::gguf_out::gptq_staging(&a.out, a.overwrite)?),
        false => None,
    };
    let llmq_out = gptq_stage
        .as_ref()
        .map_or(a.out.clone(), |d| d.path().join("llmq"));
    let mut config = QuantizeConfig::new(&a.model, &llmq_out, scheme);
    let sources = a
        .calib
        .iter()
        .map(|s| CalibSource::parse(s))
        .collect::<Result<Vec<_>>>()?
        .concat();
    match (method, sources.is_empty()) {
        (_, false) => {
            let mut settings = GptqSettings::new(
                CalibConfig {
                    sources,
                    samples: a.calib_samples,
                    len: a.calib_len,
                    seed: a.seed,
                }
                .with_self_share(a.calib_self_share)?,
            );
            if let Some(n) = a.calib_holdout {
                settings.holdout = n;
            }
            settings.ggml_types = ggml_types;
            settings.options = GptqOptions {
                damp: a.damp,
                block: a.block_size,
                act_order: a.act_order || !a.no_act_order,
                scale_search: a.scale_search || !a.no_scale_search,
                diag_blend: a.diag_blend,
                ..GptqOptions::recommended()
            };
            if let Some(c) = clip {
                settings.options = settings.options.with_clip(c);
            }
            config = match method {
                Method::Gptvq => {
                    let o = a.vq.options(a.bits, a.seed)?;
                    settings.gptq_baseline = !a.no_gptq_baseline;
                    config.gptvq(settings, o)
                }
                _ => config.gptq(settings),
            };
        }
        (Method::Gptvq, true) => return Err(super::gptvq::needs_calibration()),
        (Method::Gptq, true) => {
            return Err(Error::Config(
                "--method gptq needs calibration: --calib FILE (any UTF-8 text \
                 in the model's language, e.g. a book or a Wikipedia dump), a folder \
                 of texts, or self:N (N windows sampled from the model itself)"
                    .into(),
            ))
        }
        (Method::Rtn, true) => {}
    }
    let mut config = match method {
        // `gptvq` set the method with its settings.
        Method::Gptvq => config,
        _ => config.method(method),
    };
    if let Some(act) = act {
        config = config.activations(act);
    }
    if let Some(c) = clip {
        config.clip = c;
    }
    let label = match gguf_codes {
        true => format!(
            "{} onto {}'s blocks",
            if method == Method::Gptq {
                "GPTQ"
            } else {
                "imatrix-weighted rounding"
            },
            a.gguf.gguf_type.to_uppercase()
        ),
        false => config.label(),
    };
    let config = config
        .device(a.device.device)
        .adapter(a.device.adapter.clone())
        .quantize_output_head(a.quantize_output)
        .strict_groups(a.strict_groups)
        .overwrite(a.overwrite)
        .max_binding(a.max_binding)
        // A GGUF or GPTQ checkpoint is made from a staged llmq folder: the
        // checkpoint goes beside the final output.
        .checkpoint((!a.no_checkpoint).then(|| checkpoint::default_dir(&a.out)))
        .resume(a.resume);

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {msg}")
            .expect("static template"),
    );
    // Lines go above the bar on a terminal, to stderr as plain lines otherwise
    // (indicatif draws nothing when stderr is not a terminal).
    let say = |line: String| {
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    };
    let mut on_progress = |p: Progress| match p {
        Progress::Started { tensors, backend } => {
            bar.set_length(tensors as u64);
            say(format!(
                "quantizing {} with {label} on {backend}",
                a.model.display(),
            ));
        }
        Progress::Tensor { name, .. } => {
            if method == Method::Rtn {
                bar.inc(1);
            }
            bar.set_message(name);
        }
        Progress::Calibrated { tokens, layers } => {
            say(format!(
                "calibration: {tokens} tokens; {} layer by layer ({layers} layers)",
                match method {
                    Method::Rtn => "RTN scale search",
                    Method::Gptq => "GPTQ",
                    Method::Gptvq => "GPTVQ",
                }
            ));
            bar.set_length(layers as u64);
            bar.set_position(0);
        }
        Progress::Layer {
            replayed,
            index,
            total,
            gptq_error,
            rtn_error,
            gptq_baseline_error,
            seconds,
        } => {
            let who = match method {
                Method::Rtn => "RTN+search",
                Method::Gptq => "GPTQ",
                Method::Gptvq => "GPTVQ",
            };
            let ratio = |b: f64| gptq_error / b.max(f64::MIN_POSITIVE);
            let gptq = gptq_baseline_error.map_or(String::new(), |g| {
                format!(" vs GPTQ {g:.3e} ({:.2}x)", ratio(g))
            });
            bar.inc(1);
            say(format!(
                "layer {:>3}/{total}: output error {who} {gptq_error:.3e}{gptq} vs RTN \
                 {rtn_error:.3e} ({:.2}x)  {seconds:.1} s{}",
                index + 1,
                ratio(rtn_error),
                if replayed {
                    " (from the checkpoint)"
                } else {
                    ""
                }
            ));
        }
        Progress::Resumed {
            layers,
            total,
            checkpoint,
        } => say(format!(
            "resuming: {layers} of {total} layers are done in {}",
            checkpoint.display()
        )),
        Progress::Activations { what, windows } => say(format!(
            "activations: {what} on {windows} calibration windows"
        )),
        Progress::Writing => bar.set_message("writing"),
    };
    let result = llmq_gpu::quantize_model(
        &config,
        &mut on_progress,
        &super::interrupt::cancel_on_signals(),
    );
    bar.finish_and_clear();
    if let (Err(_), Some(dir)) = (&result, &config.checkpoint) {
        if let Some(n) = checkpoint::layers_in(dir).filter(|&n| n > 0) {
            eprintln!(
                "{n} finished layers are kept in {}: the same command with --resume goes on \
                 from there (delete the folder to start over)",
                dir.display()
            );
        }
    }
    let mut report = result?;
    // Where the GPTQ report ends up: in the llmq folder, or beside a
    // file or checkpoint made from a staged one.
    let mut report_at = "gptq-report.json in the output folder".to_string();
    if gptq_stage.is_some() {
        match gguf_codes {
            true => super::gguf_out::write_coded(
                &a.gguf,
                &a.model,
                &llmq_out,
                &a.out,
                a.overwrite,
                a.json,
            )?,
            false => super::gguf_out::write_gptq(&llmq_out, &a.out, a.overwrite, a.json)?,
        }
        let staged = llmq_out.join("gptq-report.json");
        if staged.is_file() {
            let mut name = a.out.as_os_str().to_owned();
            name.push(".gptq-report.json");
            let beside = PathBuf::from(name);
            std::fs::copy(&staged, &beside).map_err(|e| Error::io(&beside, e))?;
            report_at = beside.display().to_string();
        }
        if !a.json {
            println!("the llmq codes it was written from (sizes are theirs, not the file's):");
        }
        report.out = a.out.clone();
    }

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
    println!("  {}", report.linears);
    println!("  time             {:.1} s", report.seconds);
    println!("  mean relative reconstruction error ‖W−Ŵ‖/‖W‖ by kind:");
    for k in &report.errors_by_kind {
        println!(
            "    {:<12} {:>3} tensors  {:.4}",
            k.kind, k.tensors, k.mean_relative_error
        );
    }
    if let Some(g) = &report.gptq {
        print_gptq_summary(g, &report_at);
    }
    if let Some(act) = &report.activations {
        super::act_args::print_summary(act);
    }
    Ok(())
}

fn print_gptq_summary(g: &GptqRunReport, report_at: &str) {
    let linears: Vec<_> = g
        .layers
        .iter()
        .flat_map(|l| &l.linears)
        .chain(&g.head)
        .collect();
    let mean = |f: &dyn Fn(&&LinearReport) -> f64| {
        linears.iter().map(f).sum::<f64>() / linears.len().max(1) as f64
    };
    let who = g.solver.label();
    println!(
        "  {who:<16} {} x {} calibration tokens, damp {}, block {}{}{}{}",
        g.calib.windows(),
        g.calib.len,
        g.damp,
        g.block,
        if g.act_order { ", act-order" } else { "" },
        if g.scale_search { ", scale search" } else { "" },
        if g.diag_blend > 0.0 {
            format!(", diag blend {}", g.diag_blend)
        } else {
            String::new()
        }
    );
    println!(
        "  output error     mean over {} linears: {who} {:.3e}, RTN {:.3e} (‖WX−ŴX‖²/‖WX‖² on the calibration inputs)",
        linears.len(),
        mean(&|l| l.gptq_error),
        mean(&|l| l.rtn_error)
    );
    if linears.iter().all(|l| l.gptq_baseline_error.is_some()) && !linears.is_empty() {
        println!(
            "                   GPTQ at the baseline scheme (natural order) {:.3e}",
            mean(&|l| l.gptq_baseline_error.unwrap_or(0.0))
        );
    }
    if g.linears_not_better_than_rtn.is_empty() {
        println!("                   {who} is below RTN on every linear");
    } else {
        println!(
            "                   {who} is not below RTN on: {}",
            g.linears_not_better_than_rtn.join(", ")
        );
    }
    let held: Vec<(f64, f64)> = linears
        .iter()
        .filter_map(|l| Some((l.held_out_gptq_error?, l.held_out_rtn_error?)))
        .collect();
    if !held.is_empty() {
        let n = held.len() as f64;
        println!(
            "  held out         {} windows not in the Hessians: {who} {:.3e}, RTN {:.3e} (mean; \
             {who} fitted/held-out {:.2})",
            g.holdout_windows,
            held.iter().map(|e| e.0).sum::<f64>() / n,
            held.iter().map(|e| e.1).sum::<f64>() / n,
            mean(&|l| l.gptq_error) / (held.iter().map(|e| e.0).sum::<f64>() / n).max(1e-300)
        );
        if !g.linears_not_better_than_rtn_held_out.is_empty() {
            println!(
                "  warning          on the held-out windows GPTQ is not below RTN on {} linears \
                 ({}): it fits the calibration windows, not the model; use more or more varied \
                 calibration text, or more damping",
                g.linears_not_better_than_rtn_held_out.len(),
                g.linears_not_better_than_rtn_held_out.join(", ")
            );
        }
    }
    let retried: Vec<_> = linears.iter().filter(|l| l.damp_retries > 0).collect();
    if !retried.is_empty() {
        println!(
            "  damping          raised automatically on {} linears (see gptq-report.json)",
            retried.len()
        );
    }
    let p = &g.phases;
    println!("  phases           seconds   GFLOP   GFLOP/s");
    for (name, ph) in [
        ("forward", p.forward),
        ("hessian", p.hessian),
        ("cholesky", p.factor),
        ("column loop", p.update),
        ("gptvq EM", p.em),
        ("gptvq codebook", p.codebook),
        ("error report", p.report),
        ("total", p.total()),
    ] {
        if name.starts_with("gptvq") && ph.seconds == 0.0 {
            continue;
        }
        println!(
            "    {name:<14} {:>7.1} {:>8.1} {:>8.1}",
            ph.seconds,
            ph.flops / 1e9,
            ph.flops / 1e9 / ph.seconds.max(1e-9)
        );
    }
    if g.checkpoint_seconds > 0.0 {
        let resumed = match g.resumed_layers {
            0 => String::new(),
            n => format!(", {n} layers read back from it"),
        };
        println!("  checkpoint       {:.1} s{resumed}", g.checkpoint_seconds);
    }
    if let Some(b) = g.peak_host_bytes {
        println!(
            "  peak host memory {} (model as f32: {})",
            human_bytes(b),
            human_bytes(g.model_f32_bytes)
        );
    }
    if let Some(b) = g.peak_gpu_bytes {
        println!("  peak GPU memory  {}", human_bytes(b));
    }
    if let Some((up, down)) = g.gpu_transfer_bytes {
        println!(
            "  GPU transfers    {} to the GPU, {} back",
            human_bytes(up),
            human_bytes(down)
        );
    }
    println!("  report           {report_at}");
}
