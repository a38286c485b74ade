//! Thin wrapper over `shaders/quantize.wgsl`: group ranges, quantize+pack,
//! pack, unpack and dequantize. Large tensors are split by rows so every
//! binding stays under the context's binding limit.

use super::context::{Binding, GpuContext, Kernel};
use super::row_chunks;
use crate::backend::GroupParams;
use crate::encoding::affine::packing::words_per_row;
use crate::encoding::QuantizedTensor;
use crate::error::Result;
use bytemuck::{Pod, Zeroable};
use std::sync::Arc;

const SOURCE: &str = concat!(
    include_str!("../../../shaders/pack_word.wgsl"),
    include_str!("../../../shaders/quantize.wgsl")
);
const WG: usize = 256;

/// Mirrors `Params` in quantize.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    group_len: u32,
    words_per_row: u32,
    quantize_src: u32,
    groups_per_row: u32,
    dequantize_dst: u32,
}

const BINDINGS: [Binding; 5] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

fn kernel(ctx: &GpuContext, entry: &str) -> Result<Arc<Kernel>> {
    ctx.kernel(&format!("quantize.{entry}"), SOURCE, entry, &BINDINGS)
}

/// One launch of a quantize-family kernel over `rows` rows.
struct Job<'a> {
    entry: &'a str,
    rows: usize,
    /// Bytes per row of the widest binding (what the split must fit).
    row_bytes: usize,
    out_words_per_row: usize,
    threads_per_row: usize,
    params: Params,
}

/// Source words and per-group parameters of a range of rows.
type Inputs = (Vec<u32>, Vec<f32>, Vec<u32>);

/// Runs `job` over row chunks that fit the binding limit; `inputs(range)`
/// gives each chunk's source words, scales and zeros.
fn run_chunked(
    ctx: &GpuContext,
    job: Job,
    inputs: &dyn Fn(std::ops::Range<usize>) -> Inputs,
) -> Result<Vec<u32>> {
    let k = kernel(ctx, job.entry)?;
    let mut params = job.params;
    let mut out = Vec::with_capacity(job.rows * job.out_words_per_row);
    for range in row_chunks(ctx, job.rows, job.row_bytes)? {
        let n = range.len();
        let (src, scales, zeros) = inputs(range);
        params.rows = n as u32;
        let uniform = ctx.uniform("quantize.params", &params);
        let src = ctx.upload("quantize.src", bytemuck::cast_slice(&src))?;
        let scales = ctx.upload("quantize.scales", bytemuck::cast_slice(&scales))?;
        let zeros = ctx.upload("quantize.zeros", bytemuck::cast_slice(&zeros))?;
        let dst = ctx.storage("quantize.dst", (n * job.out_words_per_row * 4) as u64)?;
        let groups = (n * job.threads_per_row).div_ceil(WG) as u32;
        ctx.run(
            &k,
            &[&uniform, &src, &scales, &zeros, &dst],
            ctx.grid(groups),
        )?;
        out.extend(ctx.read::<u32>(&dst, n * job.out_words_per_row)?);
    }
    Ok(out)
}

/// `Params` with `quantize_src` and `dequantize_dst` off.
fn params(cols: usize, bits: u32, group_len: usize) -> Params {
    Params {
        rows: 0,
        cols: cols as u32,
        bits,
        group_len: group_len as u32,
        words_per_row: words_per_row(cols, bits) as u32,
        quantize_src: 0,
        groups_per_row: cols.div_ceil(group_len.max(1)) as u32,
        dequantize_dst: 0,
    }
}

pub fn group_ranges(
    ctx: &GpuContext,
    w: &[f32],
    rows: usize,
    cols: usize,
    group_len: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let gpr = cols.div_ceil(group_len);
    let words: &[u32] = bytemuck::cast_slice(w);
    let out = run_chunked(
        ctx,
        Job {
            entry: "group_range",
            rows,
            row_bytes: cols * 4,
            out_words_per_row: 2 * gpr,
            threads_per_row: gpr,
            params: params(cols, 32, group_len),
        },
        &|r| (words[r.start * cols..r.end * cols].to_vec(), vec![], vec![]),
    )?;
    Ok(out
        .chunks_exact(2)
        .map(|p| (f32::from_bits(p[0]), f32::from_bits(p[1])))
        .unzip())
}

pub fn quantize_codes(
    ctx: &GpuContext,
    w: &[f32],
    rows: usize,
    cols: usize,
    gp: &GroupParams,
) -> Result<Vec<u32>> {
    let gpr = cols.div_ceil(gp.group_len);
    let wpr = words_per_row(cols, gp.bits);
    let words: &[u32] = bytemuck::cast_slice(w);
    run_chunked(
        ctx,
        Job {
            entry: "pack_codes",
            rows,
            row_bytes: cols * 4,
            out_words_per_row: wpr,
            threads_per_row: wpr,
            params: Params {
                quantize_src: 1,
                ..params(cols, gp.bits, gp.group_len)
            },
        },
        &|r| {
            (
                words[r.start * cols..r.end * cols].to_vec(),
                gp.inv_scales[r.start * gpr..r.end * gpr].to_vec(),
                gp.zeros[r.start * gpr..r.end * gpr].to_vec(),
            )
        },
    )
}

pub fn pack(
    ctx: &GpuContext,
    codes: &[u32],
    rows: usize,
    cols: usize,
    bits: u32,
) -> Result<Vec<u32>> {
    let wpr = words_per_row(cols, bits);
    run_chunked(
        ctx,
        Job {
            entry: "pack_codes",
            rows,
            row_bytes: cols * 4,
            out_words_per_row: wpr,
            threads_per_row: wpr,
            params: params(cols, bits, cols),
        },
        &|r| (codes[r.start * cols..r.end * cols].to_vec(), vec![], vec![]),
    )
}

pub fn unpack(
    ctx: &GpuContext,
    packed: &[u32],
    rows: usize,
    cols: usize,
    bits: u32,
) -> Result<Vec<u32>> {
    let wpr = words_per_row(cols, bits);
    run_chunked(
        ctx,
        Job {
            entry: "unpack_codes",
            rows,
            row_bytes: cols * 4,
            out_words_per_row: cols,
            threads_per_row: cols,
            params: params(cols, bits, cols),
        },
        &|r| (packed[r.start * wpr..r.end * wpr].to_vec(), vec![], vec![]),
    )
}

pub fn dequantize(ctx: &GpuContext, q: &QuantizedTensor) -> Result<Vec<f32>> {
    q.validate("dequantize input")?;
    let (cols, wpr, gpr) = (q.cols, q.words_per_row(), q.n_groups());
    let glen = q.scheme.group_len(cols);
    let out = run_chunked(
        ctx,
        Job {
            entry: "unpack_codes",
            rows: q.rows,
            row_bytes: cols * 4,
            out_words_per_row: cols,
            threads_per_row: cols,
            params: Params {
                dequantize_dst: 1,
                ..params(cols, q.scheme.bits, glen)
            },
        },
        &|r| {
            (
                q.packed[r.start * wpr..r.end * wpr].to_vec(),
                q.scales[r.start * gpr..r.end * gpr].to_vec(),
                q.zeros[r.start * gpr..r.end * gpr]
                    .iter()
                    .map(|&z| z as u32)
                    .collect(),
            )
        },
    )?;
    Ok(bytemuck::cast_vec(out))
}
