//! Running a model with INT8 activations (`eval --int8-activations`): every
//! block linear stored as 8-bit symmetric codes takes its input quantized
//! per token to INT8 and multiplies in integers
//! ([`crate::encoding::act8`]); the output head stays f32, as W8A8
//! deployments keep it. CPU only for now.

use super::linear::Linear;
use super::LayerWeights;
use super::LlamaWeights;
use crate::encoding::EncodedTensor;
use crate::error::{Error, Result};
use crate::model::view::{ModelView, TensorKind};

/// How the forward pass feeds each linear's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InputMode {
    /// f32, as computed.
    #[default]
    F32,
    /// Rounded as llama.cpp's CPU backend rounds it for the tensor type
    /// ([`LlamaWeights::with_llama_cpp_activations`]).
    LlamaCpp,
    /// INT8 per token, integer matmul ([`LlamaWeights::with_int8_activations`]).
    Int8,
}

const BLOCK_LINEARS: [TensorKind; 7] = [
    TensorKind::AttnQ,
    TensorKind::AttnK,
    TensorKind::AttnV,
    TensorKind::AttnOutput,
    TensorKind::MlpGate,
    TensorKind::MlpUp,
    TensorKind::MlpDown,
];

impl LlamaWeights {
    /// Every block linear as [`Linear::Int8Input`]: an error naming the
    /// first that is not stored as 8-bit symmetric codes in groups of a
    /// multiple of 4 (quantize with `--bits 8 --sym`).
    pub fn with_int8_activations(mut self, view: &ModelView) -> Result<Self> {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for kind in BLOCK_LINEARS {
                let Some(l) = layer.linear_mut(kind) else {
                    continue;
                };
                let name = LayerWeights::tensor_name(view, i, kind).unwrap_or_default();
                let taken = std::mem::replace(
                    l,
                    Linear::Dense {
                        rows: 0,
                        cols: 0,
                        w: Vec::new(),
                    },
                );
                *l = match taken {
                    Linear::Packed(EncodedTensor::Affine(q))
                        if q.scheme.bits == 8
                            && q.scheme.symmetric
                            && q.scheme.group_len(q.cols).is_multiple_of(4) =>
                    {
                        Linear::Int8Input(q)
                    }
                    other => {
                        return Err(Error::Config(format!(
                            "--int8-activations multiplies INT8 activations with 8-bit symmetric \
                             weights; '{name}' in {} is {} (quantize with --bits 8 --sym)",
                            view.path().display(),
                            match &other {
                                Linear::Packed(e) => e.encoding().label(),
                                _ => "not quantized".into(),
                            }
                        )))
                    }
                };
            }
        }
        Ok(self)
    }
}
