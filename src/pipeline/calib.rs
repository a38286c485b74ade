//! Calibration data: `samples` windows of `len` tokens drawn reproducibly
//! from a text file, the way GPTQ's `get_wikitext2`/`get_c4` draw them
//! (uniform random start positions in the tokenized text, seeded). Like
//! llama.cpp's `imatrix`, a window starts with BOS when the tokenizer adds
//! one, so the calibration inputs look like what the model sees at
//! inference (the first position carries the attention-sink activations).

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where calibration windows come from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CalibConfig {
    /// A UTF-8 text file.
    pub file: PathBuf,
    /// Windows drawn.
    pub samples: usize,
    /// Tokens per window.
    pub len: usize,
    pub seed: u64,
}

impl CalibConfig {
    /// GPTQ's usual setting: 128 windows of 512 tokens, seed 0.
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            samples: 128,
            len: 512,
            seed: 0,
        }
    }
}

/// Token windows, `samples × len`, concatenated.
#[derive(Clone, Debug)]
pub struct CalibWindows {
    pub tokens: Vec<u32>,
    pub samples: usize,
    pub len: usize,
    /// Tokens in the whole text, for the report.
    pub text_tokens: usize,
}

/// Reads `config.file`, tokenizes it and draws the windows.
pub fn load_windows(config: &CalibConfig, tokenizer: &Tokenizer) -> Result<CalibWindows> {
    let text = read_text(&config.file)?;
    let ids = tokenizer.encode(&text, false)?;
    draw_windows(
        &config.file,
        &ids,
        config,
        tokenizer
            .add_bos_default()
            .then(|| tokenizer.bos_id())
            .flatten(),
    )
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
    config: &CalibConfig,
    bos: Option<u32>,
) -> Result<CalibWindows> {
    let (samples, len) = (config.samples, config.len);
    if samples == 0 || len < 2 {
        return Err(Error::Config(format!(
            "calibration needs at least 1 sample of at least 2 tokens (got --calib-samples \
             {samples}, --calib-len {len})"
        )));
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
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut tokens = Vec::with_capacity(samples * len);
    for _ in 0..samples {
        let start = rng.gen_range(0..ids.len() - len);
        let from = tokens.len();
        tokens.extend_from_slice(&ids[start..start + len]);
        if let Some(b) = bos {
            tokens[from] = b;
        }
    }
    Ok(CalibWindows {
        tokens,
        samples,
        len,
        text_tokens: ids.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(samples: usize, len: usize, seed: u64) -> CalibConfig {
        CalibConfig {
            file: "t.txt".into(),
            samples,
            len,
            seed,
        }
    }

    #[test]
    fn windows_are_seeded_contiguous_and_start_with_bos() {
        let ids: Vec<u32> = (10..1010).collect();
        let a = draw_windows(Path::new("t"), &ids, &config(4, 16, 7), Some(1)).unwrap();
        let b = draw_windows(Path::new("t"), &ids, &config(4, 16, 7), Some(1)).unwrap();
        let c = draw_windows(Path::new("t"), &ids, &config(4, 16, 8), Some(1)).unwrap();
        assert_eq!(a.tokens, b.tokens);
        assert_ne!(a.tokens, c.tokens);
        assert_eq!(a.tokens.len(), 64);
        for w in a.tokens.chunks(16) {
            assert_eq!(w[0], 1);
            assert!(w[1..].windows(2).all(|p| p[1] == p[0] + 1), "{w:?}");
        }
    }

    #[test]
    fn too_short_text_names_the_file() {
        let ids: Vec<u32> = (0..10).collect();
        let e = draw_windows(Path::new("short.txt"), &ids, &config(1, 16, 0), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("short.txt") && e.contains("10 tokens"), "{e}");
        let e = draw_windows(Path::new("t"), &ids, &config(0, 4, 0), None).unwrap_err();
        assert!(e.to_string().contains("--calib-samples"), "{e}");
    }
}
