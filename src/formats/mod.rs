//! Readers and writers of model files.

pub mod atomic;
pub mod gguf;
pub mod gptq_export;
pub mod hf_config;
pub mod hf_export;
pub mod llmq;
pub mod safetensors_model;
pub mod safetensors_writer;
pub mod source;
pub mod tensor_names;
