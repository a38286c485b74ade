//! Calibration data: windows of `len` tokens drawn reproducibly from one or
//! more sources, the way GPTQ's `get_wikitext2`/`get_c4` draw them (uniform
//! random start positions in the tokenized text, seeded). Like llama.cpp's
//! `imatrix`, a window starts with BOS when the tokenizer adds one, so the
//! calibration inputs look like what the model sees at inference (the
//! first position carries the attention-sink activations).
//!
//! Sources ([`CalibSource`], `--calib` on the command line, repeatable):
//! text files, folders of them, each with a weight (`FILE@2`), and windows
//! sampled from the model itself (`self:N`, [`generated`]). `samples`
//! windows are drawn from the texts, split by weight (largest remainder);
//! each `self:N` adds N generated windows. Held-out windows follow the
//! fitted ones from the same sources, so the fitted windows (and the
//! result) do not depend on how many are held out.

pub mod generated;

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::model::ModelView;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One place calibration windows come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CalibSource {
    /// A UTF-8 text file; its share of the text windows is `weight` over
    /// the sum of the texts' weights.
    Text { path: PathBuf, weight: f64 },
    /// `windows` windows sampled from the model at temperature 1.
    Model { windows: usize },
}

impl CalibSource {
    /// The sources one `--calib` argument names: `self:N`, `PATH` or
    /// `PATH@WEIGHT`; a folder stands for its files (sorted by name, hidden
    /// ones skipped), sharing its weight evenly.
    pub fn parse(arg: &str) -> Result<Vec<CalibSource>> {
        if let Some(n) = arg.strip_prefix("self:") {
            return match n.parse::<usize>() {
                Ok(windows) if windows > 0 => Ok(vec![CalibSource::Model { windows }]),
                _ => Err(Error::Config(format!(
                    "--calib {arg}: self:N needs a positive number of windows, e.g. self:128"
                ))),
            };
        }
        if arg == "self" {
            return Err(Error::Config(
                "--calib self needs a window count: self:N (e.g. self:128)".into(),
            ));
        }
        let (path, weight) = match arg.rsplit_once('@') {
            Some((p, w)) if w.parse::<f64>().is_ok() => (p, w.parse::<f64>().unwrap_or(1.0)),
            _ => (arg, 1.0),
        };
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Error::Config(format!(
                "--calib {arg}: the weight must be a positive number"
            )));
        }
        let path = PathBuf::from(path);
        if !path.is_dir() {
            if !path.exists() {
                return Err(Error::io(
                    &path,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "calibration text not found"),
                ));
            }
            return Ok(vec![CalibSource::Text { path, weight }]);
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&path)
            .map_err(|e| Error::io(&path, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::format(&path, "calibration folder has no files"));
        }
        let each = weight / files.len() as f64;
        Ok(files
            .into_iter()
            .map(|path| CalibSource::Text { path, weight: each })
            .collect())
    }
}

/// Where calibration windows come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibConfig {
    pub sources: Vec<CalibSource>,
    /// Windows drawn from the text sources (model sources add their own).
    pub samples: usize,
    /// Tokens per window.
    pub len: usize,
    pub seed: u64,
}

impl CalibConfig {
    /// GPTQ's usual setting on one text: 128 windows of 512 tokens, seed 0.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            sources: vec![CalibSource::Text {
                path: file.into(),
                weight: 1.0,
            }],
            samples: 128,
            len: 512,
            seed: 0,
        }
    }

    /// The default mix: with text sources and no `self:N` one, the share
    /// `share` (0 to 1) of the `samples` windows is sampled from the model
    /// instead (rounded to nearest), the rest drawn from the texts. Half
    /// and half carried over best to text of other domains (README, "Out of
    /// domain"); 0 keeps the texts alone.
    pub fn with_self_share(mut self, share: f64) -> Result<Self> {
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::Config(format!(
                "--calib-self-share must be between 0 and 1, got {share}"
            )));
        }
        let has_model = self
            .sources
            .iter()
            .any(|s| matches!(s, CalibSource::Model { .. }));
        if has_model || self.texts().next().is_none() {
            return Ok(self);
        }
        let n = (share * self.samples as f64).round() as usize;
        if n > 0 {
            self.samples -= n;
            self.sources.push(CalibSource::Model { windows: n });
        }
        Ok(self)
    }

    pub(crate) fn texts(&self) -> impl Iterator<Item = (&Path, f64)> {
        self.sources.iter().filter_map(|s| match s {
            CalibSource::Text { path, weight } => Some((path.as_path(), *weight)),
            CalibSource::Model { .. } => None,
        })
    }

    /// Windows generated by the model sources.
    fn generated(&self) -> usize {
        self.sources
            .iter()
            .map(|s| match s {
                CalibSource::Model { windows } => *windows,
                CalibSource::Text { .. } => 0,
            })
            .sum()
    }

    /// Fitted windows: from the texts and from the model.
    pub fn windows(&self) -> usize {
        match self.texts().next() {
            Some(_) => self.samples + self.generated(),
            None => self.generated(),
        }
    }
}

