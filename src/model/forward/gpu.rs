//! The GPU forward: the pass of [`super::CpuForward`] as WGSL kernels through
//! wgpu (RMSNorm, RoPE, attention, SwiGLU, residual adds in
//! `backend::gpu::{elementwise, rope, attention}`; linears through the dense
//! or packed matmul). Every weight is uploaded once and stays resident, packed
//! linears packed; the token embedding stays on the host and only the rows a
//! call needs go up. Each decoder layer is one command encoder and one
//! submission; only logits come back.
//!
//! Keys and values live in a [`GpuKvCache`] on the GPU. [`Forward::logits`]
//! runs through a cache sized to the sequence, so the full pass and the
//! decoder share one code path; long inputs go through in chunks of rows
//! whose activations fit one storage binding.

use super::ops::{AttnShape, RopeTable};
use super::{Decoder, Forward, Linear, LlamaWeights};
use crate::backend::gpu::attention::{self, AttnRows, MAX_HEAD_DIM};
use crate::backend::gpu::matmul::{encode_matmul, GpuQuantWeights};
use crate::backend::gpu::matmul_dense::{encode_dense, GpuDenseWeights};
use crate::backend::gpu::matmul_i8::{encode_matmul_i8, encode_quantize_i8};
use crate::backend::gpu::rope::{encode_rope, GpuRopeTable};
use crate::backend::gpu::{elementwise, f32_bytes, row_chunks, GpuBuffer, GpuContext};
use crate::error::{Error, Result};
use crate::model::arch::ArchConfig;
use crate::model::view::ModelView;
use std::sync::Arc;

/// A linear weight on the GPU, as the file stored it.
enum GpuLinear {
    Dense(GpuDenseWeights),
    Packed(GpuQuantWeights),
    /// 8-bit symmetric or 4-bit codes taking INT8 inputs (W8A8, W4A8): the input is
    /// quantized on the GPU (static scale, or per token) and multiplied
    /// in integers.
    Int8(GpuQuantWeights, Option<f32>),
}

impl GpuLinear {
    fn upload(ctx: &GpuContext, l: &Linear) -> Result<Self> {
        Ok(match l {
            Linear::Dense { rows, cols, w } => {
                GpuLinear::Dense(GpuDenseWeights::upload(ctx, w, *rows, *cols)?)
            }
            Linear::Packed(q) => GpuLinear::Packed(GpuQuantWeights::upload_encoded(ctx, q)?),
            Linear::Half(h) => GpuLinear::Dense(GpuDenseWeights::upload(
                ctx,
                &h.dense_weights(),
                h.rows,
                h.cols,
            )?),
            Linear::Int8Input(q, scale) => {
                GpuLinear::Int8(GpuQuantWeights::upload(ctx, q)?, *scale)
            }
            Linear::Observed(..) => {
                return Err(Error::Config(
                    "activation histograms are gathered on the CPU backend (--device cpu)".into(),
                ))
            }
            Linear::RoundedInput(..) => {
                return Err(Error::Config(
                    "llama.cpp's activation rounding runs on the CPU backend (--device cpu)".into(),
                ))
            }
        })
    }

    /// Records `y = x · Wᵀ` for `tokens` rows.
    fn encode(
        &self,
        ctx: &GpuContext,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        tokens: usize,
    ) -> Result<()> {
        match self {
            GpuLinear::Dense(w) => encode_dense(ctx, encoder, w, x, y, tokens),
            GpuLinear::Packed(w) => encode_matmul(ctx, encoder, w, x, y, tokens),
            GpuLinear::Int8(w, scale) => {
                // Scratch for this call; wgpu keeps it alive until the
                // submission completes.
                let xq = ctx.storage("int8.xq", (tokens * w.cols) as u64)?;
                let xs = ctx.storage("int8.xs", (tokens * 4) as u64)?;
                encode_quantize_i8(ctx, encoder, x, &xq, &xs, tokens, w.cols, *scale)?;
                encode_matmul_i8(ctx, encoder, w, &xq, &xs, y, tokens)
            }
        }
    }
}

struct GpuLayer {
    attn_norm: GpuBuffer,
    q: GpuLinear,
    k: GpuLinear,
    v: GpuLinear,
    o: GpuLinear,
    /// q, k, v biases (Qwen2).
    qkv_bias: Option<[GpuBuffer; 3]>,
    ffn_norm: GpuBuffer,
    gate: GpuLinear,
    up: GpuLinear,
    down: GpuLinear,
}

