//! Thin wrapper over `shaders/matmul.wgsl`: dequantize-and-multiply
//! `y[tokens, rows] = x[tokens, cols] · Wᵀ` with `W` packed: linear integer
//! codes (any of 2..=8 bits; 4 and 8 have fast code extraction, 2/3/5/6/7
//! use the generic bit stream path in the same kernels) through
//! `shaders/affine_decode.wgsl`, or VQ indices and codebooks through
//! `shaders/vq_decode.wgsl`; the encoding picks the fragment, the rest of
//! the kernels is shared.
//!
//! Weights are uploaded once as [`GpuQuantWeights`] (split by rows when a
//! buffer would exceed the binding limit) and stay resident; [`encode_matmul`]
//! records the dispatches into an encoder so callers can batch many without a
//! host round trip, [`matmul_resident`] is the host-in/host-out convenience.

use super::context::{Binding, GpuContext, Kernel};
use super::{row_chunks, GpuBuffer, GEMM_TILE};
use crate::encoding::ggml::{row_bytes, GgmlTensor};
use crate::encoding::vq::{index_words, VqTensor};
use crate::encoding::{EncodedTensor, Encoding, QuantizedTensor};
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kernels after the affine encoding's decode fragment.
const SOURCE: &str = concat!(
    include_str!("../../../shaders/affine_decode.wgsl"),
    with_tile_gemm!("matmul.wgsl")
);

/// The kernels after the VQ decode fragment.
const VQ_SOURCE: &str = concat!(
    include_str!("../../../shaders/vq_index.wgsl"),
    include_str!("../../../shaders/vq_decode.wgsl"),
    with_tile_gemm!("matmul.wgsl")
);

/// The kernels after the ggml block encoding's decode fragment.
const GGML_SOURCE: &str = concat!(
    include_str!("../../../shaders/ggml_decode.wgsl"),
    with_tile_gemm!("matmul.wgsl")
);

/// Up to this many tokens the GEMV kernel (one weight pass per token) beats
/// the 64-token GEMM tile, most of which would be padding.
pub const GEMV_MAX_TOKENS: usize = 4;

// Must match the constants in matmul.wgsl.
const GEMV_ROWS: usize = 4;
const GEMV_SHARED_BYTES: u32 = 2048 * 4 + 4 * 64 * 4;
/// `tile_a` and `tile_b` of tile_gemm.wgsl: 2 × 16 k × 17 vec4s.
const GEMM_SHARED_BYTES: u32 = 2 * 16 * 17 * 16;

/// Mirrors `Params` in matmul.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    tokens: u32,
    rows: u32,
    cols: u32,
    out_stride: u32,
    row0: u32,
    group_len: u32,
    groups_per_row: u32,
    words_per_row: u32,
    row_blocks: u32,
    _pad: [u32; 3],
}

