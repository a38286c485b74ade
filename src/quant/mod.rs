//! Quantization: schemes, packed layouts and the algorithms (RTN, GPTQ).

pub mod gptq;
pub mod packed;
pub mod rtn;
pub mod scheme;

pub use packed::QuantizedTensor;
pub use scheme::{Granularity, QuantScheme};
