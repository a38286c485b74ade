//! x86 register tiles of the INT8 × INT8 matmul: 8 outputs at once
//! (2 rows × 4 tokens for batches, 8 rows × 1 token for a GEMV), each
//! loaded weight and activation vector used 4 or 8 times, the 8 group sums
//! reduced together by one `hadd` tree instead of one horizontal sum each.
//!
//! With AVX-VNNI (`vpdpbusd`, 32 u8 × i8 products summed into i32 lanes
//! without saturation) the weights' stored bytes serve as they are: they
//! hold `w + 128`, so a group's sum is `Σ w·x + 128·Σ x`, and the second
//! term, one per token and group, is subtracted once. Without VNNI the
//! sign trick of [`super::dot_i8_avx2`] does the same in three steps.
//! Every output is `s_t · Σ_g (scale_g · dot_g)`, groups in order, exactly
//! as the portable loop computes it: the results are bit-identical.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// What the tiles read: the weight's words and scales, the activations'
/// words and scales, and (VNNI) `128 · Σ x` per group and token.
pub(super) struct Operands<'a> {
    pub w: &'a [u32],
    pub w_scales: &'a [f32],
    pub rows: usize,
    pub words_per_row: usize,
    /// `⌈words_per_row / group_words⌉`: the last group may be shorter.
    pub groups: usize,
    pub group_words: usize,
    pub x: &'a [u32],
    pub x_scales: &'a [f32],
    pub tokens: usize,
    /// `[groups, tokens]`: `128 · Σ x` over the group's columns.
    pub offsets: Vec<i32>,
}

/// The instruction set the tiles run on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Tiles {
    AvxVnni,
    Avx512Vnni,
    Avx2,
}

impl Tiles {
    /// The best this CPU runs, if any and if every group (the last one
    /// may be shorter) is whole 32-byte vectors; otherwise the portable
    /// loop serves.
    pub fn detect(group_words: usize, words_per_row: usize) -> Option<Tiles> {
        if !group_words.is_multiple_of(8) || !words_per_row.is_multiple_of(8) {
            return None;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avxvnni") {
                return Some(Tiles::AvxVnni);
            }
            if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                return Some(Tiles::Avx512Vnni);
            }
            if super::super::avx2_fma() {
                return Some(Tiles::Avx2);
            }
        }
        None
    }

    /// Whether the sums carry the `128 · Σ x` offset.
    pub fn offset(self) -> bool {
        self != Tiles::Avx2
    }

    /// The outputs of rows `r0..r0 + R` for tokens `t0..t0 + T` (indices
    /// past the end repeat the last row or token; the caller drops them).
    pub fn tile<const R: usize, const T: usize>(
        self,
        op: &Operands,
        r0: usize,
        t0: usize,
    ) -> [[f32; T]; R] {
        // SAFETY: `detect` returned this variant only where the CPU has
        // the instructions; every index is clamped into the operands.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match self {
                Tiles::AvxVnni => tile_avx_vnni::<R, T>(op, r0, t0),
                Tiles::Avx512Vnni => tile_avx512_vnni::<R, T>(op, r0, t0),
                Tiles::Avx2 => tile_avx2::<R, T>(op, r0, t0),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("no x86 tiles off x86")
    }
}

/// The 8 lane sums of 8 vectors, in order, by a tree of `hadd`s.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn reduce8(a: [__m256i; 8]) -> __m256i {
    let q0 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[0], a[1]), _mm256_hadd_epi32(a[2], a[3]));
    let q1 = _mm256_hadd_epi32(_mm256_hadd_epi32(a[4], a[5]), _mm256_hadd_epi32(a[6], a[7]));
    _mm256_add_epi32(
        _mm256_permute2x128_si256(q0, q1, 0x20),
        _mm256_permute2x128_si256(q0, q1, 0x31),
    )
}

/// One tile kernel per instruction set: `$prep` turns a weight vector into
/// what `$step` multiplies with an activation vector into an accumulator.
macro_rules! tile_kernel {
    ($name:ident, $feature:literal, |$w:ident| $prep:expr, |$acc:ident, $wp:ident, $x:ident| $step:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $feature)]
        unsafe fn $name<const R: usize, const T: usize>(
            op: &Operands,
            r0: usize,
            t0: usize,
        ) -> [[f32; T]; R] {
            const { assert!(R * T == 8) };
            let rows: [usize; R] = std::array::from_fn(|i| (r0 + i).min(op.rows - 1));
            let toks: [usize; T] = std::array::from_fn(|j| (t0 + j).min(op.tokens - 1));
            let xpr = op.words_per_row;
            let load = |s: &[u32], at: usize| {
                debug_assert!(at + 8 <= s.len());
                // SAFETY: `at + 8 <= len`: rows and tokens are clamped and
                // groups are whole vectors (`Tiles::detect`).
                unsafe { _mm256_loadu_si256(s.as_ptr().add(at).cast()) }
            };
            let mut sums = _mm256_setzero_ps();
            for g in 0..op.groups {
                let mut acc = [[_mm256_setzero_si256(); T]; R];
                let end = ((g + 1) * op.group_words).min(op.words_per_row);
                for k in (g * op.group_words..end).step_by(8) {
                    let xs: [__m256i; T] = std::array::from_fn(|j| load(op.x, toks[j] * xpr + k));
                    for i in 0..R {
                        let $w = load(op.w, rows[i] * op.words_per_row + k);
                        let $wp = $prep;
                        for j in 0..T {
                            let ($acc, $x) = (acc[i][j], xs[j]);
                            acc[i][j] = $step;
                        }
                    }
                }
                let dots = reduce8(std::array::from_fn(|l| acc[l / T][l % T]));
                let offsets: [i32; 8] = std::array::from_fn(|l| match op.offsets.len() {
                    0 => 0,
                    _ => op.offsets[g * op.tokens + toks[l % T]],
                });
                let scales: [f32; 8] =
                    std::array::from_fn(|l| op.w_scales[rows[l / T] * op.groups + g]);
                let dots = _mm256_sub_epi32(dots, _mm256_loadu_si256(offsets.as_ptr().cast()));
                let scaled =
                    _mm256_mul_ps(_mm256_loadu_ps(scales.as_ptr()), _mm256_cvtepi32_ps(dots));
                sums = _mm256_add_ps(sums, scaled);
            }
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), sums);
            std::array::from_fn(|i| {
                std::array::from_fn(|j| op.x_scales[toks[j]] * lanes[i * T + j])
            })
        }
    };
}

tile_kernel!(tile_avx_vnni, "avx2,avxvnni", |w| w, |acc, wp, x| {
    _mm256_dpbusd_avx_epi32(acc, wp, x)
});

tile_kernel!(
    tile_avx512_vnni,
    "avx2,avx512vnni,avx512vl",
    |w| w,
    |acc, wp, x| _mm256_dpbusd_epi32(acc, wp, x)
);

// |w| (unsigned) times x with w's sign, pairs to i16, then to i32.
tile_kernel!(
    tile_avx2,
    "avx2",
    |w| {
        let s = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
        (s, _mm256_sign_epi8(s, s))
    },
    |acc, wp, x| {
        let p = _mm256_maddubs_epi16(wp.1, _mm256_sign_epi8(x, wp.0));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
);
