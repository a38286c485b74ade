//! Architecture hyper-parameters of the Llama family (Llama, Mistral, Qwen2,
//! SmolLM), read from GGUF metadata or a Hugging Face `config.json`.

use serde::{Deserialize, Serialize};

/// Architectures llmq-gpu knows how to handle.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "mistral", "qwen2"];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArchConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub architecture: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_norm_eps: f32,
    /// True when the output head reuses the token embedding.
    pub tied_embeddings: bool,
    /// True for GGUF files of llama.cpp's Llama converter: q/k weights are
    /// stored permuted so that RoPE rotates adjacent pairs; Hugging Face
    /// weights (and Qwen2 GGUF files) rotate half-split pairs.
    pub rope_adjacent_pairs: bool,
    /// Context extension applied to the RoPE frequencies, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

/// RoPE scaling schemes that change only the rotation frequencies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// Positions divided by `factor` (Hugging Face and GGUF "linear").
    Linear { factor: f32 },
    /// Llama 3.1: wavelengths longer than the original context slowed by
    /// `factor`, short ones kept, a smooth blend between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context_length: usize,
    },
    /// A scheme the forward pass does not implement (YaRN, dynamic NTK...):
    /// kept so quantizing still works and running the model fails clearly.
    Unsupported { name: String },
}

impl RopeScaling {
    /// Applies the scaling to the unscaled inverse frequencies; `Err` with
    /// the scheme's name for [`RopeScaling::Unsupported`].
    pub fn apply(&self, inv_freq: &mut [f64]) -> std::result::Result<(), String> {
        match *self {
            RopeScaling::Unsupported { ref name } => return Err(name.clone()),
            RopeScaling::Linear { factor } => {
                inv_freq.iter_mut().for_each(|f| *f /= factor as f64);
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context_length,
            } => {
                // transformers `_compute_llama3_parameters`.
                let (factor, lo, hi) = (
                    factor as f64,
                    low_freq_factor as f64,
                    high_freq_factor as f64,
                );
                let old = original_context_length as f64;
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        Ok(())
    }
}

impl ArchConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }
}