/// Token windows, `samples × len`, concatenated: the fitted windows, then
/// the held-out ones.
#[derive(Clone, Debug)]
pub struct CalibWindows {
    pub tokens: Vec<u32>,
    pub samples: usize,
    pub len: usize,
    /// Tokens in the texts, for the report.
    pub text_tokens: usize,
}

/// `total` split in proportion to `weights` (largest remainder, ties to
/// the earlier source).
fn split(total: usize, weights: &[f64]) -> Vec<usize> {
    let sum: f64 = weights.iter().sum();
    let exact: Vec<f64> = weights.iter().map(|w| total as f64 * w / sum).collect();
    let mut out: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    for &i in order.iter().cycle().take(total - out.iter().sum::<usize>()) {
        out[i] += 1;
    }
    out
}

/// Reads, tokenizes and samples every source of `config`: its fitted
/// windows, then `holdout` more (split between texts and model like the
/// fitted ones). `view` is the model (for `self:N` sources).
pub fn load_windows(
    config: &CalibConfig,
    holdout: usize,
    tokenizer: &Tokenizer,
    view: &ModelView,
) -> Result<CalibWindows> {
    let len = config.len;
    let (fit_gen, texts): (usize, Vec<(&Path, f64)>) =
        (config.generated(), config.texts().collect());
    let fit_text = if texts.is_empty() { 0 } else { config.samples };
    if fit_text + fit_gen == 0 || len < 2 {
        return Err(Error::Config(format!(
            "calibration needs at least 1 sample of at least 2 tokens (got --calib-samples \
             {}, --calib-len {len})",
            config.samples
        )));
    }
    let held_text = match fit_gen {
        0 => holdout,
        _ => (holdout as f64 * fit_text as f64 / (fit_text + fit_gen) as f64).round() as usize,
    };
    let held_gen = holdout - held_text;
    let weights: Vec<f64> = texts.iter().map(|t| t.1).collect();
    let (fit_split, held_split) = (split(fit_text, &weights), split(held_text, &weights));
    let bos = tokenizer
        .add_bos_default()
        .then(|| tokenizer.bos_id())
        .flatten();
    let (mut fitted, mut held, mut text_tokens) = (Vec::new(), Vec::new(), 0);
    for (i, (path, _)) in texts.iter().enumerate() {
        let ids = tokenizer.encode(&read_text(path)?, false)?;
        text_tokens += ids.len();
        let seed = config.seed.wrapping_add(i as u64);
        let w = draw_windows(path, &ids, fit_split[i] + held_split[i], len, seed, bos)?;
        let (f, h) = w.split_at(fit_split[i] * len);
        fitted.extend_from_slice(f);
        held.extend_from_slice(h);
    }
    // Generated windows: the held-out ones from another seed, so the fitted
    // ones do not depend on their number.
    fitted.extend(generated::generate_windows(
        view,
        tokenizer,
        fit_gen,
        len,
        config.seed,
    )?);
    held.extend(generated::generate_windows(
        view,
        tokenizer,
        held_gen,
        len,
        config.seed ^ 0x005E_ED0F_4E1D,
    )?);
    fitted.extend_from_slice(&held);
    Ok(CalibWindows {
        samples: fitted.len() / len,
        tokens: fitted,
        len,
        text_tokens,
    })
}

fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::format(
            path,
            format!(
                "calibration text is not UTF-8 (byte {}); convert it first",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

/// `samples` windows of `len` tokens at seeded random starts in `ids`; with
/// `bos`, the first token of each window is replaced by it.
pub fn draw_windows(
    path: &Path,
    ids: &[u32],
    samples: usize,
    len: usize,
    seed: u64,
    bos: Option<u32>,
) -> Result<Vec<u32>> {
    if samples == 0 {
        return Ok(Vec::new());
    }
    if ids.len() <= len {
        return Err(Error::format(
            path,
            format!(
                "calibration text has {} tokens, fewer than one window of --calib-len {len} + 1; \
                 use a longer text or a shorter window",
                ids.len()
            ),
        ));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tokens = Vec::with_capacity(samples * len);
    for _ in 0..samples {
        let start = rng.gen_range(0..ids.len() - len);
        let from = tokens.len();
        tokens.extend_from_slice(&ids[start..start + len]);
        if let Some(b) = bos {
            tokens[from] = b;
        }
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_seeded_contiguous_and_start_with_bos() {
        let ids: Vec<u32> = (10..1010).collect();
        let t = Path::new("t");
        let a = draw_windows(t, &ids, 4, 16, 7, Some(1)).unwrap();
        let b = draw_windows(t, &ids, 4, 16, 7, Some(1)).unwrap();
        let c = draw_windows(t, &ids, 4, 16, 8, Some(1)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
        for w in a.chunks(16) {
            assert_eq!(w[0], 1);
            assert!(w[1..].windows(2).all(|p| p[1] == p[0] + 1), "{w:?}");
        }
        // More windows from the same seed start with the same ones.
        assert_eq!(
            draw_windows(t, &ids, 6, 16, 7, Some(1)).unwrap()[..64],
            a[..]
        );
    }

    #[test]
    fn too_short_text_names_the_file() {
        let ids: Vec<u32> = (0..10).collect();
        let e = draw_windows(Path::new("short.txt"), &ids, 1, 16, 0, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("short.txt") && e.contains("10 tokens"), "{e}");
    }

    #[test]
    fn weights_split_by_largest_remainder() {
        assert_eq!(split(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(split(128, &[3.0, 1.0]), vec![96, 32]);
        assert_eq!(split(5, &[1.0, 0.5]), vec![3, 2]);
        assert_eq!(split(0, &[1.0]), vec![0]);
    }

    #[test]
    fn the_self_share_splits_the_windows() {
        let c = CalibConfig {
            samples: 32,
            ..CalibConfig::new("emma.txt")
        };
        let mixed = c.clone().with_self_share(0.5).unwrap();
        assert_eq!(mixed.samples, 16);
        assert_eq!(mixed.sources[1], CalibSource::Model { windows: 16 });
        assert_eq!(mixed.windows(), 32);
        assert_eq!(c.clone().with_self_share(0.0).unwrap(), c);
        // An explicit self:N source is left as given.
        let explicit = CalibConfig {
            sources: vec![c.sources[0].clone(), CalibSource::Model { windows: 4 }],
            ..c.clone()
        };
        assert_eq!(explicit.clone().with_self_share(0.5).unwrap(), explicit);
        assert!(c.with_self_share(1.5).is_err());
    }

    #[test]
    fn sources_parse_weights_folders_and_self() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.txt", "a.txt", ".hidden"] {
            std::fs::write(dir.path().join(name), "text").unwrap();
        }
        let d = dir.path().to_string_lossy().to_string();
        let got = CalibSource::parse(&format!("{d}@3")).unwrap();
        let want: Vec<CalibSource> = ["a.txt", "b.txt"]
            .iter()
            .map(|n| CalibSource::Text {
                path: dir.path().join(n),
                weight: 1.5,
            })
            .collect();
        assert_eq!(got, want);
        let f = format!("{d}/a.txt");
        assert_eq!(
            CalibSource::parse(&f).unwrap(),
            vec![CalibSource::Text {
                path: f.clone().into(),
                weight: 1.0
            }]
        );
        assert_eq!(
            CalibSource::parse("self:12").unwrap(),
            vec![CalibSource::Model { windows: 12 }]
        );
        for bad in ["self", "self:0", "self:x", "/no/such/file.txt"] {
            assert!(CalibSource::parse(bad).is_err(), "{bad}");
        }
        assert!(CalibSource::parse(&format!("{f}@0")).is_err());
        assert!(CalibSource::parse(&format!("{f}@-1")).is_err());
    }
}
