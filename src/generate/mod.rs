//! Text generation with a KV cache: the sanity check users run after
//! quantizing. The prompt is fed in one pass (prefill), then one token at a
//! time; text is handed to the caller as soon as it decodes to whole
//! characters.

pub use crate::model::sampler;

pub use sampler::{Sampler, SamplerConfig};

use crate::cancel::CancelToken;
use crate::error::{Error, Result};
use crate::model::forward::Forward;
use crate::model::Tokenizer;
use serde::Serialize;
use std::time::Instant;

/// End-of-turn tokens of common chat vocabularies, besides the model's EOS.
const STOP_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"];

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Wrap the prompt in the ChatML template (`<|im_start|>user ...`) that
    /// SmolLM2, Qwen2 and other instruct models use.
    pub chat: bool,
    /// Prepend BOS; `None` follows the tokenizer's default.
    pub add_bos: Option<bool>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 64,
            sampler: SamplerConfig::default(),
            chat: false,
            add_bos: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// `max_tokens` were generated.
    Length,
    /// The model emitted an end-of-text or end-of-turn token.
    EndOfText,
    /// The model's context is full.
    Context,
    Cancelled,
}

#[derive(Clone, Debug, Serialize)]
pub struct GenerateReport {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// The generated text (the prompt not included).
    pub text: String,
    pub stop: StopReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub device: String,
}

impl GenerateReport {
    /// Prompt tokens per second of prefill.
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    /// Generated tokens per second after the first.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// The prompt as the model should see it.
fn prompt_ids(tok: &Tokenizer, prompt: &str, opts: &GenerateOptions) -> Result<Vec<u32>> {
    let text = if opts.chat {
        if tok.token_id("<|im_start|>").is_none() {
            return Err(Error::Config(
                "--chat uses the ChatML template, but this vocabulary has no <|im_start|> token"
                    .into(),
            ));
        }
        format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
    } else {
        prompt.to_string()
    };
    let ids = tok.encode(&text, opts.add_bos.unwrap_or(tok.add_bos_default()))?;
    if ids.is_empty() {
        return Err(Error::Config(
            "the prompt is empty; give some text to continue".into(),
        ));
    }
    Ok(ids)
}

/// Generates up to `opts.max_tokens` tokens after `prompt`, calling `on_text`
/// with each new piece of text as it becomes printable.
pub fn generate(
    model: &dyn Forward,
    tok: &Tokenizer,
    prompt: &str,
    opts: &GenerateOptions,
    on_text: &mut dyn FnMut(&str),
    cancel: &CancelToken,
) -> Result<GenerateReport> {
    let arch = model.arch();
    if tok.vocab_size() > arch.vocab_size {
        return Err(Error::Config(format!(
            "the tokenizer has {} ids but the model only {} logits",
            tok.vocab_size(),
            arch.vocab_size
        )));
    }
    if opts.max_tokens == 0 {
        return Err(Error::Config(
            "the number of tokens to generate must be at least 1".into(),
        ));
    }
    let mut sampler = Sampler::new(opts.sampler.clone())?;
    let prompt = prompt_ids(tok, prompt, opts)?;
    let ctx = arch.context_length;
    if prompt.len() >= ctx {
        return Err(Error::Config(format!(
            "the prompt has {} tokens; the model's context holds {ctx}, leaving no room to generate",
            prompt.len()
        )));
    }
    let capacity = (prompt.len() + opts.max_tokens).min(ctx);
    let mut stops: Vec<u32> = STOP_TOKENS.iter().filter_map(|t| tok.token_id(t)).collect();
    stops.extend(tok.eos_id());

    let mut dec = model.decoder(capacity)?;
    let t0 = Instant::now();
    let mut logits = dec.feed(&prompt)?;
    let prefill_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let mut out: Vec<u32> = Vec::new();
    let mut shown = 0usize;
    let mut text = String::new();
    let stop = loop {
        if cancel.is_cancelled() {
            break StopReason::Cancelled;
        }
        let next = sampler.sample(&logits)?;
        if stops.contains(&next) {
            break StopReason::EndOfText;
        }
        out.push(next);
        // Byte-level tokens can end inside a character: wait for the rest.
        text = tok.decode(&out)?;
        if !text.ends_with('\u{FFFD}') && text.len() > shown {
            if let Some(piece) = text.get(shown..) {
                on_text(piece);
                shown = text.len();
            }
        }
        if out.len() >= opts.max_tokens {
            break StopReason::Length;
        }
        if dec.position() >= capacity {
            break StopReason::Context;
        }
        logits = dec.feed(&[next])?;
    };
    if let Some(rest) = text.get(shown..).filter(|r| !r.is_empty()) {
        on_text(rest);
    }
    Ok(GenerateReport {
        prompt_tokens: prompt.len(),
        generated_tokens: out.len(),
        text,
        stop,
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
        device: model.device(),
    })
}
