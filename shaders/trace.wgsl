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
// Tiling: shaders/tile_gemm.wgsl (prepended by the host), a 64x64 tile of
// A·H (rows r, columns c) per 16x16 workgroup, 16 k's per step. The tile is
// then multiplied elementwise with A and reduced to one value in workgroup
// memory.

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

var<workgroup> red: array<f32, 256>;

// The tile's A = this chunk of rows of the matrix (row-major, so
// neighbouring k are neighbours in memory), B = H's rows k0.. (row-major:
// neighbouring columns are).
const TILE_A_K_MAJOR: bool = true;
const TILE_B_K_MAJOR: bool = false;

fn tile_load_a(k: u32, r: u32) -> vec4<f32> {
    let i = tile_lanes(r, p.a_rows) * p.cols + p.k0 + k;
    return tile_mask(r, p.a_rows, vec4<f32>(a[i.x], a[i.y], a[i.z], a[i.w]));
}

fn tile_load_b(k: u32, c: u32) -> vec4<f32> {
    let i = k * p.cols + tile_lanes(c, p.cols);
    return tile_mask(c, p.cols, vec4<f32>(h[i.x], h[i.y], h[i.z], h[i.w]));
}

@compute @workgroup_size(16, 16)
fn partial_traces(@builtin(workgroup_id) wg: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_id) lid: vec3<u32>,
                  @builtin(local_invocation_index) li: u32) {
    let r_base = wg.y * TILE;
    let c_base = wg.x * TILE;
    var acc = tile_gemm(p.k_len, r_base, c_base, lid, li);
    // (A·H)[r, c] * A[r, c] over the invocation's 4x4, then over the workgroup.
    var sum = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let r = r_base + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let c = c_base + lid.x * 4u + j;
            if (r < p.a_rows && c < p.cols) {
                sum = fma(acc[i][j], a[r * p.cols + c], sum);
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