/// Runs a Llama-family model on a wgpu device.
pub struct GpuForward {
    ctx: Arc<GpuContext>,
    arch: ArchConfig,
    /// `[vocab, hidden]`, on the host: a call uploads only its tokens' rows.
    embed: Vec<f32>,
    layers: Vec<GpuLayer>,
    final_norm: GpuBuffer,
    /// The output head, or the embedding uploaded as one when tied.
    head: GpuLinear,
    inv_freq: Vec<f64>,
    weight_bytes: usize,
    /// [`Forward::step_bytes`].
    step_bytes: usize,
}

/// Keys and values of every layer on the GPU: per layer two
/// `[capacity, kv_heads · hd]` buffers, filled up to `len`.
pub struct GpuKvCache {
    layers: Vec<(GpuBuffer, GpuBuffer)>,
    len: usize,
    capacity: usize,
}

impl GpuKvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Which logits a chunk of rows returns.
#[derive(Clone, Copy, PartialEq)]
enum Want {
    None,
    Last,
    All,
}

/// Errors naming the tensor when a weight's shape disagrees with the config.
fn check_shapes(w: &LlamaWeights) -> Result<()> {
    let a = &w.arch;
    let (h, f, v) = (a.hidden_size, a.intermediate_size, a.vocab_size);
    let kv = a.num_kv_heads * a.head_dim();
    let bad = |what: String| Err(Error::Config(format!("GPU forward: {what}")));
    if a.head_dim() > MAX_HEAD_DIM || a.num_heads == 0 || a.num_kv_heads == 0 {
        return bad(format!(
            "head dim {} (at most {MAX_HEAD_DIM}) with {} heads, {} kv heads",
            a.head_dim(),
            a.num_heads,
            a.num_kv_heads
        ));
    }
    if w.embed.len() != v * h || w.final_norm.len() != h || w.layers.len() != a.num_layers {
        return bad(format!(
            "embedding of {} values, final norm of {}, {} layers; the config implies {v} x {h}, {h}, {}",
            w.embed.len(),
            w.final_norm.len(),
            w.layers.len(),
            a.num_layers
        ));
    }
    for (i, l) in w.layers.iter().enumerate() {
        let want = [(h, h), (kv, h), (kv, h), (h, h), (f, h), (f, h), (h, f)];
        for (j, (lin, (r, c))) in l.linears().iter().zip(want).enumerate() {
            if (lin.rows(), lin.cols()) != (r, c) {
                return bad(format!(
                    "layer {i} linear {j} is [{}, {}], the config implies [{r}, {c}]",
                    lin.rows(),
                    lin.cols()
                ));
            }
        }
        if l.attn_norm.len() != h || l.ffn_norm.len() != h {
            return bad(format!("layer {i} norms are not {h} wide"));
        }
    }
    if let Some(head) = &w.head {
        if (head.rows(), head.cols()) != (v, h) {
            return bad(format!(
                "output head is [{}, {}], the config implies [{v}, {h}]",
                head.rows(),
                head.cols()
            ));
        }
    }
    Ok(())
}

