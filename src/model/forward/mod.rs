//! Llama-family forward pass: the reference that quantized models are
//! measured against, the layer-at-a-time driver that calibration (GPTQ/GPTVQ)
//! uses to collect the inputs of each linear, and the engine behind `eval`
//! and `generate`.
//!
//! [`Forward`] is what callers use, whatever the device; [`CpuForward`] is the
//! f32 CPU implementation (dense weights, or packed ones through the CPU
//! dequant-matmul), [`GpuForward`] the same pass as WGSL kernels.

pub mod cpu;
pub mod gpu;
pub mod half_linear;
pub mod int8;
pub mod layer;
pub mod linear;
mod rewrite;
pub use crate::backend::cpu::ops;

pub use cpu::{CpuForward, KvCache};
pub use gpu::{GpuForward, GpuKvCache};
pub use int8::{open_static_int8, InputMode, InputRange};
pub use layer::DecoderLayer;
pub use linear::Linear;

use super::arch::{ArchConfig, RopeScaling};
use super::view::{ModelView, TensorKind};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// Where in a decoder layer a linear input was captured. Linears that read
/// the same activations share one site (and so one Hessian in GPTQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearSite {
    /// Normed hidden state read by q, k and v.
    AttnQkv,
    /// Attention output read by o_proj.
    AttnOutput,
    /// Normed hidden state read by gate and up.
    MlpGateUp,
    /// `silu(gate) * up`, read by down_proj.
    MlpDown,
}

impl LinearSite {
    /// Every site, in the order a layer runs them.
    pub const ALL: [LinearSite; 4] = [
        LinearSite::AttnQkv,
        LinearSite::AttnOutput,
        LinearSite::MlpGateUp,
        LinearSite::MlpDown,
    ];

    /// The linears that consume this input.
    pub fn kinds(self) -> &'static [TensorKind] {
        match self {
            LinearSite::AttnQkv => &[TensorKind::AttnQ, TensorKind::AttnK, TensorKind::AttnV],
            LinearSite::AttnOutput => &[TensorKind::AttnOutput],
            LinearSite::MlpGateUp => &[TensorKind::MlpGate, TensorKind::MlpUp],
            LinearSite::MlpDown => &[TensorKind::MlpDown],
        }
    }
}

/// The input activations of one or more linears, handed to the hook of
/// [`CpuForward::layer`] before the linears are applied.
pub struct LinearInput<'a> {
    pub layer: usize,
    pub site: LinearSite,
    /// Row-major `[seq, width]`.
    pub x: &'a [f32],
    pub seq: usize,
    /// Input features of the linears (`in` of their `[out, in]` weights).
    pub width: usize,
}

/// A model that turns token ids into next-token logits on some device.
pub trait Forward: Send + Sync {
    fn arch(&self) -> &ArchConfig;
    /// Where it runs, e.g. `cpu (2 threads)` or `vulkan: NVIDIA H100`.
    fn device(&self) -> String;
    /// Bytes of weights held for the run: what a pass reads (packed
    /// linears count [`crate::encoding::Encoding::resident_bytes`]).
    fn weight_bytes(&self) -> usize;
    /// Bytes of weights one decoding step reads (the embedding table only
    /// when it is also the head).
    fn step_bytes(&self) -> usize {
        self.weight_bytes()
    }
    /// Logits `[tokens.len(), vocab]` of one sequence starting at position 0.
    fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// An incremental decoder with a KV cache of `capacity` positions.
    fn decoder(&self, capacity: usize) -> Result<Box<dyn Decoder + '_>>;
}

/// A sequence being extended token by token, its keys and values cached.
pub trait Decoder {
    /// Appends `tokens` at positions `position()..` and returns the logits
    /// `[vocab]` of the last one.
    fn feed(&mut self, tokens: &[u32]) -> Result<Vec<f32>>;
    /// Tokens fed so far.
    fn position(&self) -> usize;
}

/// The weights of one decoder layer; linear weights are `[out, in]`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    /// q/k/v biases (Qwen2); `None` for architectures without them.
    pub qkv_bias: Option<QkvBias>,
    pub ffn_norm: Vec<f32>,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

