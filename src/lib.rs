//! llmq-gpu: quantize large language models on any GPU through wgpu/WGSL,
//! with a CPU reference path for every kernel.
//!
//! ```no_run
//! use llmq_gpu::{DeviceChoice, QuantizeConfig, QuantScheme, Granularity};
//! let scheme = QuantScheme::new(4, false, Granularity::Group(128)).unwrap();
//! let config = QuantizeConfig::new("model.gguf", "model-w4g128", scheme)
//!     .device(DeviceChoice::Auto);
//! let report = llmq_gpu::quantize_model(&config, &mut |p| println!("{p:?}"), &Default::default()).unwrap();
//! println!("{} tensors quantized", report.quantized_tensors);
//! ```

pub mod backend;
pub mod bench;
pub mod error;
pub mod formats;
pub mod model;
pub mod quant;
