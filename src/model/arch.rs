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
    /// True for GGUF files: q/k weights are stored permuted so that RoPE
    /// rotates adjacent pairs; Hugging Face weights rotate half-split pairs.
    pub rope_adjacent_pairs: bool,
}

impl ArchConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads.max(1)
    }
}
