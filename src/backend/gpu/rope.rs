//! Thin wrapper over `shaders/rope.wgsl`: rotary position embedding in place
//! on q or k. The cos/sin table comes from the CPU's [`RopeTable`] (angles in
//! f64, rounded once to f32), so GPU and CPU rotate by identical factors.

use super::context::{Binding, GpuContext};
use super::{check_buffer, f32_bytes, GpuBuffer};
use crate::backend::cpu::ops::RopeTable;
use crate::error::{Error, Result};
use bytemuck::{Pod, Zeroable};

const SOURCE: &str = include_str!("../../../shaders/rope.wgsl");
const WG: usize = 64;

/// Mirrors `Params` in rope.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    seq: u32,
    heads: u32,
    half: u32,
    adjacent: u32,
    _pad: [u32; 3],
}

const BINDINGS: [Binding; 3] = [
    Binding::Uniform,
    Binding::StorageRead,
    Binding::StorageReadWrite,
];

/// A RoPE table on the GPU: `(cos, sin)` per position and pair.
pub struct GpuRopeTable {
    buffer: GpuBuffer,
    positions: usize,
    half: usize,
}

impl GpuRopeTable {
    pub fn upload(ctx: &GpuContext, table: &RopeTable) -> Result<Self> {
        let (cos, sin) = table.cos_sin();
        let interleaved: Vec<f32> = cos.iter().zip(sin).flat_map(|(&c, &s)| [c, s]).collect();
        let half = table.pairs();
        Ok(Self {
            buffer: ctx.upload("rope.table", f32_bytes(&interleaved))?,
            positions: cos.len() / half.max(1),
            half,
        })
    }
}

/// Records the rotation of `x` `[rows, heads · hd]` in place; row `r` is at
/// table position `r % seq` (a batch of sequences of `seq` rows each).
/// `adjacent`: pairs (2i, 2i+1) as GGUF stores q/k, else (i, i + hd/2).
#[allow(clippy::too_many_arguments)]
pub fn encode_rope(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    table: &GpuRopeTable,
    x: &wgpu::Buffer,
    rows: usize,
    seq: usize,
    heads: usize,
    adjacent: bool,
) -> Result<()> {
    if seq == 0 || seq > table.positions || !rows.is_multiple_of(seq) || table.half == 0 {
        return Err(Error::Config(format!(
            "rope: {rows} rows in sequences of {seq}, table of {} positions",
            table.positions
        )));
    }
    check_buffer("rope input", x, rows * heads * 2 * table.half)?;
    let params = Params {
        rows: rows as u32,
        seq: seq as u32,
        heads: heads as u32,
        half: table.half as u32,
        adjacent: adjacent as u32,
        _pad: [0; 3],
    };
    let n = rows * heads * table.half;
    let groups = u32::try_from(n.div_ceil(WG))
        .map_err(|_| Error::Gpu(format!("rope over {n} pairs is too large")))?;
    let k = ctx.kernel("rope", SOURCE, "rope", &BINDINGS)?;
    let uniform = ctx.uniform("rope.params", &params);
    ctx.encode(encoder, &k, &[&uniform, &table.buffer, x], ctx.grid(groups));
    Ok(())
}

/// [`encode_rope`] on host data: returns the rotated copy of `x`.
pub fn rope(
    ctx: &GpuContext,
    x: &[f32],
    table: &RopeTable,
    seq: usize,
    heads: usize,
    adjacent: bool,
) -> Result<Vec<f32>> {
    let width = heads * 2 * table.pairs();
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(Error::Config(format!(
            "rope input has {} values, not a multiple of heads x head dim {width}",
            x.len()
        )));
    }
    let t = GpuRopeTable::upload(ctx, table)?;
    let xb = ctx.upload("x", f32_bytes(x))?;
    let mut enc = ctx.encoder();
    encode_rope(
        ctx,
        &mut enc,
        &t,
        &xb,
        x.len() / width,
        seq,
        heads,
        adjacent,
    )?;
    ctx.submit_and_wait(enc)?;
    ctx.read(&xb, x.len())
}
