//! Benchmarks that print figures and ratios to the physical limits measured
//! on the same device in the same run: dequant-matmul kernels
//! ([`run_matmul_bench`]), whole-model prefill/decode ([`forward`]) and
//! GPTQ by phase ([`gptq`]).

pub mod forward;
pub mod gptq;
mod matmul;

pub use matmul::*;
