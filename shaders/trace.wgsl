// Partial sums of tr(A H A^T) for GPTQ's error report:
//
//   partial[out0 + tile] = sum_{r, c in the tile} A[r, c] * sum_{k < k_len} A[r, k0 + k] * H[k, c]
//
// for one chunk A `[a_rows, cols]` of rows of a matrix and one chunk H
// `[k_len, cols]` of rows k0.. of the symmetric Hessian (the host splits
// both so each fits one storage binding). Every (A chunk, H chunk, tile)
// term is written once; the host sums them all in f64, which gives
// tr(A H A^T) = sum_r sum_c A[r, c] (A H)[r, c] without reading A·H back.
// The CPU reference is `quadratic_trace` in src/backend/cpu/trace.rs.
//
// Tiling as in hessian.wgsl: a 16x16 workgroup computes a 64x64 tile of
// A·H (rows r, columns c), 4x4 per invocation in registers; each step
// stages 16 k's of the tile's 64 rows of A and 64 columns of H in
// workgroup memory (2 x 4 KiB). The tile is then multiplied elementwise
// with A and reduced to one value in workgroup memory.

struct Params {
    a_rows: u32,
    cols: u32,
    k0: u32,
    k_len: u32,
    out0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> h: array<f32>;
@group(0) @binding(3) var<storage, read_write> partial: array<f32>;

const TILE: u32 = 64u;
const TK: u32 = 16u;
const PER: u32 = 4u;

var<workgroup> sa: array<f32, 1024>; // [TK][TILE]: A[r_base + i, k0 + kb + kk]
var<workgroup> sh: array<f32, 1024>; // [TK][TILE]: H[kb + kk, c_base + j]
var<workgroup> red: array<f32, 256>;

@compute @workgroup_size(16, 16)
fn partial_traces(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let r_base = wg.y * TILE;
    let c_base = wg.x * TILE;
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var kb = 0u; kb < p.k_len; kb += TK) {
        // 2 x TK*TILE = 2 x 1024 values staged by 256 invocations.
        for (var s = 0u; s < 4u; s++) {
            let idx = li + s * 256u;
            // A: neighbouring invocations read neighbouring k of one row.
            let ar = idx / TK;
            let ak = idx % TK;
            var va = 0.0;
            if (r_base + ar < p.a_rows && kb + ak < p.k_len) {
                va = a[(r_base + ar) * p.cols + p.k0 + kb + ak];
            }
            sa[ak * TILE + ar] = va;
            // H: neighbouring invocations read neighbouring columns of one row.
            let hk = idx / TILE;
            let hc = idx % TILE;
            var vh = 0.0;
            if (kb + hk < p.k_len && c_base + hc < p.cols) {
                vh = h[(kb + hk) * p.cols + c_base + hc];
            }
            sh[hk * TILE + hc] = vh;
        }
        workgroupBarrier();
        for (var tt = 0u; tt < TK; tt++) {
            var x: array<f32, 4>;
            var y: array<f32, 4>;
            for (var i = 0u; i < PER; i++) {
                x[i] = sa[tt * TILE + lid.y * PER + i];
                y[i] = sh[tt * TILE + lid.x * PER + i];
            }
            for (var i = 0u; i < PER; i++) {
                for (var j = 0u; j < PER; j++) {
                    acc[i * PER + j] = fma(x[i], y[j], acc[i * PER + j]);
                }
            }
        }
        workgroupBarrier();
    }
    // (A·H)[r, c] * A[r, c] over the invocation's 4x4, then over the workgroup.
    var sum = 0.0;
    for (var i = 0u; i < PER; i++) {
        let r = r_base + lid.y * PER + i;
        for (var j = 0u; j < PER; j++) {
            let c = c_base + lid.x * PER + j;
            if (r < p.a_rows && c < p.cols) {
                sum = fma(acc[i * PER + j], a[r * p.cols + c], sum);
            }
        }
    }
    red[li] = sum;
    workgroupBarrier();
    for (var stride = 128u; stride > 0u; stride = stride / 2u) {
        if (li < stride) {
            red[li] += red[li + stride];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        partial[p.out0 + wg.y * nwg.x + wg.x] = red[0];
    }
}
