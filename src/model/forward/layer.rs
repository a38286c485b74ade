//! One Llama decoder layer as steps over sequences of `seq` tokens: the
//! math the CPU forward ([`super::CpuForward`]) and GPTQ's calibration
//! forward (`pipeline::gptq`) share. The caller supplies the linears
//! (`x · Wᵀ` wherever the weights live: host, packed, resident on a GPU,
//! just quantized) and runs attention itself (the CPU forward with its KV
//! cache, calibration on the backend):
//!
//! ```text
//! x = attn_input(h); [q, k, v] = qkv(x)            // + biases, RoPE
//! a = attention(q, k, v);  add_attn_output(h, a)   // h += o(a)
//! x = mlp_input(h); g = mlp_activation(x)          // silu(gate(x))·up(x)
//! add_mlp_output(h, g)                             // h += down(g)
//! ```

use super::LayerWeights;
use crate::backend::cpu::ops::{self, AttnShape, RopeTable};
use crate::error::Result;
use crate::model::arch::ArchConfig;
use crate::model::view::TensorKind;

/// `x · Wᵀ` of the layer's linear `kind` for `x` `[rows, in]`: `[rows, out]`.
pub type ApplyLinear<'f> = dyn FnMut(TensorKind, &[f32]) -> Result<Vec<f32>> + 'f;

/// The norms, biases and rotary embedding of one decoder layer (the
/// linears come from the caller, see the module documentation).
#[derive(Clone, Copy)]
pub struct DecoderLayer<'a> {
    pub arch: &'a ArchConfig,
    pub weights: &'a LayerWeights,
    /// RoPE inverse frequencies `[head_dim / 2]`.
    pub inv_freq: &'a [f64],
}

impl DecoderLayer<'_> {
    pub fn attn_shape(&self) -> AttnShape {
        AttnShape {
            heads: self.arch.num_heads,
            kv_heads: self.arch.num_kv_heads,
            head_dim: self.arch.head_dim(),
        }
    }

    /// The input of q, k and v: RMSNorm of the hidden state.
    pub fn attn_input(&self, hidden: &[f32]) -> Vec<f32> {
        ops::rms_norm(hidden, &self.weights.attn_norm, self.arch.rms_norm_eps)
    }

    /// q, k and v of `x`, sequences of `seq` tokens at positions
    /// `start..start + seq`: projected, biases added, RoPE applied.
    pub fn qkv(
        &self,
        x: &[f32],
        seq: usize,
        start: usize,
        linear: &mut ApplyLinear,
    ) -> Result<[Vec<f32>; 3]> {
        let mut q = linear(TensorKind::AttnQ, x)?;
        let mut k = linear(TensorKind::AttnK, x)?;
        let mut v = linear(TensorKind::AttnV, x)?;
        if let Some(b) = &self.weights.qkv_bias {
            ops::add_bias(&mut q, &b.q);
            ops::add_bias(&mut k, &b.k);
            ops::add_bias(&mut v, &b.v);
        }
        let s = self.attn_shape();
        let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
        let rope = RopeTable::new(start, seq, self.inv_freq);
        let adjacent = self.arch.rope_adjacent_pairs;
        for (qb, kb) in q.chunks_mut(seq * qw).zip(k.chunks_mut(seq * kvw)) {
            rope.apply(qb, s.heads, adjacent);
            rope.apply(kb, s.kv_heads, adjacent);
        }
        Ok([q, k, v])
    }

    /// `hidden += o(attn)`.
    pub fn add_attn_output(
        &self,
        hidden: &mut [f32],
        attn: &[f32],
        linear: &mut ApplyLinear,
    ) -> Result<()> {
        let y = linear(TensorKind::AttnOutput, attn)?;
        ops::add_in_place(hidden, &y);
        Ok(())
    }

    /// The input of gate and up: RMSNorm of the hidden state after attention.
    pub fn mlp_input(&self, hidden: &[f32]) -> Vec<f32> {
        ops::rms_norm(hidden, &self.weights.ffn_norm, self.arch.rms_norm_eps)
    }

    /// The input of down: `silu(gate(x))·up(x)`.
    pub fn mlp_activation(&self, x: &[f32], linear: &mut ApplyLinear) -> Result<Vec<f32>> {
        let mut g = linear(TensorKind::MlpGate, x)?;
        let u = linear(TensorKind::MlpUp, x)?;
        ops::silu_mul(&mut g, &u);
        Ok(g)
    }

    /// `hidden += down(act)`.
    pub fn add_mlp_output(
        &self,
        hidden: &mut [f32],
        act: &[f32],
        linear: &mut ApplyLinear,
    ) -> Result<()> {
        let y = linear(TensorKind::MlpDown, act)?;
        ops::add_in_place(hidden, &y);
        Ok(())
    }
}
