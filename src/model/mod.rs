//! One view of a model whatever file it came from: the architecture config
//! plus named tensors, loaded lazily.

pub mod arch;
pub mod forward;
pub mod sampler;
pub mod tokenizer;
pub mod view;

pub use arch::{ArchConfig, RopeScaling};
pub use tokenizer::Tokenizer;
pub use view::{ModelView, TensorInfo, TensorKind, TensorSource};
