//! The CPU forward: RMSNorm, RoPE, GQA causal attention, SwiGLU, with dense
//! or packed linears, batches of equal-length sequences, and a KV cache for
//! generation.

use super::ops;
use super::{Decoder, DecoderLayer, Forward, LayerWeights, LinearInput, LinearSite, LlamaWeights};
use crate::error::{Error, Result};
use crate::model::arch::ArchConfig;
use crate::model::view::{ModelView, TensorKind};

/// Runs a Llama-family model on the CPU.
pub struct CpuForward {
    pub weights: LlamaWeights,
    inv_freq: Vec<f64>,
}

/// Keys and values of every layer for the positions fed so far.
pub struct KvCache {
    /// Per layer: `[len, kv_heads·hd]` keys, then values.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(arch: &ArchConfig, capacity: usize) -> Self {
        let width = arch.num_kv_heads * arch.head_dim();
        let layer = || {
            (
                Vec::with_capacity(capacity * width),
                Vec::with_capacity(capacity * width),
            )
        };
        Self {
            layers: (0..arch.num_layers).map(|_| layer()).collect(),
            len: 0,
            capacity,
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a layer call gets its past keys/values: none (fresh sequences) or
/// each sequence's cache of this layer, all holding the same positions.
enum Past<'a> {
    Fresh,
    Cached(Vec<&'a mut (Vec<f32>, Vec<f32>)>, usize),
}

impl CpuForward {
    pub fn new(weights: LlamaWeights) -> Self {
        let inv_freq = weights.rope_inv_freq();
        Self { weights, inv_freq }
    }

    pub fn load(view: &ModelView) -> Result<Self> {
        Ok(Self::new(super::LlamaWeights::load(view)?))
    }

    /// Logits `[seq, vocab]` for every position of `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let seq = tokens.len();
        self.check_length(seq)?;
        let mut hidden = self.embed(tokens)?;
        for i in 0..self.weights.layers.len() {
            self.layer(i, &mut hidden, seq, &mut |_| {})?;
        }
        self.final_norm_and_head(&hidden)
    }

    /// Token embeddings `[tokens.len(), hidden]`; checks the ids. A batch of
    /// sequences is embedded by passing them concatenated.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let a = &self.weights.arch;
        if tokens.is_empty() {
            return Err(Error::Config(
                "forward pass needs at least one token".into(),
            ));
        }
        let h = a.hidden_size;
        let mut out = Vec::with_capacity(tokens.len() * h);
        for (pos, &t) in tokens.iter().enumerate() {
            if t as usize >= a.vocab_size {
                return Err(Error::Config(format!(
                    "token id {t} at position {pos} is outside the vocabulary ({} ids)",
                    a.vocab_size
                )));
            }
            let t = t as usize;
            out.extend_from_slice(&self.weights.embed[t * h..(t + 1) * h]);
        }
        Ok(out)
    }

    /// Applies decoder layer `i` in place to `hidden`: a batch of sequences of
    /// `seq` tokens each (positions `0..seq`), `[batch·seq, hidden]`. The hook
    /// sees the input of each linear (all sequences) before it is applied.
    pub fn layer(
        &self,
        i: usize,
        hidden: &mut [f32],
        seq: usize,
        hook: &mut dyn FnMut(LinearInput),
    ) -> Result<()> {
        let h = self.weights.arch.hidden_size;
        if seq == 0 || hidden.is_empty() || !hidden.len().is_multiple_of(seq * h) {
            return Err(Error::Config(format!(
                "hidden state has {} values, expected a multiple of seq {seq} x hidden {h}",
                hidden.len()
            )));
        }
        self.layer_with(i, hidden, seq, Past::Fresh, hook)
    }

    fn layer_weights(&self, i: usize) -> Result<&LayerWeights> {
        self.weights.layers.get(i).ok_or_else(|| {
            Error::Config(format!(
                "layer {i} out of range (model has {})",
                self.weights.layers.len()
            ))
        })
    }

    fn check_length(&self, end: usize) -> Result<()> {
        let ctx = self.weights.arch.context_length;
        if end > ctx {
            return Err(Error::Config(format!(
                "{end} tokens exceed the model's context length {ctx}"
            )));
        }
        Ok(())
    }

