//! Orchestrators that run whole models through the algorithms.

pub mod activations;
pub mod calib;
pub mod checkpoint;
pub mod gptq;
pub mod memory;
pub mod quantize;
pub mod quantize_job;
pub mod quantize_report;
