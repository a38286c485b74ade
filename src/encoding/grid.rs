//! The grid GPTQ rounds onto, as an interface, so the algorithm is written
//! once for every encoding.
//!
//! GPTQ (see [`crate::quant::gptq`]) walks the columns of a weight in
//! order; for each group of columns a grid fits a few f32 parameters from
//! the group's current (already error-corrected) weights and their `diag(H)`
//! entries, then rounds each weight to a code and the value that code
//! stands for; the error `(w − ŵ) / Hinv[j, j]` is spread over the
//! remaining columns. With act-order the parameters of every group are
//! fitted once from the original weights and stay fixed.
//!
//! A grid is used on both backends: the CPU calls [`Grid::fit`] and
//! [`Grid::round`]; the GPU kernel `shaders/gptq.wgsl` is assembled from
//! [`Grid::wgsl`], which must define, against the kernel's buffers
//! (`w: array<f32>` weights, `hdiag: array<f32>` `diag(H)` of each
//! column, `gparams: array<f32>` group parameters):
//!
//! - `const GRID_PARAMS: u32`, equal to [`Grid::params_per_group`];
//! - `fn grid_fit(row: u32, first: u32, last: u32, at: u32)`: fits the
//!   group of weights `w[row + k]` with `hdiag[k]`, `k` in `first..last`,
//!   writing `gparams[at .. at + GRID_PARAMS]`;
//! - `fn grid_round(x: f32, at: u32) -> vec2<f32>`: the code (as f32) and
//!   the value of `x` under the parameters at `gparams[at..]`;
//!
//! computing what `fit` and `round` compute. The GPU caches the kernel under
//! [`Grid::key`], which must therefore name every constant the WGSL holds.

/// One grid (see the module documentation).
pub trait Grid: Send + Sync {
    /// Names the grid and every constant of its WGSL (keys kernel caches).
    fn key(&self) -> String;

    /// Bits of one code; codes are packed as linear integer codes are
    /// ([`crate::encoding::affine::packing`]).
    fn code_bits(&self) -> u32;

    /// f32 parameters per group.
    fn params_per_group(&self) -> usize;

    /// Fits one group's parameters from its weights `w` and their `diag(H)`
    /// entries `hdiag` (as long as `w`) into `params`.
    fn fit(&self, w: &[f32], hdiag: &[f32], params: &mut [f32]);

    /// The code of `w` and the value it stands for, under one group's `params`.
    fn round(&self, w: f32, params: &[f32]) -> (u32, f32);

    /// WGSL of `GRID_PARAMS`, `grid_fit` and `grid_round`.
    fn wgsl(&self) -> String;

    /// Columns rounded together: 1 for scalar grids, the vector dimension
    /// for VQ codebooks (their code is one per vector).
    fn step(&self) -> usize {
        1
    }

    /// Whether the column loop fits each row's dynamic groups itself
    /// ([`Grid::fit`] on the row's weights). `false` for grids whose groups
    /// span many rows (VQ codebooks): their driver fits them over all the
    /// rows and hands them to [`crate::backend::GptqColumns::set_group_params`]
    /// before the group's first column.
    fn fits_rows(&self) -> bool {
        true
    }

    /// Consecutive rows sharing one set of group parameters (1: every row
    /// its own). Parameters are laid out `[rows / rows_per_params, groups,
    /// params_per_group]`; only grids that do not fit rows share them.
    fn rows_per_params(&self) -> usize {
        1
    }

    /// `Some(n)` for grids fitted only on the host, `n` groups at a time
    /// (a k-quant super-block's sub-blocks share its f16 scales; their
    /// WGSL has no `grid_fit`): GPTQ runs them with static groups, fitted
    /// once from the original weights under act-order and otherwise
    /// refitted from the current weights at each block of the column
    /// loop ([`crate::quant::gptq::quantize_on_grid`]).
    fn host_fit_groups(&self) -> Option<usize> {
        None
    }

    /// Rounds the `step()` weights `x` together under `params`, writing
    /// their values to `out` and returning the code. `u` is the `[step,
    /// step]` row-major block of H⁻¹'s upper factor at these columns (what
    /// a vector grid weights its distance by).
    fn round_vector(&self, x: &[f32], u: &[f32], params: &[f32], out: &mut [f32]) -> u32 {
        let _ = u;
        let (q, v) = self.round(x[0], params);
        out[0] = v;
        q
    }
}

/// What GPTQ produced on a grid, in the weight's original column order.
#[derive(Clone, Debug, PartialEq)]
pub struct GridCodes {
    /// `[rows, words_per_row(cols, code_bits)]` packed codes.
    pub packed: Vec<u32>,
    /// `[rows, groups, params_per_group]` group parameters.
    pub params: Vec<f32>,
}
