//! The VQ grid GPTQ's column loop rounds onto ([`crate::encoding::Grid`]
//! with a step of `dim` columns): its parameters are one codebook per
//! group, fitted by weighted EM ([`super::em`]) over all the rows that
//! share it, by the driver ([`crate::quant::gptvq`]) when the loop reaches
//! the codebook's span; the loop itself only assigns.

use super::em::{self, VqInit};
use super::{quantize_codebook, VqScheme};
use crate::encoding::Grid;
use serde::Serialize;

/// The importance of each coordinate of a vector when assigning it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignWeight {
    /// `1 / [H⁻¹]ⱼⱼ` of the columns still to quantize (the paper's eq. 4):
    /// with `U` the upper factor of H⁻¹ and `F` the vector's columns,
    /// `diag(U_FFᵀ U_FF)`.
    InverseDiag,
    /// `1 / U_jj`, the factor's diagonal unsquared (the official code).
    CholeskyDiag,
}

impl AssignWeight {
    /// Weights of the `d` coordinates of a vector from `u`, the `[d, d]`
    /// row-major block `U_FF` of the upper factor of H⁻¹.
    pub fn of(self, u: &[f32], d: usize, out: &mut [f32]) {
        for p in 0..d {
            out[p] = match self {
                AssignWeight::InverseDiag => {
                    let s: f32 = (0..=p).map(|a| u[a * d + p] * u[a * d + p]).sum();
                    1.0 / s.max(f32::MIN_POSITIVE)
                }
                AssignWeight::CholeskyDiag => 1.0 / u[p * d + p].max(f32::MIN_POSITIVE),
            };
        }
    }
}

/// Codebooks of one [`VqScheme`] and how they are fitted and used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VqGrid {
    pub scheme: VqScheme,
    pub weighting: AssignWeight,
    pub init: VqInit,
    /// EM iterations at most (stops when no assignment changes).
    pub em_iters: usize,
    pub seed: u64,
}

impl VqGrid {
    /// Whether each row block has its own scale.
    pub fn scaled(&self) -> bool {
        self.scheme.scale_block > 0
    }

    /// The k-means++ seed of the group of points `w`: seeded by the data, so
    /// every group draws its own sample.
    pub fn seed_for(&self, w: &[f32]) -> u64 {
        w.iter()
            .take(8)
            .fold(self.seed, |h, v| h.rotate_left(13) ^ v.to_bits() as u64)
    }
}

impl Grid for VqGrid {
    fn key(&self) -> String {
        format!(
            "vq{}x{}.{:?}{}",
            self.scheme.dim,
            self.scheme.bits,
            self.weighting,
            if self.scaled() { ".scaled" } else { "" }
        )
    }

    fn code_bits(&self) -> u32 {
        self.scheme.index_bits()
    }

    /// The codebook's values, then its scale; with row scales, then the
    /// row block's scale (and each row its own set, see `rows_per_params`).
    fn params_per_group(&self) -> usize {
        self.scheme.codebook_len() + 1 + usize::from(self.scaled())
    }

    fn step(&self) -> usize {
        self.scheme.dim as usize
    }

    fn fits_rows(&self) -> bool {
        false
    }

    /// Rows sharing a parameter set: the codebook's rows, or one row when
    /// each row block has its own scale (the set repeats the codebook).
    fn rows_per_params(&self) -> usize {
        match self.scaled() {
            true => 1,
            false => self.scheme.rows_per_codebook(),
        }
    }

    /// EM over `w` (the group's vectors, `dim` values each) weighted by
    /// `weights`, then the codebook onto its stored grid.
    fn fit(&self, w: &[f32], weights: &[f32], params: &mut [f32]) {
        let s = &self.scheme;
        em::fit(
            w,
            weights,
            s.dim as usize,
            s.centroids(),
            self.em_iters,
            self.init,
            self.seed_for(w),
            &mut params[..s.codebook_len()],
        );
        let len = s.codebook_len();
        params[len] = quantize_codebook(&mut params[..len], s.codebook_bits);
    }

    fn round(&self, w: f32, params: &[f32]) -> (u32, f32) {
        // Scalar rounding onto the first coordinate of each centroid (all
        // of it for 1D codebooks); the column loop uses `round_vector`.
        let d = self.step();
        let cb = &params[..self.scheme.codebook_len()];
        let (i, _) = em::nearest(&[w], &[1.0], &first_coordinates(cb, d), 1);
        (i as u32, params[i * d])
    }

