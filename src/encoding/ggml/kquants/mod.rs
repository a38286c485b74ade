//! llama.cpp's k-quants: 256-weight super-blocks of 16- or 32-weight
//! sub-blocks whose scales are small integers of f16 super-block scales.
//! Each type's block, dequantization and reference quantizer
//! (`quantize_row_q*_K_ref`, what `llama-quantize` runs without an
//! imatrix) lives in its file; the scale searches they share in `search`.

mod q2_q3;
mod q4_q5;
mod q6;
pub(crate) mod search;

use super::{f16_bits, h, Block, Header, Quantize, QK_K};

pub(crate) use q2_q3::{BlockQ2K, BlockQ3K};
pub(crate) use q4_q5::{fit_weighted as fit_weighted_k, scale_min_k4, BlockQ4K, BlockQ5K};
pub(crate) use q6::BlockQ6K;
