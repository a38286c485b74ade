//! `quantize --method gptvq`'s options: the codebook scheme (from
//! `--vq-group-size` or `--bpw`) and how the codebooks are fitted.

use llmq_gpu::encoding::vq::{AssignWeight, VqInit, VqScheme};
use llmq_gpu::quant::gptvq::GptvqOptions;
use llmq_gpu::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct VqArgs {
    /// GPTVQ: weights per vector (consecutive columns of a row): 1, 2 or 4.
    /// Each vector's index has dim × --bits bits.
    #[arg(long, default_value_t = 2)]
    vq_dim: u32,
    /// GPTVQ: weights per codebook (256 columns × group/256 rows; smaller
    /// groups span fewer columns of one row). Default: from --bpw.
    #[arg(long, conflicts_with = "bpw")]
    vq_group_size: Option<usize>,
    /// GPTVQ: target bits per weight counting the codebooks and any row
    /// scales (as the paper's tables: 2.125, 2.25, 3.125, 4.125); picks the
    /// group size and prints it. Default 0.125 above --bits.
    #[arg(long)]
    bpw: Option<f64>,
    /// GPTVQ: EM iterations per codebook at most (stops when no assignment
    /// changes).
    #[arg(long, default_value_t = 100)]
    em_iters: usize,
    /// GPTVQ: codebook initialisation.
    #[arg(long, default_value = "mahalanobis", value_parser = ["mahalanobis", "kmeans++"])]
    vq_init: String,
    /// GPTVQ: bits of each stored centroid value: 8 (signed, one scale per
    /// codebook) or 0 (f16).
    #[arg(long, default_value_t = 8)]
    codebook_bits: u32,
    /// GPTVQ 1D: store each tensor's codebooks (sorted) as factors of rank
    /// ⌊k × FRACTION⌋ times one shared f16 basis (the paper's SVD
    /// compression, e.g. 0.5). Off by default: at equal bits the 8-bit
    /// codebooks did better in the paper.
    #[arg(long, value_name = "FRACTION")]
    svd_rank: Option<f64>,
    /// GPTVQ: divide each block of this many columns of a row by its
    /// largest magnitude before fitting and assigning (a 4-bit log-domain
    /// scale per block, 4/BLOCK bits per weight; the official code's
    /// --vq-scaling-blocksize, e.g. 64). Off by default.
    #[arg(long, value_name = "BLOCK")]
    vq_scale_block: Option<u32>,
    /// GPTVQ: keep the EM codebooks instead of re-solving the centroids
    /// after assignment.
    #[arg(long)]
    no_codebook_update: bool,
    /// GPTVQ: conjugate-gradient steps of the codebook update at most (one
    /// rows × cols² GEMM each; it stops earlier when converged).
    #[arg(long, default_value_t = 25)]
    codebook_update_steps: usize,
    /// GPTVQ: importance of a vector's coordinates when assigning it:
    /// cholesky-diag (the official code's 1/U_jj; measured better on text
    /// of other domains) or inverse-diag (1/[H⁻¹]jj, the paper's eq. 4).
    #[arg(long, default_value = "cholesky-diag", value_parser = ["inverse-diag", "cholesky-diag"])]
    vq_weighting: String,
}

impl VqArgs {
    /// The options for `bits` bits per weight of index.
    pub fn options(&self, bits: u32, seed: u64) -> Result<GptvqOptions> {
        let group = match (self.vq_group_size, self.bpw) {
            (Some(g), _) => g,
            (None, bpw) => {
                let target = bpw.unwrap_or(bits as f64 + 0.125);
                // Row scales take their 4/BLOCK bits off the codebooks' share.
                let scale_bits = self.vq_scale_block.map_or(0.0, |b| {
                    llmq_gpu::encoding::vq::row_scale::BITS as f64 / b.max(1) as f64
                });
                let g = VqScheme::group_for_bpw(
                    self.vq_dim,
                    bits,
                    self.codebook_bits,
                    target - scale_bits,
                )?;
                eprintln!(
                    "--bpw {target}: {}D codebooks of {bits} bits per weight take groups of {g} \
                     weights{}",
                    self.vq_dim,
                    match scale_bits > 0.0 {
                        true => format!(" ({scale_bits:.4} bits per weight go to row scales)"),
                        false => String::new(),
                    }
                );
                g
            }
        };
        let mut scheme = VqScheme::new(self.vq_dim, bits, group, self.codebook_bits)?;
        if let Some(b) = self.vq_scale_block {
            scheme = scheme.with_scale_block(b)?;
        }
        if let Some(f) = self.svd_rank {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::Config(format!(
                    "--svd-rank {f}: a fraction of the centroids between 0 and 1 (e.g. 0.5)"
                )));
            }
            let rank = (scheme.centroids() as f64 * f).floor() as u32;
            scheme = scheme.with_svd_rank(rank)?;
            eprintln!(
                "--svd-rank {f}: codebooks of {} centroids stored at rank {rank}",
                scheme.centroids()
            );
        }
        Ok(GptvqOptions {
            em_iters: self.em_iters,
            init: match self.vq_init.as_str() {
                "kmeans++" => VqInit::KmeansPlusPlus,
                _ => VqInit::Mahalanobis,
            },
            weighting: match self.vq_weighting.as_str() {
                "inverse-diag" => AssignWeight::InverseDiag,
                _ => AssignWeight::CholeskyDiag,
            },
            codebook_update: !self.no_codebook_update,
            update_iters: self.codebook_update_steps,
            seed,
            ..GptvqOptions::new(scheme)
        })
    }
}

/// The refusal for GPTVQ without calibration.
pub fn needs_calibration() -> Error {
    Error::Config(
        "--method gptvq needs calibration: --calib FILE (any UTF-8 text in the model's \
         language), a folder of texts, or self:N (N windows sampled from the model itself)"
            .into(),
    )
}
