//! The scoring protocol of llama.cpp's `perplexity` tool, as pure functions
//! over token ids and logits, so the maths can be checked on hand-made
//! numbers.
//!
//! The text is tokenized once (no BOS in front of it) and cut into
//! non-overlapping windows of `ctx` tokens. The first token of each window
//! becomes BOS when the model expects one. Only the second half of a window
//! is scored: the logits at positions `first = ctx/2 .. ctx-1` (exclusive)
//! predict the token after them, so every scored token has seen at least
//! `ctx/2` tokens of context (llama.cpp `perplexity()`: `first = n_ctx/2`,
//! `process_logits(.., logits + first·n_vocab, tokens + start + first,
//! n_ctx - 1 - first, ..)`).

use crate::error::{Error, Result};

/// The smallest window with a scored position (`ctx/2 .. ctx-1` non-empty).
pub const MIN_CTX: usize = 3;

/// How a text is cut and scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Tokens per window.
    pub ctx: usize,
    /// Windows evaluated: `min(requested, n_tokens / ctx)`.
    pub chunks: usize,
    /// Id written over the first token of every window, when the model uses BOS.
    pub bos: Option<u32>,
}

impl Windows {
    /// Plans the windows over `n_tokens` tokens; `max_chunks = None` takes
    /// every whole window. Errors say what is missing.
    pub fn plan(
        n_tokens: usize,
        ctx: usize,
        max_chunks: Option<usize>,
        bos: Option<u32>,
    ) -> Result<Self> {
        if ctx < MIN_CTX {
            return Err(Error::Config(format!(
                "--ctx {ctx} is too small: the second half of each window is scored, so it needs at least {MIN_CTX} tokens"
            )));
        }
        if max_chunks == Some(0) {
            return Err(Error::Config(
                "--chunks 0 evaluates nothing; give at least 1 (or leave it out for every window)"
                    .into(),
            ));
        }
        let whole = n_tokens / ctx;
        if whole == 0 {
            return Err(Error::Config(format!(
                "the text has {n_tokens} tokens, too few for one window of --ctx {ctx}: \
                 give a longer text or a smaller --ctx"
            )));
        }
        Ok(Self {
            ctx,
            chunks: max_chunks.map_or(whole, |m| m.min(whole)),
            bos,
        })
    }

    /// First scored position of a window (`ctx / 2`).
    pub fn first_scored(&self) -> usize {
        self.ctx / 2
    }

    /// Scored positions per window: `ctx - 1 - ctx/2`.
    pub fn scored_per_chunk(&self) -> usize {
        self.ctx - 1 - self.first_scored()
    }

    /// The token ids fed to the model for window `i`, BOS in front when set.
    pub fn window(&self, tokens: &[u32], i: usize) -> Result<Vec<u32>> {
        let start = i * self.ctx;
        let Some(w) = tokens.get(start..start + self.ctx) else {
            return Err(Error::Config(format!(
                "window {i} of {} tokens runs past the {} tokens of the text",
                self.ctx,
                tokens.len()
            )));
        };
        let mut w = w.to_vec();
        if let (Some(bos), Some(t)) = (self.bos, w.first_mut()) {
            *t = bos;
        }
        Ok(w)
    }

    /// `(position, target)` pairs scored in a window: the logits at
    /// `position` predict `target`, the window's token at `position + 1`.
    /// The target is the text's token, never the BOS written over a window start.
    pub fn scored<'a>(&self, window: &'a [u32]) -> impl Iterator<Item = (usize, u32)> + 'a {
        let first = self.first_scored();
        let end = self
            .ctx
            .saturating_sub(1)
            .min(window.len().saturating_sub(1));
        (first..end).map(move |p| (p, window[p + 1]))
    }
}

/// `log_softmax(logits)` in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    logits.iter().map(|&v| v as f64 - log_z).collect()
}

/// Index of the largest value (the first one on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// `KL(P ‖ Q) = Σ p (log p − log q)` from two log-probability rows.
pub fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    let mut kl = 0.0;
    for (&lp, &lq) in log_p.iter().zip(log_q) {
        // p = 0 contributes nothing, whatever q is.
        if lp > f64::NEG_INFINITY {
            kl += lp.exp() * (lp - lq);
        }
    }
    kl
}

/// Running mean of a per-token quantity, with the standard error of the mean
/// as llama.cpp prints it: `sqrt((E[x²] − E[x]²) / (n − 1))`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Mean {
    pub n: u64,
    sum: f64,
    sum2: f64,
}