    /// The centroid nearest to `x` under the weighting, `x` divided by the
    /// row block's scale when there is one (the weights are common to the
    /// vector's coordinates, so the same centroid is nearest either way).
    fn round_vector(&self, x: &[f32], u: &[f32], params: &[f32], out: &mut [f32]) -> u32 {
        let d = self.step();
        let len = self.scheme.codebook_len();
        let mut wts = [0f32; 4];
        self.weighting.of(u, d, &mut wts);
        let scale = if self.scaled() { params[len + 1] } else { 1.0 };
        let mut xs = [0f32; 4];
        for (o, &v) in xs.iter_mut().zip(&x[..d]) {
            *o = v / scale;
        }
        let (i, _) = em::nearest(&xs[..d], &wts[..d], &params[..len], d);
        for (o, &c) in out[..d].iter_mut().zip(&params[i * d..(i + 1) * d]) {
            *o = scale * c;
        }
        i as u32
    }

    /// The grid's half of `shaders/vq_columns.wgsl`: `grid_round_vector`
    /// is [`VqGrid::round_vector`] in the same f32 operations; `grid_fit`
    /// is empty (codebooks are fitted by the driver, over many rows).
    fn wgsl(&self) -> String {
        let s = &self.scheme;
        format!(
            "const GRID_PARAMS: u32 = {params}u;
const GRID_STEP: u32 = {d}u;
const VQ_CENTROIDS: u32 = {k}u;
const VQ_INVERSE_DIAG: bool = {inverse};
const VQ_SCALED: bool = {scaled};
const VQ_CODEBOOK_VALUES: u32 = {len}u;
const VQ_TINY: f32 = 1.17549435e-38;

fn grid_fit(row: u32, first: u32, last: u32, at: u32) {{}}

// Nearest first coordinate (the scalar loop; unused by vector grids).
fn grid_round(x: f32, at: u32) -> vec2<f32> {{
    var best = 0u;
    for (var c = 1u; c < VQ_CENTROIDS; c++) {{
        if (abs(x - gparams[at + c * GRID_STEP]) < abs(x - gparams[at + best * GRID_STEP])) {{
            best = c;
        }}
    }}
    return vec2<f32>(f32(best), gparams[at + best * GRID_STEP]);
}}

fn grid_round_vector(x: vec4<f32>, u: mat4x4<f32>, at: u32,
                     out: ptr<function, vec4<f32>>) -> u32 {{
    var wt = vec4<f32>(0.0);
    for (var q = 0u; q < GRID_STEP; q++) {{
        if (VQ_INVERSE_DIAG) {{
            var s = 0.0;
            for (var a = 0u; a <= q; a++) {{
                s += u[a][q] * u[a][q];
            }}
            wt[q] = 1.0 / max(s, VQ_TINY);
        }} else {{
            wt[q] = 1.0 / max(u[q][q], VQ_TINY);
        }}
    }}
    var scale = 1.0;
    if (VQ_SCALED) {{
        scale = gparams[at + VQ_CODEBOOK_VALUES + 1u];
    }}
    let xs = x / scale;
    var best = 0u;
    var best_d = 3.4e38;
    for (var c = 0u; c < VQ_CENTROIDS; c++) {{
        var e = 0.0;
        for (var q = 0u; q < GRID_STEP; q++) {{
            let r = xs[q] - gparams[at + c * GRID_STEP + q];
            e += wt[q] * r * r;
        }}
        if (e < best_d) {{
            best = c;
            best_d = e;
        }}
    }}
    for (var q = 0u; q < GRID_STEP; q++) {{
        (*out)[q] = scale * gparams[at + best * GRID_STEP + q];
    }}
    return best;
}}
",
            params = self.params_per_group(),
            d = s.dim,
            k = s.centroids(),
            inverse = self.weighting == AssignWeight::InverseDiag,
            scaled = self.scaled(),
            len = s.codebook_len(),
        )
    }
}

fn first_coordinates(params: &[f32], d: usize) -> Vec<f32> {
    params.chunks_exact(d).map(|c| c[0]).collect()
}
