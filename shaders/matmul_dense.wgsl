// Dense f32 member of the matmul family: y[t, row0 + r] = sum_k x[t, k] * w[r, k]
// for reference (unquantized) models and the f32 output head. The host
// splits w by rows under the binding limit; each dispatch covers one chunk.
//
// One workgroup per RB rows x TB tokens; its invocations stride over k, so
// neighbouring invocations read neighbouring weights (on lavapipe, where
// invocations are SIMD lanes, this is 2.5x faster than one invocation per
// row), every weight load feeds TB multiply-adds, and a tree reduction in
// workgroup memory sums the partials. Always f32 accumulation.
// CPU reference: src/backend/cpu/ops.rs (matmul_t).

const WG: u32 = 64u;
const RB: u32 = 4u; // rows per workgroup (the lanes of each vec4 accumulator)
const TB: u32 = 4u; // tokens per workgroup (one vec4 accumulator each)

// Mirrors `Params` in src/backend/gpu/matmul_dense.rs.
struct Params {
    tokens: u32,
    rows: u32,        // rows of this weight chunk
    cols: u32,
    out_stride: u32,  // row stride of y: all rows of the weight
    row0: u32,        // first row of this chunk in y
    row_blocks: u32,  // workgroups per TB-token block
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

// Partials of token slot i at red[i * WG + lid], rows in the vec4 lanes.
var<workgroup> red: array<vec4<f32>, TB * WG>;

@compute @workgroup_size(WG)
fn dense(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let flat = wg.x + wg.y * nwg.x;
    let r0 = (flat % p.row_blocks) * RB;
    let t0 = (flat / p.row_blocks) * TB;
    if (t0 >= p.tokens) {
        return;
    }
    // Slots past the last row or token re-read the last one (results
    // discarded): the inner loop stays branch-free.
    let nr = min(RB, p.rows - r0);
    let nt = min(TB, p.tokens - t0);
    let w0 = r0 * p.cols;
    let w1 = (r0 + min(1u, nr - 1u)) * p.cols;
    let w2 = (r0 + min(2u, nr - 1u)) * p.cols;
    let w3 = (r0 + min(3u, nr - 1u)) * p.cols;
    let x0 = t0 * p.cols;
    let x1 = (t0 + min(1u, nt - 1u)) * p.cols;
    let x2 = (t0 + min(2u, nt - 1u)) * p.cols;
    let x3 = (t0 + min(3u, nt - 1u)) * p.cols;
    var a0 = vec4<f32>(0.0);
    var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0);
    var a3 = vec4<f32>(0.0);
    for (var k = lid; k < p.cols; k += WG) {
        let wk = vec4<f32>(w[w0 + k], w[w1 + k], w[w2 + k], w[w3 + k]);
        a0 += x[x0 + k] * wk;
        a1 += x[x1 + k] * wk;
        a2 += x[x2 + k] * wk;
        a3 += x[x3 + k] * wk;
    }
    red[lid] = a0;
    red[WG + lid] = a1;
    red[2u * WG + lid] = a2;
    red[3u * WG + lid] = a3;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var i = 0u; i < TB; i++) {
                red[i * WG + lid] += red[i * WG + lid + s];
            }
        }
        workgroupBarrier();
    }
    // Invocation lid writes token lid / RB, row lid % RB.
    let ti = lid / RB;
    let ri = lid % RB;
    if (ti < nt && ri < nr) {
        y[(t0 + ti) * p.out_stride + p.row0 + r0 + ri] = red[ti * WG][ri];
    }
}