impl LayerWeights {
    /// The weight of a block linear, for callers that swap in quantized copies.
    pub fn linear_mut(&mut self, kind: TensorKind) -> Option<&mut Linear> {
        match kind {
            TensorKind::AttnQ => Some(&mut self.q),
            TensorKind::AttnK => Some(&mut self.k),
            TensorKind::AttnV => Some(&mut self.v),
            TensorKind::AttnOutput => Some(&mut self.o),
            TensorKind::MlpGate => Some(&mut self.gate),
            TensorKind::MlpUp => Some(&mut self.up),
            TensorKind::MlpDown => Some(&mut self.down),
            _ => None,
        }
    }

    pub fn linear(&self, kind: TensorKind) -> Option<&Linear> {
        match kind {
            TensorKind::AttnQ => Some(&self.q),
            TensorKind::AttnK => Some(&self.k),
            TensorKind::AttnV => Some(&self.v),
            TensorKind::AttnOutput => Some(&self.o),
            TensorKind::MlpGate => Some(&self.gate),
            TensorKind::MlpUp => Some(&self.up),
            TensorKind::MlpDown => Some(&self.down),
            _ => None,
        }
    }

    /// The seven linears in execution order.
    pub fn linears(&self) -> [&Linear; 7] {
        [
            &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down,
        ]
    }
}

/// Biases added after the q, k and v projections.
#[derive(Clone, Debug)]
pub struct QkvBias {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

/// All weights of a Llama-family model: norms and embeddings in f32, linears
/// dense or packed as the file stores them.
#[derive(Clone, Debug)]
pub struct LlamaWeights {
    pub arch: ArchConfig,
    /// `[vocab, hidden]`.
    pub embed: Vec<f32>,
    pub layers: Vec<LayerWeights>,
    pub final_norm: Vec<f32>,
    /// `[vocab, hidden]`; `None` when the head is tied to `embed`.
    pub head: Option<Linear>,
    /// Per-frequency divisors of Llama 3.1 GGUF files (`rope_freqs.weight`).
    pub rope_freq_factors: Option<Vec<f32>>,
}

/// Tensor names of one naming convention.
struct Names {
    gguf: bool,
}

impl Names {
    fn of(view: &ModelView) -> Self {
        Names {
            gguf: view.tensors().iter().any(|t| t.name == "token_embd.weight"),
        }
    }

    fn global(&self, what: &str) -> String {
        let (g, h) = match what {
            "embed" => ("token_embd.weight", "model.embed_tokens.weight"),
            "norm" => ("output_norm.weight", "model.norm.weight"),
            _ => ("output.weight", "lm_head.weight"),
        };
        if self.gguf { g } else { h }.to_string()
    }

    fn layer(&self, i: usize, what: &str) -> String {
        self.layer_param(i, what, "weight")
    }

    /// `param` is `weight` or `bias`.
    fn layer_param(&self, i: usize, what: &str, param: &str) -> String {
        if self.gguf {
            format!("blk.{i}.{what}.{param}")
        } else {
            let hf = match what {
                "attn_norm" => "input_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_norm" => "post_attention_layernorm",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                _ => "mlp.down_proj",
            };
            format!("model.layers.{i}.{hf}.{param}")
        }
    }
}

/// Loads one tensor as f32 after checking its shape.
fn load(view: &ModelView, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let info = view.tensor(name)?;
    // A 1-D norm may be stored as [n] or [1, n]; compare element layout.
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    if squeeze(&info.shape) != squeeze(shape) {
        return Err(Error::format(
            view.path(),
            format!(
                "tensor '{name}' has shape {:?}, the config implies {shape:?}",
                info.shape
            ),
        ));
    }
    view.load_f32(name)
}

/// Loads a linear weight `[rows, cols]`, kept packed when the file stores it
/// packed (llmq-gpu outputs), else as dense f32.
fn load_linear(view: &ModelView, name: &str, rows: usize, cols: usize) -> Result<Linear> {
    let info = view.tensor(name)?;
    if info.shape != [rows, cols] {
        return Err(Error::format(
            view.path(),
            format!(
                "tensor '{name}' has shape {:?}, the config implies [{rows}, {cols}]",
                info.shape
            ),
        ));
    }
    match view.load_encoded(name)? {
        Some(q) => {
            q.validate(name)?;
            Ok(Linear::Packed(q))
        }
        None => Linear::dense(rows, cols, view.load_f32(name)?),
    }
}

impl LlamaWeights {
    /// RoPE inverse frequencies `[head_dim / 2]` with the model's scaling.
    pub fn rope_inv_freq(&self) -> Vec<f64> {
        rope_inv_freq(&self.arch, self.rope_freq_factors.as_deref())
    }

