//! llmq-gpu: quantize large language models on any GPU through wgpu/WGSL,
//! with a CPU reference path for every kernel.
//!
//! ```no_run
//! use llmq_gpu::{CancelToken, DeviceChoice, Granularity, QuantScheme, QuantizeConfig};
//! let scheme = QuantScheme::new(4, false, Granularity::Group(128))?;
//! let config = QuantizeConfig::new("model.gguf", "model-w4g128", scheme).device(DeviceChoice::Auto);
//! let report = llmq_gpu::quantize_model(&config, &mut |p| println!("{p:?}"), &CancelToken::default())?;
//! println!("{} tensors quantized, {:.2} bits/weight", report.quantized_tensors, report.bits_per_weight);
//! # Ok::<(), llmq_gpu::Error>(())
//! ```

pub mod backend;
pub mod bench;
pub mod cancel;
pub mod encoding;
pub mod error;
pub mod eval;
pub mod formats;
pub mod gemm;
pub mod generate;
pub mod model;
pub mod pipeline;
pub mod quant;

pub use backend::gpu::DeviceChoice;
pub use encoding::{Encoding, Granularity, QuantScheme, QuantizedTensor};
pub use error::{Error, Result};
pub use model::ModelView;
pub use pipeline::quantize::{
    quantize_model, quantize_model_with, CancelToken, JobResult, Method, Progress, QuantizeConfig,
    QuantizeJob, QuantizeReport,
};
