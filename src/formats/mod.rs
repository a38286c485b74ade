//! Readers and writers of model files.

pub mod gguf;
pub mod llmq;
pub mod safetensors_model;
