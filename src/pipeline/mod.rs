//! Orchestrators that run whole models through the algorithms.

pub mod calib;
pub mod gptq;
pub mod memory;
pub mod quantize;