impl Mean {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum2 += x * x;
    }

    pub fn mean(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum / self.n as f64
        }
    }

    /// Standard error of the mean; 0 with fewer than two values.
    pub fn stderr(&self) -> f64 {
        if self.n < 2 {
            return 0.0;
        }
        let n = self.n as f64;
        let m = self.sum / n;
        let var = (self.sum2 / n - m * m).max(0.0);
        (var / (n - 1.0)).sqrt()
    }
}

/// What one model accumulates over the scored positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    /// Negative log-likelihood of each scored target.
    pub nll: Mean,
    /// `KL(P_ref ‖ P_model)` per scored position (empty without a reference).
    pub kld: Mean,
    /// 1 where the model's argmax equals the reference's, else 0.
    pub top1: Mean,
}

impl Scores {
    /// Perplexity `exp(mean NLL)`.
    pub fn ppl(&self) -> f64 {
        self.nll.mean().exp()
    }

    /// `ppl · stderr(NLL)`, llama.cpp's `±` on the perplexity.
    pub fn ppl_stderr(&self) -> f64 {
        self.ppl() * self.nll.stderr()
    }

    /// Scores one window from its logits `[ctx, vocab]`; `reference` holds
    /// the reference model's logits for the same window.
    pub fn add_window(
        &mut self,
        windows: &Windows,
        window: &[u32],
        logits: &[f32],
        reference: Option<&[f32]>,
        vocab: usize,
    ) -> Result<()> {
        let check = |what: &str, l: &[f32]| {
            if vocab == 0 || l.len() != window.len() * vocab {
                Err(Error::Config(format!(
                    "{what} has {} logits, expected {} tokens × {vocab}",
                    l.len(),
                    window.len()
                )))
            } else {
                Ok(())
            }
        };
        check("the model's output", logits)?;
        if let Some(r) = reference {
            check("the reference's output", r)?;
        }
        for (p, target) in windows.scored(window) {
            let row = &logits[p * vocab..(p + 1) * vocab];
            let lq = log_softmax(row);
            let t = target as usize;
            let Some(&lp_target) = lq.get(t) else {
                return Err(Error::Config(format!(
                    "token id {target} is outside the model's vocabulary of {vocab}"
                )));
            };
            self.nll.add(-lp_target);
            if let Some(r) = reference {
                let rrow = &r[p * vocab..(p + 1) * vocab];
                let lp = log_softmax(rrow);
                self.kld.add(kl_divergence(&lp, &lq));
                self.top1
                    .add(f64::from(u8::from(argmax(rrow) == argmax(row))));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(ctx: usize, vocab: usize) -> Vec<f32> {
        vec![0.25; ctx * vocab]
    }

    #[test]
    fn windows_follow_llama_cpp_chunking() {
        let w = Windows::plan(1000, 100, None, None).expect("plan");
        assert_eq!(
            (w.chunks, w.first_scored(), w.scored_per_chunk()),
            (10, 50, 49)
        );
        assert_eq!(
            Windows::plan(1000, 100, Some(3), None)
                .expect("plan")
                .chunks,
            3
        );
        assert_eq!(
            Windows::plan(1000, 100, Some(99), None)
                .expect("plan")
                .chunks,
            10
        );
        // Odd ctx: first = 3, positions 3..6 score tokens 4..7.
        let w = Windows::plan(21, 7, None, None).expect("plan");
        assert_eq!(w.chunks, 3);
        let tokens: Vec<u32> = (0..21).collect();
        let win = w.window(&tokens, 2).expect("window");
        assert_eq!(win, (14..21).collect::<Vec<_>>());
        let scored: Vec<_> = w.scored(&win).collect();
        assert_eq!(scored, vec![(3, 18), (4, 19), (5, 20)]);
    }

    #[test]
    fn bos_replaces_the_first_token_of_every_window_only() {
        let tokens: Vec<u32> = (10..30).collect();
        let w = Windows::plan(tokens.len(), 8, None, Some(1)).expect("plan");
        assert_eq!(w.chunks, 2);
        assert_eq!(
            w.window(&tokens, 0).expect("w0"),
            [1, 11, 12, 13, 14, 15, 16, 17]
        );
        assert_eq!(
            w.window(&tokens, 1).expect("w1"),
            [1, 19, 20, 21, 22, 23, 24, 25]
        );
        let plain = Windows::plan(tokens.len(), 8, None, None).expect("plan");
        assert_eq!(plain.window(&tokens, 1).expect("w1")[0], 18);
        assert!(w.window(&tokens, 2).is_err(), "past the text");
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let e = Windows::plan(100, 512, None, None).expect_err("short");
        assert!(
            e.to_string().contains("100 tokens") && e.to_string().contains("512"),
            "{e}"
        );
        let e = Windows::plan(100, 2, None, None).expect_err("ctx 2");
        assert!(e.to_string().contains("at least 3"), "{e}");
        let e = Windows::plan(100, 10, Some(0), None).expect_err("chunks 0");
        assert!(e.to_string().contains("--chunks 0"), "{e}");
    }

    #[test]
    fn uniform_logits_give_perplexity_equal_to_vocab() {
        let (ctx, vocab) = (16, 37);
        let w = Windows::plan(64, ctx, None, None).expect("plan");
        let tokens: Vec<u32> = (0..64).map(|i| (i * 5 % vocab) as u32).collect();
        let mut s = Scores::default();
        for c in 0..w.chunks {
            let win = w.window(&tokens, c).expect("window");
            s.add_window(&w, &win, &uniform(ctx, vocab), None, vocab)
                .expect("score");
        }
        assert_eq!(s.nll.n, (w.chunks * w.scored_per_chunk()) as u64);
        assert!((s.ppl() - vocab as f64).abs() < 1e-9, "{}", s.ppl());
        assert!(s.ppl_stderr().abs() < 1e-9);
    }

    #[test]
    fn nll_and_stderr_match_hand_computation() {
        // vocab 2, ctx 4: positions 2 score token 3 only. Logits [0, ln 3]
        // give p = [1/4, 3/4].
        let (ctx, vocab) = (4, 2);
        let w = Windows::plan(8, ctx, None, None).expect("plan");
        let mut logits = vec![0f32; ctx * vocab];
        logits[2 * vocab + 1] = 3f32.ln();
        let mut s = Scores::default();
        s.add_window(&w, &[0, 0, 0, 1], &logits, None, vocab)
            .expect("a");
        s.add_window(&w, &[0, 0, 0, 0], &logits, None, vocab)
            .expect("b");
        let (a, b) = (-(0.75f64.ln()), -(0.25f64.ln()));
        let mean = (a + b) / 2.0;
        assert!((s.nll.mean() - mean).abs() < 1e-6);
        assert!((s.ppl() - mean.exp()).abs() < 1e-6);
        // n = 2: sqrt((E[x²] − E[x]²) / 1) = |a − b| / 2.
        assert!((s.nll.stderr() - (a - b).abs() / 2.0).abs() < 1e-6);
    }

    #[test]
    fn identical_models_have_zero_kl_and_full_top1() {
        let (ctx, vocab) = (6, 5);
        let w = Windows::plan(12, ctx, None, None).expect("plan");
        let logits: Vec<f32> = (0..ctx * vocab)
            .map(|i| ((i * 7) % 11) as f32 * 0.3)
            .collect();
        let mut s = Scores::default();
        s.add_window(&w, &[0, 1, 2, 3, 4, 0], &logits, Some(&logits), vocab)
            .expect("score");
        assert_eq!(s.kld.n, 2);
        assert_eq!(s.kld.mean(), 0.0);
        assert_eq!(s.top1.mean(), 1.0);
    }

    #[test]
    fn kl_and_top1_of_different_distributions() {
        // P = [0.5, 0.5], Q = [0.2, 0.8]: KL = 0.5 ln(0.5/0.2) + 0.5 ln(0.5/0.8).
        let p = log_softmax(&[0.0, 0.0]);
        let q = log_softmax(&[0.2f32.ln(), 0.8f32.ln()]);
        let want = 0.5 * (0.5f64 / 0.2).ln() + 0.5 * (0.5f64 / 0.8).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-6);
        assert!(kl_divergence(&q, &p) > 0.0);
        let (ctx, vocab) = (4, 3);
        let w = Windows::plan(4, ctx, None, None).expect("plan");
        let mut a = vec![0f32; ctx * vocab];
        let mut b = a.clone();
        a[2 * vocab] = 1.0; // argmax 0
        b[2 * vocab + 2] = 1.0; // argmax 2
        let mut s = Scores::default();
        s.add_window(&w, &[0, 0, 0, 0], &a, Some(&b), vocab)
            .expect("score");
        assert_eq!(s.top1.mean(), 0.0);
        assert!(s.kld.mean() > 0.0);
    }

    #[test]
    fn log_softmax_is_stable_for_large_logits() {
        let l = log_softmax(&[1000.0, 1000.0]);
        assert!((l[0] - 0.5f64.ln()).abs() < 1e-12 && l[0] == l[1]);
    }

    #[test]
    fn wrong_logit_count_and_out_of_vocab_targets_are_errors() {
        let w = Windows::plan(4, 4, None, None).expect("plan");
        let mut s = Scores::default();
        assert!(s.add_window(&w, &[0, 0, 0, 0], &[0.0; 7], None, 2).is_err());
        let e = s
            .add_window(&w, &[0, 0, 0, 9], &[0.0; 8], None, 2)
            .expect_err("target");
        assert!(e.to_string().contains("token id 9"), "{e}");
    }
}