    fn layer_with(
        &self,
        i: usize,
        hidden: &mut [f32],
        seq: usize,
        mut past: Past,
        hook: &mut dyn FnMut(LinearInput),
    ) -> Result<()> {
        let a = &self.weights.arch;
        let lw = self.layer_weights(i)?;
        let (h, f) = (a.hidden_size, a.intermediate_size);
        let rows = hidden.len() / h;
        let start = match &past {
            Past::Fresh => 0,
            Past::Cached(_, start) => *start,
        };
        self.check_length(start + seq)?;
        let mut call = |site, x: &[f32], width| {
            hook(LinearInput {
                layer: i,
                site,
                x,
                seq: rows,
                width,
            })
        };

        let layer = DecoderLayer {
            arch: a,
            weights: lw,
            inv_freq: &self.inv_freq,
        };
        let mut linear = |kind: TensorKind, x: &[f32]| {
            let w = lw.linear(kind).ok_or_else(|| {
                Error::Config(format!("layer {i} has no {} linear", kind.label()))
            })?;
            w.apply(x, x.len() / w.cols())
        };

        // Attention block: projections over all rows, attention per sequence.
        let x = layer.attn_input(hidden);
        call(LinearSite::AttnQkv, &x, h);
        let [q, k, v] = layer.qkv(&x, seq, start, &mut linear)?;
        let shape = layer.attn_shape();
        let (qw, kvw) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let mut attn = Vec::with_capacity(rows * qw);
        for b in 0..rows / seq {
            let qb = &q[b * seq * qw..][..seq * qw];
            let kb = &k[b * seq * kvw..][..seq * kvw];
            let vb = &v[b * seq * kvw..][..seq * kvw];
            let out = match &mut past {
                Past::Fresh => ops::attention(qb, kb, vb, seq, 0, shape),
                Past::Cached(kvs, _) => {
                    let kv = &mut kvs[b];
                    kv.0.extend_from_slice(kb);
                    kv.1.extend_from_slice(vb);
                    ops::attention(qb, &kv.0, &kv.1, seq, start, shape)
                }
            };
            attn.extend_from_slice(&out);
        }
        call(LinearSite::AttnOutput, &attn, qw);
        layer.add_attn_output(hidden, &attn, &mut linear)?;

        // SwiGLU MLP.
        let x = layer.mlp_input(hidden);
        call(LinearSite::MlpGateUp, &x, h);
        let g = layer.mlp_activation(&x, &mut linear)?;
        call(LinearSite::MlpDown, &g, f);
        layer.add_mlp_output(hidden, &g, &mut linear)?;
        Ok(())
    }

    /// Final RMSNorm and output head: logits `[rows, vocab]`.
    pub fn final_norm_and_head(&self, hidden: &[f32]) -> Result<Vec<f32>> {
        let a = &self.weights.arch;
        let h = a.hidden_size;
        if hidden.is_empty() || !hidden.len().is_multiple_of(h) {
            return Err(Error::Config(format!(
                "hidden state has {} values, not a multiple of hidden {h}",
                hidden.len()
            )));
        }
        let rows = hidden.len() / h;
        let x = ops::rms_norm(hidden, &self.weights.final_norm, a.rms_norm_eps);
        match &self.weights.head {
            Some(head) => head.apply(&x, rows),
            None => Ok(ops::matmul_t(
                &x,
                &self.weights.embed,
                rows,
                h,
                a.vocab_size,
            )),
        }
    }

    /// Feeds `tokens` after the cached positions; logits of the last token.
    pub fn feed(&self, cache: &mut KvCache, tokens: &[u32]) -> Result<Vec<f32>> {
        let start = cache.len;
        if start + tokens.len() > cache.capacity {
            return Err(Error::Config(format!(
                "KV cache holds {} positions; {} cached + {} new do not fit",
                cache.capacity,
                start,
                tokens.len()
            )));
        }
        self.check_length(start + tokens.len())?;
        let mut hidden = self.embed(tokens)?;
        let seq = tokens.len();
        for (i, kv) in cache.layers.iter_mut().enumerate() {
            self.layer_with(
                i,
                &mut hidden,
                seq,
                Past::Cached(vec![kv], start),
                &mut |_| {},
            )?;
        }
        cache.len += seq;
        let h = self.weights.arch.hidden_size;
        self.final_norm_and_head(&hidden[(seq - 1) * h..])
    }

    /// Feeds one token to each of several sequences in lockstep (`tokens[b]`
    /// to `caches[b]`, all at the same position): one batched pass, so the
    /// linears run as matrix products. Logits `[caches.len(), vocab]`.
    pub fn feed_batch(&self, caches: &mut [KvCache], tokens: &[u32]) -> Result<Vec<f32>> {
        let start = caches.first().map_or(0, |c| c.len);
        if tokens.len() != caches.len()
            || caches
                .iter()
                .any(|c| c.len != start || start + 1 > c.capacity)
        {
            return Err(Error::Config(format!(
                "batched decoding needs one token per sequence, all at the same position with \
                 room for one more ({} tokens, {} caches)",
                tokens.len(),
                caches.len()
            )));
        }
        self.check_length(start + 1)?;
        let mut hidden = self.embed(tokens)?;
        for i in 0..self.weights.layers.len() {
            let kvs = caches.iter_mut().map(|c| &mut c.layers[i]).collect();
            self.layer_with(i, &mut hidden, 1, Past::Cached(kvs, start), &mut |_| {})?;
        }
        caches.iter_mut().for_each(|c| c.len += 1);
        self.final_norm_and_head(&hidden)
    }
}

impl Forward for CpuForward {
    fn arch(&self) -> &ArchConfig {
        &self.weights.arch
    }
    fn device(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }
    fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }
    fn step_bytes(&self) -> usize {
        self.weights.step_bytes()
    }
    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        CpuForward::logits(self, tokens)
    }
    fn decoder(&self, capacity: usize) -> Result<Box<dyn Decoder + '_>> {
        self.check_length(capacity)?;
        Ok(Box::new(CpuDecoder {
            model: self,
            cache: KvCache::new(&self.weights.arch, capacity),
        }))
    }
}

struct CpuDecoder<'a> {
    model: &'a CpuForward,
    cache: KvCache,
}

impl Decoder for CpuDecoder<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.feed(&mut self.cache, tokens)
    }
    fn position(&self) -> usize {
        self.cache.len
    }
}
