//! Calibration windows sampled from the model itself (`--calib self:N`):
//! for a user with no data, or a model of another language or domain, the
//! model's own distribution is the calibration text.
//!
//! Each window starts at the tokenizer's BOS (its EOS when it has none, the
//! document separator of models like SmolLM2) and continues with tokens
//! sampled at temperature 1 from the full distribution (no top-k/top-p, so
//! the windows follow the model, not its most likely text). An end-of-text
//! token is kept and generation goes on: the model then starts a new
//! document, as packed training data does. Windows are generated in
//! lockstep batches on the CPU ([`CpuForward::feed_batch`]); window `i`
//! has its own sampler seeded from `(seed, i)`, so a run is reproducible.

use crate::error::{Error, Result};
use crate::model::forward::{CpuForward, KvCache};
use crate::model::sampler::{Sampler, SamplerConfig};
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelView;
use rayon::prelude::*;
use std::time::Instant;

/// Sequences decoded together (a batch of rows per linear).
const BATCH: usize = 16;

/// `count` windows of `len` tokens sampled from the model, concatenated.
pub fn generate_windows(
    view: &ModelView,
    tokenizer: &Tokenizer,
    count: usize,
    len: usize,
    seed: u64,
) -> Result<Vec<u32>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let start = tokenizer.bos_id().or(tokenizer.eos_id()).ok_or_else(|| {
        Error::Config(
            "--calib self:N starts each window at the BOS or EOS token, and this tokenizer has \
             neither; calibrate on a text file instead"
                .into(),
        )
    })?;
    let t = Instant::now();
    let model = CpuForward::load(view)?;
    let arch = model.weights.arch.clone();
    if len > arch.context_length {
        return Err(Error::Config(format!(
            "--calib-len {len} exceeds the model's context length {}",
            arch.context_length
        )));
    }
    let mut out = Vec::with_capacity(count * len);
    for first in (0..count).step_by(BATCH) {
        let n = BATCH.min(count - first);
        let mut samplers = (first..first + n)
            .map(|i| {
                Sampler::new(SamplerConfig {
                    temperature: 1.0,
                    top_k: 0,
                    top_p: 1.0,
                    seed: seed
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add(i as u64),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new(&arch, len)).collect();
        let mut windows = vec![vec![start]; n];
        while windows[0].len() < len {
            let last: Vec<u32> = windows.iter().map(|w| w[w.len() - 1]).collect();
            let logits = model.feed_batch(&mut caches, &last)?;
            windows
                .par_iter_mut()
                .zip(samplers.par_iter_mut())
                .zip(logits.par_chunks(arch.vocab_size))
                .try_for_each(|((w, s), row)| -> Result<()> {
                    w.push(s.sample(row)?);
                    Ok(())
                })?;
        }
        windows.iter().for_each(|w| out.extend_from_slice(w));
        log::info!(
            "calibration: generated {} of {count} windows of {len} tokens ({:.0} s)",
            first + n,
            t.elapsed().as_secs_f64()
        );
    }
    Ok(out)
}
