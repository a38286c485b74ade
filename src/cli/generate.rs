//! `llmq-gpu generate`: continue a prompt, streaming tokens as they come.

use super::{print_out, DeviceArgs};
use llmq_gpu::generate::{generate, GenerateOptions, SamplerConfig};
use llmq_gpu::model::forward::open_forward;
use llmq_gpu::model::Tokenizer;
use llmq_gpu::{ModelView, Result};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A GGUF file, a Hugging Face safetensors folder, or an llmq output folder.
    #[arg(long)]
    model: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "tokens", default_value_t = 64)]
    tokens: usize,
    /// 0 is greedy (always the most likely token).
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to p.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the ChatML chat template (instruct models such as SmolLM2-Instruct, Qwen2).
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(a: Args) -> Result<()> {
    let t = Instant::now();
    let view = ModelView::open(&a.model)?;
    let tok = Tokenizer::from_model(&view)?;
    drop(view);
    let model = open_forward(&a.model, a.device.device, a.device.adapter.as_deref())?;
    eprintln!(
        "loaded {} on {} in {:.1} s",
        a.model.display(),
        model.device(),
        t.elapsed().as_secs_f64()
    );
    let opts = GenerateOptions {
        max_tokens: a.tokens,
        sampler: SamplerConfig {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
        },
        chat: a.chat,
        add_bos: None,
    };
    if !a.chat {
        print_out(&a.prompt);
    }
    let mut stdout = std::io::stdout();
    let report = generate(
        model.as_ref(),
        &tok,
        &a.prompt,
        &opts,
        &mut |piece| {
            // A closed pipe ends the output quietly.
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
        },
        &super::interrupt::cancel_on_signals(),
    )?;
    print_out("\n");
    eprintln!(
        "{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s ({:?}) on {}",
        report.prompt_tokens,
        report.prefill_tokens_per_second(),
        report.generated_tokens,
        report.decode_tokens_per_second(),
        report.stop,
        report.device
    );
    Ok(())
}