const BINDINGS: [Binding; 6] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// Keeps `//#if SUBGROUP` blocks when `subgroups`, and sets the fragment's
/// constants (`const NAME: u32 = ...` lines named in `consts`).
fn specialise(source: &str, consts: &[(&str, u32)], subgroups: bool) -> String {
    let mut out = String::with_capacity(source.len());
    let mut keep = true;
    for line in source.lines() {
        let t = line.trim();
        let constant = consts
            .iter()
            .find(|(name, _)| t.starts_with(&format!("const {name}: u32")));
        match (t, constant) {
            ("//#if SUBGROUP", _) => keep = subgroups,
            ("//#else", _) => keep = !subgroups,
            ("//#endif", _) => keep = true,
            (_, Some((name, v))) => out.push_str(&format!("const {name}: u32 = {v}u;\n")),
            _ if keep => {
                out.push_str(line);
                out.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// The decode fragment's source and constants for `encoding`.
fn fragment(encoding: &Encoding) -> Result<(&'static str, Vec<(&'static str, u32)>)> {
    Ok(match encoding {
        Encoding::Affine(s) => (SOURCE, vec![("BITS", s.bits)]),
        Encoding::Vq(s) => (
            VQ_SOURCE,
            vec![
                ("VQ_DIM", s.dim),
                ("VQ_INDEX_BITS", s.index_bits()),
                ("VQ_ROWS_PER_CODEBOOK", s.rows_per_codebook() as u32),
                ("VQ_CODEBOOK_LEN", s.codebook_len() as u32),
                ("VQ_SCALE_BLOCK", s.scale_block),
            ],
        ),
        Encoding::Ggml(t) => (GGML_SOURCE, vec![("GGML_TYPE", t.id())]),
    })
}

fn kernel(
    ctx: &GpuContext,
    entry: &str,
    encoding: &Encoding,
    subgroups: bool,
) -> Result<Arc<Kernel>> {
    let shared = if entry == "gemm" {
        GEMM_SHARED_BYTES
    } else {
        GEMV_SHARED_BYTES
    };
    let limit = ctx.limits().max_compute_workgroup_storage_size;
    if shared > limit {
        return Err(Error::Gpu(format!(
            "matmul kernel '{entry}' needs {shared} bytes of workgroup memory; {} allows {limit}",
            ctx.adapter.short()
        )));
    }
    // Subgroups only matter for the GEMV reduction.
    let sg = entry == "gemv" && subgroups;
    let (source, consts) = fragment(encoding)?;
    let tag: Vec<String> = consts.iter().map(|(n, v)| format!("{n}{v}")).collect();
    let key = format!(
        "matmul.{entry}_{}{}",
        tag.join("_"),
        if sg { "_sg" } else { "" }
    );
    ctx.kernel(&key, &specialise(source, &consts, sg), entry, &BINDINGS)
}

/// One row range of a weight, in its own buffers: the codes (packed codes
/// or VQ indices) and the encoding's two other parts (scales and zeros, or
/// codebooks and row scales or a placeholder).
struct WeightChunk {
    row0: usize,
    rows: usize,
    packed: GpuBuffer,
    aux: [GpuBuffer; 2],
}

/// A packed weight resident on the GPU, split by rows so no buffer exceeds
/// the binding limit. Linear integer codes keep f32 scales and u8
/// zero-points (4 per word); VQ weights keep their indices and f32
/// codebooks, chunks aligned to the rows sharing a codebook.
pub struct GpuQuantWeights {
    pub rows: usize,
    pub cols: usize,
    pub encoding: Encoding,
    words_per_row: usize,
    groups_per_row: usize,
    group_len: usize,
    chunks: Vec<WeightChunk>,
}

impl GpuQuantWeights {
    pub fn upload(ctx: &GpuContext, q: &QuantizedTensor) -> Result<Self> {
        q.validate("matmul weight")?;
        let (wpr, gpr) = (q.words_per_row(), q.n_groups());
        let mut chunks = Vec::new();
        for range in row_chunks(ctx, q.rows, (wpr * 4).max(gpr * 4))? {
            let (r0, r1) = (range.start, range.end);
            let zeros: Vec<u8> = q.zeros[r0 * gpr..r1 * gpr].to_vec();
            chunks.push(WeightChunk {
                row0: r0,
                rows: r1 - r0,
                packed: ctx.upload(
                    "matmul.packed",
                    bytemuck::cast_slice(&q.packed[r0 * wpr..r1 * wpr]),
                )?,
                aux: [
                    ctx.upload(
                        "matmul.scales",
                        bytemuck::cast_slice(&q.scales[r0 * gpr..r1 * gpr]),
                    )?,
                    ctx.upload("matmul.zeros", &zeros)?,
                ],
            });
        }
        Ok(Self {
            rows: q.rows,
            cols: q.cols,
            encoding: q.encoding(),
            words_per_row: wpr,
            groups_per_row: gpr,
            group_len: q.scheme.group_len(q.cols),
            chunks,
        })
    }

    /// Uploads a VQ weight: chunks of whole row groups (the rows sharing
    /// codebooks), each with its indices and its row groups' codebooks.
    pub fn upload_vq(ctx: &GpuContext, v: &VqTensor) -> Result<Self> {
        v.validate("matmul weight")?;
        let s = &v.scheme;
        if !s.span().is_multiple_of(32) || !s.unit().is_multiple_of(32) {
            return Err(Error::Gpu(format!(
                "VQ groups of {} weights span {} columns with row scales per {}; the GPU \
                 kernels need multiples of 32",
                s.group,
                s.span(),
                s.unit()
            )));
        }
        let (wpr, rpc, spans) = (
            index_words(s, v.cols),
            s.rows_per_codebook(),
            s.spans(v.cols),
        );
        let per_group = spans * s.codebook_len();
        let mut chunks = Vec::new();
        let scales_per_group = rpc * v.row_scales.as_ref().map_or(0, |rs| rs.blocks);
        let widest = (rpc * wpr).max(per_group).max(scales_per_group) * 4;
        // Chunks of whole row groups; the last group may be shorter.
        for range in row_chunks(ctx, v.rows.div_ceil(rpc), widest)? {
            let (r0, r1) = (range.start * rpc, (range.end * rpc).min(v.rows));
            chunks.push(WeightChunk {
                row0: r0,
                rows: r1 - r0,
                packed: ctx.upload(
                    "matmul.vq_indices",
                    bytemuck::cast_slice(&v.indices[r0 * wpr..r1 * wpr]),
                )?,
                aux: [
                    ctx.upload(
                        "matmul.codebooks",
                        bytemuck::cast_slice(
                            &v.codebooks[range.start * per_group..range.end * per_group],
                        ),
                    )?,
                    match &v.row_scales {
                        Some(rs) => ctx.upload(
                            "matmul.vq_row_scales",
                            bytemuck::cast_slice(&rs.values[r0 * rs.blocks..r1 * rs.blocks]),
                        )?,
                        None => ctx.upload("matmul.vq_row_scales", &[0u8; 4])?,
                    },
                ],
            });
        }
        Ok(Self {
            rows: v.rows,
            cols: v.cols,
            encoding: v.encoding(),
            words_per_row: wpr,
            groups_per_row: spans,
            group_len: s.span(),
            chunks,
        })
    }

    /// Uploads llama.cpp blocks as the file stores them, each row padded
    /// to whole u32 words (rows of most types already are).
    pub fn upload_ggml(ctx: &GpuContext, g: &GgmlTensor) -> Result<Self> {
        g.validate("matmul weight")?;
        let rb = row_bytes(g.ty, g.cols);
        let wpr = rb.div_ceil(4);
        let mut chunks = Vec::new();
        for range in row_chunks(ctx, g.rows, wpr * 4)? {
            let mut words = vec![0u8; range.len() * wpr * 4];
            for (r, out) in range.clone().zip(words.chunks_exact_mut(wpr * 4)) {
                out[..rb].copy_from_slice(&g.data[r * rb..(r + 1) * rb]);
            }
            chunks.push(WeightChunk {
                row0: range.start,
                rows: range.len(),
                packed: ctx.upload("matmul.ggml_blocks", &words)?,
                aux: [
                    ctx.upload("matmul.unused", &[0u8; 4])?,
                    ctx.upload("matmul.unused", &[0u8; 4])?,
                ],
            });
        }
        Ok(Self {
            rows: g.rows,
            cols: g.cols,
            encoding: Encoding::Ggml(g.ty),
            words_per_row: wpr,
            groups_per_row: 0,
            group_len: 0,
            chunks,
        })
    }

    /// Uploads a weight of any encoding.
    pub fn upload_encoded(ctx: &GpuContext, t: &EncodedTensor) -> Result<Self> {
        match t {
            EncodedTensor::Affine(q) => Self::upload(ctx, q),
            EncodedTensor::Vq(v) => Self::upload_vq(ctx, v),
            EncodedTensor::Ggml(g) => Self::upload_ggml(ctx, g),
        }
    }

    /// Each chunk's first row, rows, codes and aux parts (the scales and
    /// zero-points of linear integer codes), for other kernels over the
    /// same upload.
    pub(super) fn chunk_parts(
        &self,
    ) -> impl Iterator<Item = (usize, usize, &GpuBuffer, &[GpuBuffer; 2])> {
        self.chunks
            .iter()
            .map(|c| (c.row0, c.rows, &c.packed, &c.aux))
    }

    /// Words per row of the codes.
    pub(super) fn words_per_row(&self) -> usize {
        self.words_per_row
    }

    /// How many row chunks (buffer sets, dispatches per matmul) the weight uses.
    pub fn n_chunks(&self) -> usize {
        self.chunks.len()
    }

    /// Bytes one matmul reads from the weight buffers
    /// ([`crate::encoding::Encoding::resident_bytes`]).
    pub fn resident_bytes(&self) -> u64 {
        self.encoding.resident_bytes(self.rows, self.cols)
    }
}

/// Records `y = x · Wᵀ` for `tokens` rows of `x` into `encoder`: one dispatch
/// per weight chunk. `x` holds `[tokens, cols]` f32 and `y` `[tokens, rows]`;
/// both must fit one binding (see [`matmul_resident`] for splitting).
pub fn encode_matmul(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    w: &GpuQuantWeights,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    tokens: usize,
) -> Result<()> {
    encode_matmul_with(ctx, encoder, w, x, y, tokens, ctx.has_subgroups())
}

/// [`encode_matmul`] with the GEMV reduction chosen explicitly: `subgroups`
/// false forces the workgroup tree reduction (tests cover both variants on
/// one device with it); true on a device without subgroups is an error.
pub fn encode_matmul_with(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    w: &GpuQuantWeights,
    x: &wgpu::Buffer,
    y: &wgpu::Buffer,
    tokens: usize,
    subgroups: bool,
) -> Result<()> {
    if subgroups && !ctx.has_subgroups() {
        return Err(Error::Gpu(format!(
            "{} has no subgroup support",
            ctx.adapter.short()
        )));
    }
    let (xb, yb) = ((tokens * w.cols * 4) as u64, (tokens * w.rows * 4) as u64);
    if tokens == 0 || x.size() < xb || y.size() < yb || xb.max(yb) > ctx.max_binding() {
        return Err(Error::Gpu(format!(
            "matmul of {tokens} tokens: x buffer {} bytes (need {xb}), y buffer {} bytes (need {yb}), \
             binding limit {}",
            x.size(),
            y.size(),
            ctx.max_binding()
        )));
    }
    let gemv = tokens <= GEMV_MAX_TOKENS;
    let k = kernel(
        ctx,
        if gemv { "gemv" } else { "gemm" },
        &w.encoding,
        subgroups,
    )?;
    for c in &w.chunks {
        let (row_blocks, groups) = if gemv {
            let rb = c.rows.div_ceil(GEMV_ROWS);
            (rb, rb * tokens)
        } else {
            let rb = c.rows.div_ceil(GEMM_TILE);
            (rb, rb * tokens.div_ceil(GEMM_TILE))
        };
        let groups = u32::try_from(groups)
            .map_err(|_| Error::Gpu(format!("matmul grid of {groups} workgroups is too large")))?;
        let params = Params {
            tokens: tokens as u32,
            rows: c.rows as u32,
            cols: w.cols as u32,
            out_stride: w.rows as u32,
            row0: c.row0 as u32,
            group_len: w.group_len as u32,
            groups_per_row: w.groups_per_row as u32,
            words_per_row: w.words_per_row as u32,
            row_blocks: row_blocks as u32,
            _pad: [0; 3],
        };
        let uniform = ctx.uniform("matmul.params", &params);
        ctx.encode(
            encoder,
            &k,
            &[&uniform, &c.packed, &c.aux[0], &c.aux[1], x, y],
            ctx.grid(groups),
        );
    }
    Ok(())
}

/// `y = x · Wᵀ` with resident weights and host activations; splits the
/// tokens so that each chunk of `x` and `y` fits one binding.
pub fn matmul_resident(
    ctx: &GpuContext,
    w: &GpuQuantWeights,
    x: &[f32],
    tokens: usize,
) -> Result<Vec<f32>> {
    if x.len() != tokens * w.cols {
        return Err(Error::Config(format!(
            "matmul input has {} values, expected {tokens} tokens x {} columns",
            x.len(),
            w.cols
        )));
    }
    let mut y = Vec::with_capacity(tokens * w.rows);
    if tokens == 0 {
        return Ok(y);
    }
    let per_token = (w.cols.max(w.rows) * 4) as u64;
    let per_chunk = (ctx.max_binding() / per_token) as usize;
    if per_chunk == 0 {
        return Err(Error::Gpu(format!(
            "one token of the matmul ({per_token} bytes) exceeds the binding limit of {} bytes",
            ctx.max_binding()
        )));
    }
    for t0 in (0..tokens).step_by(per_chunk) {
        let n = per_chunk.min(tokens - t0);
        let xb = ctx.upload(
            "matmul.x",
            bytemuck::cast_slice(&x[t0 * w.cols..(t0 + n) * w.cols]),
        )?;
        let yb = ctx.storage("matmul.y", (n * w.rows * 4) as u64)?;
        let mut enc = ctx.encoder();
        encode_matmul(ctx, &mut enc, w, &xb, &yb, n)?;
        ctx.submit_and_wait(enc)?;
        y.extend(ctx.read::<f32>(&yb, n * w.rows)?);
    }
    Ok(y)
}

/// A packed linear uploaded once ([`crate::backend::Backend::resident_linear`]).
pub struct ResidentQuantLinear<'a> {
    pub ctx: &'a GpuContext,
    pub w: GpuQuantWeights,
}

impl crate::backend::ResidentLinear for ResidentQuantLinear<'_> {
    fn shape(&self) -> [usize; 2] {
        [self.w.rows, self.w.cols]
    }

    fn apply(&self, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
        matmul_resident(self.ctx, &self.w, x, tokens)
    }
}

/// Uploads `q` and runs [`matmul_resident`].
pub fn matmul(ctx: &GpuContext, q: &QuantizedTensor, x: &[f32], tokens: usize) -> Result<Vec<f32>> {
    let w = GpuQuantWeights::upload(ctx, q)?;
    matmul_resident(ctx, &w, x, tokens)
}

/// Mean time of one matmul of `tokens` tokens with resident weights and
/// activations: one warm-up submission, then `iters` dispatches recorded into
/// a single submission, so host round trips do not count.
pub fn time_matmul(
    ctx: &GpuContext,
    w: &GpuQuantWeights,
    tokens: usize,
    iters: usize,
) -> Result<Duration> {
    let x: Vec<f32> = (0..tokens * w.cols)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let xb = ctx.upload("matmul.x", bytemuck::cast_slice(&x))?;
    let yb = ctx.storage("matmul.y", (tokens * w.rows * 4) as u64)?;
    let mut enc = ctx.encoder();
    encode_matmul(ctx, &mut enc, w, &xb, &yb, tokens)?;
    ctx.submit_and_wait(enc)?;
    let iters = iters.max(1);
    let mut enc = ctx.encoder();
    for _ in 0..iters {
        encode_matmul(ctx, &mut enc, w, &xb, &yb, tokens)?;
    }
    let start = Instant::now();
    ctx.submit_and_wait(enc)?;
    Ok(start.elapsed() / iters as u32)
}
