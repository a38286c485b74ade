// GPTVQ's codebook update on the GPU (CPU reference: `Assignment` in
// src/encoding/vq/assignment.rs): the two halves of the normal-equation
// operator Pᵀ(P c · H) around the dense GEMM of matmul_dense.wgsl, on one
// chunk of whole row groups of a VQ weight.
//
// - expand: Q = P c, every weight of the chunk its centroid's value (one
//   invocation per weight; `src` all codebooks of the weight);
// - gather: Pᵀ G, each codebook value the sum of G (`src`, the chunk's
//   [rows, cols]) over the weights assigned to it: one workgroup per
//   (centroid, codebook of the chunk), strided sums and a tree reduction,
//   no float atomics (as vq_em.wgsl's M-step); `dst` the chunk's codebooks.
//
// With row scales (p.scale_block > 0) a weight is its row block's scale
// times its centroid value: expand multiplies by it, gather sums G times
// it. The host prepends `const VQ_INDEX_BITS` and vq_index.wgsl.

struct Params {
    rows: u32,
    cols: u32,
    d: u32,
    k: u32,
    words_per_row: u32,
    rows_per_codebook: u32,
    span: u32,
    spans: u32,
    // First codebook of the chunk in the weight's numbering (expand).
    codebook0: u32,
    // Columns per row scale, 0 for none.
    scale_block: u32,
    // Row scales per row.
    scale_blocks: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// The chunk's packed indices, [rows, words_per_row].
@group(0) @binding(1) var<storage, read> vq_idx: array<u32>;
@group(0) @binding(2) var<storage, read> src: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;
// The chunk's row scales, [rows, scale_blocks] (one unused value without).
@group(0) @binding(4) var<storage, read> row_scales: array<f32>;

const WG: u32 = 64u;

var<workgroup> partial: array<vec4<f32>, WG>;

// The row scale of the weight (r, j) of the chunk.
fn scale_of(r: u32, j: u32) -> f32 {
    if (p.scale_block == 0u) {
        return 1.0;
    }
    return row_scales[r * p.scale_blocks + j / p.scale_block];
}

// Codebook (chunk-local) of the weight (r, j).
fn codebook_of(r: u32, j: u32) -> u32 {
    return (r / p.rows_per_codebook) * p.spans + j / p.span;
}

@compute @workgroup_size(64)
fn expand(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let at = (wg.x + wg.y * nwg.x) * WG + lid;
    if (at >= p.rows * p.cols) {
        return;
    }
    let r = at / p.cols;
    let j = at % p.cols;
    let i = vq_index(r * p.words_per_row, j / p.d);
    let cb = p.codebook0 + codebook_of(r, j);
    dst[at] = scale_of(r, j) * src[(cb * p.k + i) * p.d + j % p.d];
}

// One workgroup per centroid wg.x of the chunk's codebook wg.y.
@compute @workgroup_size(64)
fn gather(@builtin(workgroup_id) wg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let c = wg.x;
    let cb = wg.y;
    let r0 = (cb / p.spans) * p.rows_per_codebook;
    let c0 = (cb % p.spans) * p.span;
    let per_row = (min(c0 + p.span, p.cols) - c0) / p.d;
    let n = min(p.rows_per_codebook, p.rows - r0) * per_row;
    var s = vec4<f32>(0.0);
    for (var v = lid; v < n; v += WG) {
        let r = r0 + v / per_row;
        let j = c0 + (v % per_row) * p.d;
        if (vq_index(r * p.words_per_row, j / p.d) == c) {
            let sc = scale_of(r, j);
            for (var q = 0u; q < p.d; q++) {
                s[q] += sc * src[r * p.cols + j + q];
            }
        }
    }
    partial[lid] = s;
    workgroupBarrier();
    for (var half = WG / 2u; half > 0u; half >>= 1u) {
        if (lid < half) {
            partial[lid] += partial[lid + half];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        for (var q = 0u; q < p.d; q++) {
            dst[(cb * p.k + c) * p.d + q] = partial[0][q];
        }
    }
}
