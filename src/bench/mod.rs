//! Benchmarks that print figures and ratios to the physical limits measured
//! on the same device in the same run: dequant-matmul kernels
//! ([`run_matmul_bench`]), whole-model prefill/decode ([`forward`]) and
//! GPTQ by phase ([`gptq`]); and llama.cpp's `llama-bench` as the peer of
//! the whole-model figures ([`peer`]).

pub mod forward;
pub mod gptq;
mod matmul;
pub mod peer;

pub use matmul::*;
