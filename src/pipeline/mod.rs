//! Orchestrators that run whole models through the algorithms.

pub mod quantize;
