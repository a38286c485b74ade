//! Next-token sampling: greedy at temperature 0, otherwise temperature,
//! top-k and top-p (nucleus) over a softmax, with a seeded PRNG so a run can
//! be repeated.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_k: 40,
            top_p: 0.95,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature must be a finite number >= 0, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Config(format!(
                "top-p must be in (0, 1], got {}",
                self.top_p
            )));
        }
        Ok(())
    }
}

pub struct Sampler {
    config: SamplerConfig,
    rng: StdRng,
}

impl Sampler {
    pub fn new(config: SamplerConfig) -> Result<Self> {
        config.check()?;
        let rng = StdRng::seed_from_u64(config.seed);
        Ok(Self { config, rng })
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32> {
        if logits.is_empty() || logits.iter().any(|v| v.is_nan()) {
            return Err(Error::Config(
                "the model produced empty or NaN logits; cannot sample".into(),
            ));
        }
        if self.config.temperature == 0.0 {
            return Ok(argmax(logits) as u32);
        }
        // Candidates sorted by logit, cut to top-k.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, l))
            .collect();
        let k = match self.config.top_k {
            0 => cand.len(),
            k => k.min(cand.len()),
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        // Softmax at the temperature, in f64.
        let t = self.config.temperature as f64;
        let max = cand[0].1 as f64;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|c| ((c.1 as f64 - max) / t).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        // Nucleus: the shortest prefix reaching top_p.
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= self.config.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut r = self.rng.gen::<f64>() * total;
        for (c, p) in cand.iter().zip(&probs[..keep]) {
            if r < *p {
                return Ok(c.0);
            }
            r -= p;
        }
        Ok(cand[keep - 1].0)
    }
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]).unwrap(), 1);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 101) as f32 / 10.0).collect();
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 1,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.sample(&logits).unwrap() as usize, argmax(&logits));
        let run = |seed| {
            let mut s = Sampler::new(SamplerConfig {
                temperature: 1.0,
                top_k: 0,
                top_p: 1.0,
                seed,
            })
            .unwrap();
            (0..20)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn sampling_follows_the_distribution_and_top_p_cuts_the_tail() {
        // p = [0.5, 0.25, 0.125, 0.125] at temperature 1.
        let logits = [0f32, -(2f32.ln()), -(4f32.ln()), -(4f32.ln())];
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1,
        })
        .unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            counts[s.sample(&logits).unwrap() as usize] += 1;
        }
        let share = counts[0] as f64 / 20_000.0;
        assert!((share - 0.5).abs() < 0.02, "token 0 drawn {share}");
        let mut s = Sampler::new(SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
            seed: 1,
        })
        .unwrap();
        for _ in 0..2000 {
            assert!(
                s.sample(&logits).unwrap() < 2,
                "top-p 0.7 keeps tokens 0 and 1"
            );
        }
    }

    #[test]
    fn bad_settings_and_nan_logits_are_errors() {
        let bad = |t, p| {
            Sampler::new(SamplerConfig {
                temperature: t,
                top_p: p,
                ..Default::default()
            })
            .is_err()
        };
        assert!(bad(-1.0, 0.9) && bad(f32::NAN, 0.9) && bad(1.0, 0.0) && bad(1.0, 1.5));
        let mut s = Sampler::new(SamplerConfig::default()).unwrap();
        assert!(s.sample(&[1.0, f32::NAN]).is_err());
        assert!(s.sample(&[]).is_err());
    }
}
