//! CPU kernels for GPTQ: the running Hessian (SGEMM through
//! `matrixmultiply`, parallel over blocks of H rows), the in-block
//! quantization with error feedback on any [`Grid`] (rayon over weight rows) and the
//! deferred update of the remaining columns (SGEMM per block of rows).
//! They are the reference the WGSL kernels are tested against.

use crate::backend::{check_hessian_batch, GptqColumns, GptqSpec, ResidentHessian};
use crate::encoding::affine::packing::pack_in_order;
use crate::encoding::{Grid, GridCodes};
use crate::error::Result;
use rayon::prelude::*;
use std::ops::Range;

/// One block of GPTQ columns handed to [`gptq_block`].
pub struct GptqBlock<'a> {
    pub grid: &'a dyn Grid,
    pub group_len: usize,
    /// First and one-past-last column of the block.
    pub start: usize,
    pub end: usize,
    /// `Hinv[start..end, start..end]`, row-major `[len, len]`.
    pub hinv: &'a [f32],
    /// `[cols]` `diag(H)` in quantization order.
    pub hdiag: &'a [f32],
    /// Static groups: the group of each column; `None`: dynamic groups.
    pub group_of: Option<&'a [u32]>,
}

impl GptqBlock<'_> {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What [`gptq_block`] writes: codes of the block's columns, the parameters
/// of every group whose first column lies in the block, and the scaled
/// errors the deferred update needs.
pub struct GptqBlockOut<'a> {
    /// `[rows, cols]` codes (only the block's columns are written).
    pub codes: &'a mut [u32],
    /// `[rows, groups, params_per_group]` grid parameters.
    pub params: &'a mut [f32],
    /// `[rows, len]`: `(w − ŵ) / Hinv[j, j]` per column of the block.
    pub err: &'a mut [f32],
}

/// GPTQ's state on the CPU: W, codes and parameters in host memory; each
/// block copies its part of H⁻¹'s factor and calls the kernels below.
pub struct CpuGptqColumns<'a> {
    w: Vec<f32>,
    rows: usize,
    cols: usize,
    spec: GptqSpec<'a>,
    codes: Vec<u32>,
    params: Vec<f32>,
    /// Scaled errors of the last quantized block, `[rows, len]`.
    err: Vec<f32>,
}

impl<'a> CpuGptqColumns<'a> {
    /// Arguments already checked by `check_gptq_args`.
    pub fn new(w: Vec<f32>, rows: usize, cols: usize, spec: GptqSpec<'a>) -> Self {
        let params = match spec.static_groups {
            Some(s) => s.params.to_vec(),
            None => {
                let sets = rows.div_ceil(spec.grid.rows_per_params());
                vec![0.0; sets * spec.groups(cols) * spec.grid.params_per_group()]
            }
        };
        Self {
            w,
            rows,
            cols,
            spec,
            codes: vec![0; rows * cols],
            params,
            err: Vec::new(),
        }
    }
}

impl GptqColumns for CpuGptqColumns<'_> {
    fn quantize_block(&mut self, start: usize) -> Result<()> {
        let cols = self.cols;
        let end = self.spec.block_end(cols, start)?;
        let block_hinv = self.spec.hinv_part(cols, start..end, start..end);
        self.err = vec![0.0; self.rows * (end - start)];
        let block = GptqBlock {
            grid: self.spec.grid,
            group_len: self.spec.group_len,
            start,
            end,
            hinv: &block_hinv,
            hdiag: self.spec.hdiag,
            group_of: self.spec.static_groups.map(|s| s.group_of),
        };
        let mut out = GptqBlockOut {
            codes: &mut self.codes,
            params: &mut self.params,
            err: &mut self.err,
        };
        gptq_block(&mut self.w, cols, &block, &mut out);
        Ok(())
    }

    fn update_rest(&mut self, start: usize) -> Result<()> {
        let cols = self.cols;
        let end = self.spec.block_end(cols, start)?;
        if self.err.len() != self.rows * (end - start) {
            return Err(crate::error::Error::Config(format!(
                "GPTQ update after block {start}..{end} before the block was quantized"
            )));
        }
        let rest = self.spec.hinv_part(cols, start..end, end..cols);
        gptq_update_rest(&mut self.w, cols, end, &self.err, &rest);
        Ok(())
    }

    fn current_columns(&self, span: Range<usize>) -> Result<Vec<f32>> {
        check_span(self.cols, &span)?;
        Ok(self
            .w
            .chunks(self.cols)
            .flat_map(|row| &row[span.clone()])
            .copied()
            .collect())
    }

    fn set_group_params(&mut self, group: usize, params: &[f32]) -> Result<()> {
        let per_group = self.spec.grid.params_per_group();
        let groups = self.spec.groups(self.cols);
        let sets = self.rows.div_ceil(self.spec.grid.rows_per_params());
        if group >= groups || params.len() != sets * per_group {
            return Err(crate::error::Error::Config(format!(
                "GPTQ group parameters: group {group} of {groups}, {} values for {sets} sets of \
                 {per_group}",
                params.len()
            )));
        }
        for (dst, src) in self
            .params
            .chunks_mut(groups * per_group)
            .zip(params.chunks(per_group))
        {
            dst[group * per_group..(group + 1) * per_group].copy_from_slice(src);
        }
        Ok(())
    }

    fn finish(self: Box<Self>) -> Result<GridCodes> {
        let bits = self.spec.grid.code_bits();
        let d = self.spec.grid.step();
        // A code per vector: the one stored at each vector's first column.
        let codes: Vec<u32> = match d {
            1 => self.codes,
            _ => self.codes.iter().step_by(d).copied().collect(),
        };
        let perm = if d == 1 { self.spec.perm } else { None };
        Ok(GridCodes {
            packed: pack_in_order(&codes, self.rows, self.cols / d, bits, perm),
            params: self.params,
        })
    }
}