impl GpuForward {
    /// Uploads every weight to `ctx`'s device.
    pub fn new(ctx: Arc<GpuContext>, weights: LlamaWeights) -> Result<Self> {
        check_shapes(&weights)?;
        let c = &*ctx;
        let norm = |label: &str, w: &[f32]| c.upload(label, f32_bytes(w));
        let lin = |l: &Linear| GpuLinear::upload(c, l);
        let layers = weights
            .layers
            .iter()
            .map(|l| {
                Ok(GpuLayer {
                    attn_norm: norm("attn_norm", &l.attn_norm)?,
                    q: lin(&l.q)?,
                    k: lin(&l.k)?,
                    v: lin(&l.v)?,
                    o: lin(&l.o)?,
                    qkv_bias: match &l.qkv_bias {
                        Some(b) => Some([
                            norm("q_bias", &b.q)?,
                            norm("k_bias", &b.k)?,
                            norm("v_bias", &b.v)?,
                        ]),
                        None => None,
                    },
                    ffn_norm: norm("ffn_norm", &l.ffn_norm)?,
                    gate: lin(&l.gate)?,
                    up: lin(&l.up)?,
                    down: lin(&l.down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let a = &weights.arch;
        let head = match &weights.head {
            Some(h) => lin(h)?,
            None => GpuLinear::Dense(GpuDenseWeights::upload(
                c,
                &weights.embed,
                a.vocab_size,
                a.hidden_size,
            )?),
        };
        let final_norm = norm("final_norm", &weights.final_norm)?;
        let inv_freq = weights.rope_inv_freq();
        let (weight_bytes, step_bytes) = (weights.bytes(), weights.step_bytes());
        Ok(Self {
            arch: weights.arch,
            embed: weights.embed,
            layers,
            final_norm,
            head,
            inv_freq,
            weight_bytes,
            step_bytes,
            ctx,
        })
    }

    /// Reads the model at `view` and uploads it.
    pub fn load(ctx: Arc<GpuContext>, view: &ModelView) -> Result<Self> {
        Self::new(ctx, LlamaWeights::load(view)?)
    }

    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// An empty KV cache of `capacity` positions on the device.
    pub fn new_cache(&self, capacity: usize) -> Result<GpuKvCache> {
        let bytes = (capacity * self.arch.num_kv_heads * self.arch.head_dim() * 4) as u64;
        if bytes > self.ctx.max_binding() {
            return Err(Error::Config(format!(
                "a KV cache of {capacity} positions needs {bytes} bytes of keys per layer, more \
                 than one storage binding ({} bytes) of {}; use a smaller capacity",
                self.ctx.max_binding(),
                self.ctx.adapter.short()
            )));
        }
        let layers = (0..self.layers.len())
            .map(|_| {
                Ok((
                    self.ctx.storage("kv.k", bytes)?,
                    self.ctx.storage("kv.v", bytes)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(GpuKvCache {
            layers,
            len: 0,
            capacity,
        })
    }

    fn check_length(&self, end: usize) -> Result<()> {
        let ctx = self.arch.context_length;
        if end > ctx {
            return Err(Error::Config(format!(
                "{end} tokens exceed the model's context length {ctx}"
            )));
        }
        Ok(())
    }

    /// Token embeddings `[tokens.len(), hidden]` gathered on the host; checks the ids.
    fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let (h, vocab) = (self.arch.hidden_size, self.arch.vocab_size);
        if tokens.is_empty() {
            return Err(Error::Config(
                "forward pass needs at least one token".into(),
            ));
        }
        let mut out = Vec::with_capacity(tokens.len() * h);
        for (pos, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            if t >= vocab {
                return Err(Error::Config(format!(
                    "token id {t} at position {pos} is outside the vocabulary ({vocab} ids)"
                )));
            }
            out.extend_from_slice(&self.embed[t * h..(t + 1) * h]);
        }
        Ok(out)
    }

    /// Appends `tokens` to `cache`; returns the logits of every new position
    /// (`all`, `[tokens.len(), vocab]`) or of the last one (`[vocab]`).
    pub fn feed(&self, cache: &mut GpuKvCache, tokens: &[u32], all: bool) -> Result<Vec<f32>> {
        let x = self.embed(tokens)?;
        let kv_bytes = (cache.capacity * self.arch.num_kv_heads * self.arch.head_dim() * 4) as u64;
        let fits = |b: &wgpu::Buffer| b.size() >= kv_bytes;
        if cache.layers.len() != self.layers.len()
            || !cache.layers.iter().all(|(k, v)| fits(k) && fits(v))
        {
            return Err(Error::Config(
                "this KV cache was made for another model; use the model's own new_cache".into(),
            ));
        }
        let (start, seq) = (cache.len, tokens.len());
        if start + seq > cache.capacity {
            return Err(Error::Config(format!(
                "KV cache holds {} positions; {start} cached + {seq} new do not fit",
                cache.capacity
            )));
        }
        self.check_length(start + seq)?;
        let a = &self.arch;
        let mut widest = a.hidden_size.max(a.intermediate_size);
        if all {
            widest = widest.max(a.vocab_size);
        }
        let h = a.hidden_size;
        let mut out = Vec::new();
        for r in row_chunks(&self.ctx, seq, widest * 4)? {
            let want = match (all, r.end == seq) {
                (true, _) => Want::All,
                (false, true) => Want::Last,
                (false, false) => Want::None,
            };
            out.extend(self.chunk(cache, &x[r.start * h..r.end * h], r.len(), want)?);
        }
        Ok(out)
    }

    /// Runs `n` rows at positions `cache.len..` through every layer and the head.
    fn chunk(&self, cache: &mut GpuKvCache, x: &[f32], n: usize, want: Want) -> Result<Vec<f32>> {
        let (ctx, a) = (&*self.ctx, &self.arch);
        let (h, f, eps) = (a.hidden_size, a.intermediate_size, a.rms_norm_eps);
        let shape = AttnShape {
            heads: a.num_heads,
            kv_heads: a.num_kv_heads,
            head_dim: a.head_dim(),
        };
        let (qw, kvw) = (
            shape.heads * shape.head_dim,
            shape.kv_heads * shape.head_dim,
        );
        let start = cache.len;
        let hidden = ctx.upload("forward.hidden", f32_bytes(x))?;
        let table = GpuRopeTable::upload(ctx, &RopeTable::new(start, n, &self.inv_freq))?;
        let buf = |label: &str, width: usize| ctx.storage(label, (n * width * 4) as u64);
        let (xn, tmp) = (buf("forward.normed", h)?, buf("forward.tmp", h)?);
        let (q, att) = (buf("forward.q", qw)?, buf("forward.attn", qw)?);
        let (k, v) = (buf("forward.k", kvw)?, buf("forward.v", kvw)?);
        let (g, u) = (buf("forward.gate", f)?, buf("forward.up", f)?);
        let rows = AttnRows {
            batch: 1,
            seq: n,
            start,
            kv_rows: cache.capacity,
        };
        let (kv_offset, kv_bytes) = ((start * kvw * 4) as u64, (n * kvw * 4) as u64);
        for (l, (kc, vc)) in self.layers.iter().zip(&cache.layers) {
            let mut enc = ctx.encoder();
            let e = &mut enc;
            elementwise::encode_rms_norm(ctx, e, &hidden, &l.attn_norm, &xn, n, h, eps)?;
            l.q.encode(ctx, e, &xn, &q, n)?;
            l.k.encode(ctx, e, &xn, &k, n)?;
            l.v.encode(ctx, e, &xn, &v, n)?;
            if let Some([bq, bk, bv]) = &l.qkv_bias {
                elementwise::encode_add_bias(ctx, e, &q, bq, n, qw)?;
                elementwise::encode_add_bias(ctx, e, &k, bk, n, kvw)?;
                elementwise::encode_add_bias(ctx, e, &v, bv, n, kvw)?;
            }
            encode_rope(ctx, e, &table, &q, n, n, shape.heads, a.rope_adjacent_pairs)?;
            encode_rope(
                ctx,
                e,
                &table,
                &k,
                n,
                n,
                shape.kv_heads,
                a.rope_adjacent_pairs,
            )?;
            e.copy_buffer_to_buffer(&k, 0, kc, kv_offset, kv_bytes);
            e.copy_buffer_to_buffer(&v, 0, vc, kv_offset, kv_bytes);
            attention::encode_attention(ctx, e, &q, kc, vc, &att, shape, rows)?;
            l.o.encode(ctx, e, &att, &tmp, n)?;
            elementwise::encode_add(ctx, e, &hidden, &tmp, n * h)?;
            elementwise::encode_rms_norm(ctx, e, &hidden, &l.ffn_norm, &xn, n, h, eps)?;
            l.gate.encode(ctx, e, &xn, &g, n)?;
            l.up.encode(ctx, e, &xn, &u, n)?;
            elementwise::encode_silu_mul(ctx, e, &g, &u, n * f)?;
            l.down.encode(ctx, e, &g, &tmp, n)?;
            elementwise::encode_add(ctx, e, &hidden, &tmp, n * h)?;
            ctx.submit_and_wait(enc)?;
        }
        cache.len += n;
        if want == Want::None {
            return Ok(Vec::new());
        }
        let vocab = a.vocab_size;
        let mut enc = ctx.encoder();
        elementwise::encode_rms_norm(ctx, &mut enc, &hidden, &self.final_norm, &xn, n, h, eps)?;
        let (x_head, m) = if want == Want::Last {
            let last = ctx.storage("forward.last", (h * 4) as u64)?;
            enc.copy_buffer_to_buffer(&xn, ((n - 1) * h * 4) as u64, &last, 0, (h * 4) as u64);
            (last, 1)
        } else {
            (xn, n)
        };
        let logits = ctx.storage("forward.logits", (m * vocab * 4) as u64)?;
        self.head.encode(ctx, &mut enc, &x_head, &logits, m)?;
        ctx.submit_and_wait(enc)?;
        ctx.read(&logits, m * vocab)
    }
}

impl Forward for GpuForward {
    fn arch(&self) -> &ArchConfig {
        &self.arch
    }
    fn device(&self) -> String {
        format!("{}: {}", self.ctx.adapter.backend, self.ctx.adapter.name)
    }
    fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    fn step_bytes(&self) -> usize {
        self.step_bytes
    }
    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.check_length(tokens.len())?;
        let mut cache = self.new_cache(tokens.len())?;
        self.feed(&mut cache, tokens, true)
    }
    fn decoder(&self, capacity: usize) -> Result<Box<dyn Decoder + '_>> {
        self.check_length(capacity)?;
        Ok(Box::new(GpuDecoder {
            model: self,
            cache: self.new_cache(capacity)?,
        }))
    }
}

struct GpuDecoder<'a> {
    model: &'a GpuForward,
    cache: GpuKvCache,
}

impl Decoder for GpuDecoder<'_> {
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.model.feed(&mut self.cache, tokens, false)
    }
    fn position(&self) -> usize {
        self.cache.len
    }
}