    /// Bytes of all weights as held (packed linears count their resident
    /// bytes, [`Linear::resident_bytes`]).
    pub fn bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.len() * 4;
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                f(&l.attn_norm)
                    + f(&l.ffn_norm)
                    + l.linears()
                        .iter()
                        .map(|w| w.resident_bytes())
                        .sum::<usize>()
            })
            .sum();
        f(&self.embed)
            + f(&self.final_norm)
            + layers
            + self.head.as_ref().map_or(0, Linear::resident_bytes)
    }
}

impl LlamaWeights {
    /// Bytes one decoding step reads: every weight but the embedding
    /// table (one row of it) unless the table is the head.
    pub fn step_bytes(&self) -> usize {
        let table = match self.head {
            Some(_) => self.embed.len() * 4,
            None => 0,
        };
        self.bytes().saturating_sub(table)
    }

    /// Reads every weight of the model, in either GGUF or Hugging Face naming.
    pub fn load(view: &ModelView) -> Result<Self> {
        let arch = view.arch().clone();
        check_arch(view.path().to_path_buf(), &arch)?;
        let names = Names::of(view);
        let (h, v) = (arch.hidden_size, arch.vocab_size);
        let embed = load(view, &names.global("embed"), &[v, h])?;
        let layers = (0..arch.num_layers)
            .map(|i| LayerWeights::load(view, i))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = load(view, &names.global("norm"), &[h])?;
        let head = match load_head(view)? {
            Some(head) => Some(head),
            None => tied_head(view, &names.global("embed"), &embed)?,
        };
        let rope_freq_factors = load_rope_freq_factors(view)?;
        Self {
            arch,
            embed,
            layers,
            final_norm,
            head,
            rope_freq_factors,
        }
        .with_stored_inputs(view)
    }
}

/// RoPE inverse frequencies `[head_dim / 2]` of `arch` with its scaling and,
/// when given, Llama 3.1's per-frequency divisors (`rope_freqs.weight`).
pub fn rope_inv_freq(arch: &ArchConfig, freq_factors: Option<&[f32]>) -> Vec<f64> {
    let mut f = ops::rope_inv_freq(arch.head_dim(), arch.rope_theta);
    if let Some(s) = &arch.rope_scaling {
        // Unsupported schemes are rejected when the weights load.
        let _ = s.apply(&mut f);
    }
    if let Some(factors) = freq_factors {
        for (f, d) in f.iter_mut().zip(factors) {
            *f /= *d as f64;
        }
    }
    f
}

/// The file's name of parameter `param` (`weight` or `bias`) of `what`
/// (`attn_norm`, `attn_v`, `ffn_up`, ...) in layer `i`.
pub fn layer_tensor_name(view: &ModelView, i: usize, what: &str, param: &str) -> String {
    Names::of(view).layer_param(i, what, param)
}

/// The name of a global tensor: `embed`, `norm` or `head`.
pub fn global_tensor_name(view: &ModelView, what: &str) -> String {
    Names::of(view).global(what)
}

/// The final norm weight `[hidden]`.
pub fn load_final_norm(view: &ModelView) -> Result<Vec<f32>> {
    load(
        view,
        &Names::of(view).global("norm"),
        &[view.arch().hidden_size],
    )
}

