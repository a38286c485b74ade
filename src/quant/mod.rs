//! Quantization algorithms (RTN, GPTQ), written once over
//! [`crate::backend::Backend`]; what they produce is an encoding of
//! [`crate::encoding`].

pub mod gptq;
pub mod gptvq;
pub mod range;
pub mod rtn;
pub mod smooth;

pub use crate::encoding::{Granularity, QuantScheme, QuantizedTensor};
