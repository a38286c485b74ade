//! Benchmarks that print figures and ratios to the physical limits measured
//! on the same device in the same run: dequant-matmul kernels
//! ([`run_matmul_bench`]) and whole-model prefill/decode ([`forward`]).

pub mod forward;
mod matmul;

pub use matmul::*;