/// The output head, `None` when it is tied to the embeddings.
pub fn load_head(view: &ModelView) -> Result<Option<Linear>> {
    let arch = view.arch();
    let head_name = Names::of(view).global("head");
    let has_head = view.tensors().iter().any(|t| t.name == head_name);
    // Some tied checkpoints still ship lm_head; use it when present.
    if has_head {
        Ok(Some(load_linear(
            view,
            &head_name,
            arch.vocab_size,
            arch.hidden_size,
        )?))
    } else if arch.tied_embeddings {
        Ok(None)
    } else {
        Err(Error::MissingTensor {
            path: view.path().to_path_buf(),
            name: head_name,
        })
    }
}

/// A tied head as a linear of its own when the embedding table is stored
/// packed (a GGUF's Q8_0 `token_embd`, an llmq folder's quantized one) or
/// as F16 (what `quantize` writes by default): every decoded token reads
/// the whole table, and the packed or f16 GEMV reads a quarter or half of
/// the f32 bytes (the lookup keeps the f32 copy, one row per token).
/// `None` for other tables: the head then multiplies by the f32 table.
fn tied_head(view: &ModelView, embed: &str, table: &[f32]) -> Result<Option<Linear>> {
    let (v, h) = (view.arch().vocab_size, view.arch().hidden_size);
    let Some(q) = view.load_encoded(embed)? else {
        return Ok(match view.tensor(embed)?.dtype.as_str() {
            "F16" => half_linear::HalfWeights::exact(v, h, table).map(Linear::Half),
            _ => None,
        });
    };
    if (q.rows(), q.cols()) != (v, h) {
        return Err(Error::format(
            view.path(),
            format!(
                "tensor '{embed}' is [{}, {}], the config implies [{v}, {h}]",
                q.rows(),
                q.cols()
            ),
        ));
    }
    q.validate(embed)?;
    Ok(Some(Linear::Packed(q)))
}

/// Llama 3.1 GGUF `rope_freqs.weight`, when present.
pub fn load_rope_freq_factors(view: &ModelView) -> Result<Option<Vec<f32>>> {
    let freqs = "rope_freqs.weight";
    match view.tensors().iter().any(|t| t.name == freqs) {
        true => Ok(Some(load(view, freqs, &[view.arch().head_dim() / 2])?)),
        false => Ok(None),
    }
}

impl LayerWeights {
    /// Reads the weights of decoder layer `i` alone (GPTQ holds one layer
    /// at a time).
    pub fn load(view: &ModelView, i: usize) -> Result<Self> {
        let arch = view.arch();
        check_arch(view.path().to_path_buf(), arch)?;
        if i >= arch.num_layers {
            return Err(Error::Config(format!(
                "layer {i} out of range (model has {})",
                arch.num_layers
            )));
        }
        let names = Names::of(view);
        let (h, f) = (arch.hidden_size, arch.intermediate_size);
        let kv = arch.num_kv_heads * arch.head_dim();
        let l = |what: &str, shape: &[usize]| load(view, &names.layer(i, what), shape);
        let lin = |what: &str, r, c| load_linear(view, &names.layer(i, what), r, c);
        let bias = |what: &str, n: usize| -> Result<Option<Vec<f32>>> {
            let name = names.layer_param(i, what, "bias");
            match view.tensors().iter().any(|t| t.name == name) {
                true => load(view, &name, &[n]).map(Some),
                false => Ok(None),
            }
        };
        let qkv_bias = match (bias("attn_q", h)?, bias("attn_k", kv)?, bias("attn_v", kv)?) {
            (Some(q), Some(k), Some(v)) => Some(QkvBias { q, k, v }),
            (None, None, None) => None,
            _ => {
                return Err(Error::format(
                    view.path(),
                    format!("layer {i} has biases on some of q/k/v but not all"),
                ))
            }
        };
        Ok(LayerWeights {
            qkv_bias,
            attn_norm: l("attn_norm", &[h])?,
            q: lin("attn_q", h, h)?,
            k: lin("attn_k", kv, h)?,
            v: lin("attn_v", kv, h)?,
            o: lin("attn_output", h, h)?,
            ffn_norm: l("ffn_norm", &[h])?,
            gate: lin("ffn_gate", f, h)?,
            up: lin("ffn_up", f, h)?,
            down: lin("ffn_down", h, f)?,
        })
    }

