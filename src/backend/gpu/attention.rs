//! Thin wrapper over `shaders/attention.wgsl`: causal grouped-query attention
//! with softmax, for a batch of fresh sequences or one sequence over its KV
//! cache (see the shader for the online-softmax tiling).

use super::context::{Binding, GpuContext};
use super::{check_buffer, f32_bytes};
use crate::backend::cpu::ops::AttnShape;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/attention.wgsl");
/// Must match `MAX_HD` in attention.wgsl.
pub const MAX_HEAD_DIM: usize = 256;

/// Mirrors `Params` in attention.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    seq: u32,
    start: u32,
    heads: u32,
    kv_heads: u32,
    hd: u32,
    kv_rows: u32,
    scale: f32,
}

const BINDINGS: [Binding; 5] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// Which rows an attention call covers.
#[derive(Clone, Copy, Debug)]
pub struct AttnRows {
    /// Sequences in the batch.
    pub batch: usize,
    /// Query rows per sequence, at positions `start..start + seq`.
    pub seq: usize,
    pub start: usize,
    /// Rows of `k`/`v` per sequence (at least `start + seq`; a cache's capacity).
    pub kv_rows: usize,
}

/// Records attention: `q` and `out` `[batch · seq, heads · hd]`, `k` and `v`
/// `[batch · kv_rows, kv_heads · hd]` (sequence `b`'s keys from row `b · kv_rows`).
#[allow(clippy::too_many_arguments)]
pub fn encode_attention(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    q: &wgpu::Buffer,
    k: &wgpu::Buffer,
    v: &wgpu::Buffer,
    out: &wgpu::Buffer,
    s: AttnShape,
    r: AttnRows,
) -> Result<()> {
    if s.heads == 0
        || s.kv_heads == 0
        || !s.heads.is_multiple_of(s.kv_heads)
        || s.head_dim == 0
        || s.head_dim > MAX_HEAD_DIM
        || r.seq == 0
        || r.kv_rows < r.start + r.seq
    {
        return Err(Error::Config(format!(
            "attention: unsupported shape {s:?} (head dim at most {MAX_HEAD_DIM}, heads a multiple \
             of kv heads) or rows {r:?} (kv_rows at least start + seq)"
        )));
    }
    let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    check_buffer("attention q", q, r.batch * r.seq * qw)?;
    check_buffer("attention output", out, r.batch * r.seq * qw)?;
    check_buffer("attention k", k, r.batch * r.kv_rows * kvw)?;
    check_buffer("attention v", v, r.batch * r.kv_rows * kvw)?;
    let params = Params {
        batch: r.batch as u32,
        seq: r.seq as u32,
        start: r.start as u32,
        heads: s.heads as u32,
        kv_heads: s.kv_heads as u32,
        hd: s.head_dim as u32,
        kv_rows: r.kv_rows as u32,
        scale: 1.0 / (s.head_dim as f32).sqrt(),
    };
    let n = r.batch * r.seq * s.heads;
    let groups = u32::try_from(n)
        .map_err(|_| Error::Gpu(format!("attention over {n} rows x heads is too large")))?;
    let kern = ctx.kernel("attention", SOURCE, "attention", &BINDINGS)?;
    let uniform = ctx.uniform("attention.params", &params);
    ctx.encode(encoder, &kern, &[&uniform, q, k, v, out], ctx.grid(groups));
    Ok(())
}

/// [`encode_attention`] on host data, laid out as [`encode_attention`] says.
pub fn attention(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    s: AttnShape,
    r: AttnRows,
) -> Result<Vec<f32>> {
    let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    if q.len() != r.batch * r.seq * qw || k.len() != r.batch * r.kv_rows * kvw || v.len() != k.len()
    {
        return Err(Error::Config(format!(
            "attention: q/k/v of {}/{}/{} values do not match {s:?} and {r:?}",
            q.len(),
            k.len(),
            v.len()
        )));
    }
    let qb = ctx.upload("q", f32_bytes(q))?;
    let kb = ctx.upload("k", f32_bytes(k))?;
    let vb = ctx.upload("v", f32_bytes(v))?;
    let out = ctx.storage("out", (q.len() * 4) as u64)?;
    let mut enc = ctx.encoder();
    encode_attention(ctx, &mut enc, &qb, &kb, &vb, &out, s, r)?;
    ctx.submit_and_wait(enc)?;
    ctx.read(&out, q.len())
}

/// Causal attention over `windows` independent windows of `seq` tokens
/// (see [`crate::backend::Backend::causal_attention`]; arguments already
/// checked), as many windows per dispatch as fit one binding.
pub fn windows(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    windows: usize,
    seq: usize,
    s: AttnShape,
) -> Result<Vec<f32>> {
    let (qw, kvw) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let mut out = Vec::with_capacity(q.len());
    for w in super::row_chunks(ctx, windows, seq * qw.max(kvw) * 4)? {
        let rows = AttnRows {
            batch: w.len(),
            seq,
            start: 0,
            kv_rows: seq,
        };
        out.extend(attention(
            ctx,
            &q[w.start * seq * qw..w.end * seq * qw],
            &k[w.start * seq * kvw..w.end * seq * kvw],
            &v[w.start * seq * kvw..w.end * seq * kvw],
            s,
            rows,
        )?);
    }
    Ok(out)
}
