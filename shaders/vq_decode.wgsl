// The VQ encoding's decode fragment for shaders/matmul.wgsl (the contract
// is at the top of that file): W[r, k] = codebook[c][idx[r, k / DIM] * DIM
// + k % DIM] with c = (r / ROWS_PER_CODEBOOK) * spans + k / span (this
// chunk's rows and codebooks; chunks hold whole row groups). Indices are
// packed as src/encoding/vq/mod.rs stores them: per row a little-endian bit
// stream of INDEX_BITS-bit indices, rows padded to u32 words. The Params
// fields group_len, groups_per_row and words_per_row carry the span, the
// spans per row and the index words per row; the host rewrites the
// constants per pipeline. Spans are multiples of 32 columns, so a 32-column
// unit reads one codebook. CPU reference: src/encoding/vq/matmul.rs.
// vq_index() is shaders/vq_index.wgsl, prepended by the host.

const VQ_DIM: u32 = 2u;
const VQ_INDEX_BITS: u32 = 4u;
const VQ_ROWS_PER_CODEBOOK: u32 = 8u;
const VQ_CODEBOOK_LEN: u32 = 32u;
// Columns per row scale (a multiple of 32), 0 without row scales.
const VQ_SCALE_BLOCK: u32 = 0u;

@group(0) @binding(1) var<storage, read> vq_idx: array<u32>;
@group(0) @binding(2) var<storage, read> codebooks: array<f32>;
// The chunk's row scales [rows, cols / VQ_SCALE_BLOCK] (one unused value
// without).
@group(0) @binding(3) var<storage, read> vq_row_scales: array<f32>;

// The row scale of (row, k), chunk-local.
fn vq_scale(row: u32, k: u32) -> f32 {
    if (VQ_SCALE_BLOCK == 0u) {
        return 1.0;
    }
    // max(): no division by the constant 0 in the branch never taken.
    let b = max(VQ_SCALE_BLOCK, 1u);
    return vq_row_scales[row * (p.cols / b) + k / b];
}

// First value of the codebook of (row, k), chunk-local.
fn vq_codebook(row: u32, k: u32) -> u32 {
    return ((row / VQ_ROWS_PER_CODEBOOK) * p.groups_per_row + k / p.group_len) * VQ_CODEBOOK_LEN;
}

fn weight_in(base: u32, cb: u32, k: u32) -> f32 {
    return codebooks[cb + vq_index(base, k / VQ_DIM) * VQ_DIM + k % VQ_DIM];
}

// Contribution of the 32-column unit u of `row` (0 past the chunk's rows
// and the row's end).
fn unit_dot(row: u32, u: u32, xb: u32, sum_x: f32) -> f32 {
    if (row >= p.rows) {
        return 0.0;
    }
    let base = row * p.words_per_row;
    let k0 = u * 32u;
    let cb = vq_codebook(row, k0);
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        var w = vec4<f32>(0.0);
        for (var e = 0u; e < 4u; e++) {
            let k = k0 + i * 4u + e;
            if (k < p.cols) {
                w[e] = weight_in(base, cb, k);
            }
        }
        acc += w * xs[xb + i];
    }
    return vq_scale(row, k0) * (acc.x + acc.y + acc.z + acc.w);
}

// W[row, k] of this chunk.
fn weight_at(row: u32, k: u32) -> f32 {
    return vq_scale(row, k) * weight_in(row * p.words_per_row, vq_codebook(row, k), k);
}