    /// The file's name of the linear `kind` of layer `i`.
    pub fn tensor_name(view: &ModelView, i: usize, kind: TensorKind) -> Option<String> {
        let what = match kind {
            TensorKind::AttnQ => "attn_q",
            TensorKind::AttnK => "attn_k",
            TensorKind::AttnV => "attn_v",
            TensorKind::AttnOutput => "attn_output",
            TensorKind::MlpGate => "ffn_gate",
            TensorKind::MlpUp => "ffn_up",
            TensorKind::MlpDown => "ffn_down",
            _ => return None,
        };
        Some(Names::of(view).layer(i, what))
    }
}

/// Rejects configs the forward cannot run (zero or non-dividing heads).
fn check_arch(path: PathBuf, a: &ArchConfig) -> Result<()> {
    let bad = a.num_heads == 0
        || a.num_kv_heads == 0
        || !a.hidden_size.is_multiple_of(a.num_heads)
        || !a.num_heads.is_multiple_of(a.num_kv_heads)
        || !a.head_dim().is_multiple_of(2);
    if let Some(RopeScaling::Unsupported { name }) = &a.rope_scaling {
        return Err(Error::unsupported(
            path,
            format!("RoPE scaling '{name}' is not supported by the forward pass (supported: linear, llama3)"),
        ));
    }
    if bad {
        return Err(Error::unsupported(
            path,
            format!(
                "forward pass needs hidden ({}) divisible by heads ({}), heads by kv heads ({}), and an even head dim",
                a.hidden_size, a.num_heads, a.num_kv_heads
            ),
        ));
    }
    Ok(())
}

/// Opens the model at `path` and loads it for running on `device`
/// (`auto` takes a real GPU when there is one and otherwise the CPU, like
/// `quantize`; an explicit GPU backend takes whatever adapter it has,
/// lavapipe included).
pub fn open_forward(
    path: &std::path::Path,
    device: crate::backend::gpu::DeviceChoice,
    adapter: Option<&str>,
) -> Result<Box<dyn Forward>> {
    open_forward_as(path, device, adapter, InputMode::F32)
}

/// [`open_forward`] with each linear's input fed as `mode` says: rounded
/// as llama.cpp's CPU backend rounds it
/// ([`LlamaWeights::with_llama_cpp_activations`]) or quantized to INT8
/// ([`LlamaWeights::with_int8_activations`], either backend); the
/// rounding is CPU only.
pub fn open_forward_as(
    path: &std::path::Path,
    device: crate::backend::gpu::DeviceChoice,
    adapter: Option<&str>,
    mode: InputMode,
) -> Result<Box<dyn Forward>> {
    use crate::backend::gpu::{DeviceChoice, GpuContext};
    if device == DeviceChoice::Cpu && adapter.is_some() {
        return Err(Error::Config(
            "--adapter picks a GPU; it cannot be used with --device cpu".into(),
        ));
    }
    let view = ModelView::open(path)?;
    if mode == InputMode::LlamaCpp {
        if device != DeviceChoice::Cpu {
            return Err(Error::Config(
                "llama.cpp's activation rounding runs on the CPU backend: add --device cpu".into(),
            ));
        }
        let weights = LlamaWeights::load(&view)?.with_llama_cpp_activations(&view)?;
        return Ok(Box::new(CpuForward::new(weights)));
    }
    let weights = match mode {
        InputMode::Int8 => LlamaWeights::load(&view)?.with_int8_activations(&view)?,
        _ => LlamaWeights::load(&view)?,
    };
    if device == DeviceChoice::Cpu {
        return Ok(Box::new(CpuForward::new(weights)));
    }
    match GpuContext::new(device, adapter) {
        Ok(ctx) => {
            log::info!("forward on {}", ctx.adapter.short());
            Ok(Box::new(GpuForward::new(
                std::sync::Arc::new(ctx),
                weights,
            )?))
        }
        Err(e) if device == DeviceChoice::Auto && adapter.is_none() => {
            log::info!("no GPU adapter ({e}); running the forward pass on the CPU");
            Ok(Box::new(CpuForward::new(weights)))
        }
        Err(e) => Err(e),
    }
}