/// A column range of a `cols`-column weight, checked.
pub(crate) fn check_span(cols: usize, span: &Range<usize>) -> Result<()> {
    if span.start >= span.end || span.end > cols {
        return Err(crate::error::Error::Config(format!(
            "GPTQ columns {span:?} of a weight of {cols} columns"
        )));
    }
    Ok(())
}

/// Rows per parallel task: enough tasks for every core, at least 16.
fn rows_per_task(rows: usize) -> usize {
    rows.div_ceil(4 * rayon::current_num_threads()).max(16)
}

/// The running Hessian in host memory. H is symmetric, so each batch
/// updates only the lower triangle (with each block of rows' diagonal
/// block: about half the FLOPs); [`ResidentHessian::finish`] mirrors it.
pub struct CpuHessian {
    h: Vec<f32>,
    cols: usize,
    n_seen: usize,
}

impl CpuHessian {
    /// `h` already checked; a full symmetric matrix (its lower triangle is used).
    pub fn new(h: Vec<f32>, cols: usize, n_seen: usize) -> Self {
        Self { h, cols, n_seen }
    }
}

impl ResidentHessian for CpuHessian {
    fn add(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        check_hessian_batch(self.cols, x, tokens)?;
        hessian_update_lower(&mut self.h, self.cols, self.n_seen, x, tokens);
        self.n_seen += tokens;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<Vec<f32>> {
        mirror_lower(&mut self.h, self.cols);
        Ok(self.h)
    }
}

/// `H ← alpha·H + beta·XᵀX` with `x` `[tokens, cols]` on the lower triangle
/// of H and the diagonal blocks (the rest of the upper triangle is stale).
fn hessian_update_lower(h: &mut [f32], cols: usize, n_seen: usize, x: &[f32], tokens: usize) {
    if tokens == 0 {
        return;
    }
    let n_total = (n_seen + tokens) as f64;
    let alpha = (n_seen as f64 / n_total) as f32;
    let beta = (2.0 / n_total) as f32;
    let br = rows_per_task(cols);
    h.par_chunks_mut(br * cols).enumerate().for_each(|(b, hb)| {
        let r0 = b * br;
        let m = hb.len() / cols;
        // SAFETY: A = X[:, r0..r0+m]ᵀ (m x tokens, strides 1 and cols)
        // and B = X[:, 0..r0+m] (tokens x (r0+m), strides cols and 1) lie
        // inside `x` (tokens·cols values, r0 + m <= cols); C is the first
        // r0+m columns of the m rows of `hb` (row stride cols).
        unsafe {
            matrixmultiply::sgemm(
                m,
                tokens,
                r0 + m,
                beta,
                x.as_ptr().add(r0),
                1,
                cols as isize,
                x.as_ptr(),
                cols as isize,
                1,
                alpha,
                hb.as_mut_ptr(),
                cols as isize,
                1,
            );
        }
    });
}

/// Copies the lower triangle of the `[n, n]` matrix `h` onto the upper one.
pub(crate) fn mirror_lower(h: &mut [f32], n: usize) {
    const T: usize = 64;
    for bi in (0..n).step_by(T) {
        for bj in (bi..n).step_by(T) {
            for i in bi..(bi + T).min(n) {
                for j in bj.max(i + 1)..(bj + T).min(n) {
                    h[i * n + j] = h[j * n + i];
                }
            }
        }
    }
}

/// GPTQ inside one block, row by row (see [`crate::backend::GptqColumns::quantize_block`]).
/// A grid of step `d` rounds `d` columns at once; their error `r = x − x̂`
/// goes forward as `e = r · U_FF⁻¹` (`U_FF` the `[d, d]` block of H⁻¹'s
/// factor at those columns), the joint OBS update, which for `d = 1` is
/// GPTQ's `r / U_jj`.
pub fn gptq_block(w: &mut [f32], cols: usize, b: &GptqBlock, out: &mut GptqBlockOut) {
    let len = b.len();
    let row_params = cols.div_ceil(b.group_len) * b.grid.params_per_group();
    let rows = w
        .par_chunks_mut(cols)
        .zip(out.codes.par_chunks_mut(cols))
        .zip(out.err.par_chunks_mut(len));
    match b.grid.rows_per_params() {
        1 => rows.zip(out.params.par_chunks_mut(row_params)).for_each(
            |(((row, codes), err), params)| {
                quantize_row(row, codes, err, b, RowParams::Own(params))
            },
        ),
        rpp => {
            let params: &[f32] = out.params;
            rows.enumerate().for_each(|(r, ((row, codes), err))| {
                let set = &params[r / rpp * row_params..(r / rpp + 1) * row_params];
                quantize_row(row, codes, err, b, RowParams::Shared(set))
            })
        }
    }
}

/// A row's group parameters: its own (fitted as the loop reaches them),
/// or a set shared with other rows and given beforehand.
enum RowParams<'p> {
    Own(&'p mut [f32]),
    Shared(&'p [f32]),
}

/// GPTQ inside one block for one row (`err`: the block's `len` scaled errors).
fn quantize_row(
    row: &mut [f32],
    codes: &mut [u32],
    err: &mut [f32],
    b: &GptqBlock,
    mut params: RowParams,
) {
    let (cols, len, d) = (row.len(), b.len(), b.grid.step());
    let per_group = b.grid.params_per_group();
    let (mut u, mut x_hat, mut e) = ([0f32; 16], [0f32; 4], [0f32; 4]);
    for jj in (0..len).step_by(d) {
        let j = b.start + jj;
        let g = match b.group_of {
            Some(map) => map[j] as usize,
            None => j / b.group_len,
        };
        let at = g * per_group..(g + 1) * per_group;
        if let RowParams::Own(p) = &mut params {
            if b.group_of.is_none() && b.grid.fits_rows() && j.is_multiple_of(b.group_len) {
                // A group starts: the grid fits it to the current weights.
                let last = (j + b.group_len).min(cols);
                b.grid
                    .fit(&row[j..last], &b.hdiag[j..last], &mut p[at.clone()]);
            }
        }
        let gp: &[f32] = match &params {
            RowParams::Own(p) => &p[at],
            RowParams::Shared(p) => &p[at],
        };
        for a in 0..d {
            for c in 0..d {
                u[a * d + c] = b.hinv[(jj + a) * len + jj + c];
            }
        }
        let x = &row[j..j + d];
        codes[j] = b.grid.round_vector(x, &u[..d * d], gp, &mut x_hat);
        // e · U_FF = x − x̂, U_FF upper triangular.
        for p in 0..d {
            let mut r = x[p] - x_hat[p];
            for a in 0..p {
                r -= e[a] * u[a * d + p];
            }
            e[p] = r / u[p * d + p];
        }
        err[jj..jj + d].copy_from_slice(&e[..d]);
        for (p, &ep) in e[..d].iter().enumerate() {
            let hrow = &b.hinv[(jj + p) * len..(jj + p + 1) * len];
            for (wk, &hk) in row[j + d..b.end].iter_mut().zip(&hrow[jj + d..]) {
                *wk -= ep * hk;
            }
        }
    }
}

/// `W[:, end..] −= Err · Hinv[block, end..]`.
pub fn gptq_update_rest(w: &mut [f32], cols: usize, end: usize, err: &[f32], hinv_rest: &[f32]) {
    let rows = w.len() / cols;
    let n = cols - end;
    if rows == 0 || n == 0 {
        return;
    }
    let len = err.len() / rows;
    if len == 0 {
        return;
    }
    let br = rows_per_task(rows);
    w.par_chunks_mut(br * cols)
        .zip(err.par_chunks(br * len))
        .for_each(|(wb, eb)| {
            let m = wb.len() / cols;
            // SAFETY: A = eb (m x len), B = hinv_rest (len x n), C = the
            // columns end..cols of wb's m rows (row stride cols); all in bounds.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    len,
                    n,
                    -1.0,
                    eb.as_ptr(),
                    len as isize,
                    1,
                    hinv_rest.as_ptr(),
                    n as isize,
                    1,
                    1.0,
                    wb.as_mut_ptr().add(end),
                    cols as isize,
                    1,
                );
            }
        });
}
