// Dense f32 member of the matmul family: y[t, row0 + r] = sum_k x[t, k] * w[r, k]
// for reference (unquantized) models and the f32 output head. The host
// splits w by rows under the binding limit; each dispatch covers one chunk.
// Plain on purpose: one invocation per weight row and TM tokens, so every
// weight load feeds TM multiply-adds and there are no barriers, which is
// what software Vulkan (lavapipe) runs fastest; always f32 accumulation.
// CPU reference: src/model/forward/ops.rs (matmul_t).

const WG: u32 = 64u;
const TM: u32 = 4u; // tokens per invocation (one vec4 accumulator)

// Mirrors `Params` in src/backend/gpu/matmul_dense.rs.
struct Params {
    tokens: u32,
    rows: u32,        // rows of this weight chunk
    cols: u32,
    out_stride: u32,  // row stride of y: all rows of the weight
    row0: u32,        // first row of this chunk in y
    row_blocks: u32,  // workgroups per TM-token block
    _p0: u32,
    _p1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(WG)
fn dense(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let flat = wg.x + wg.y * nwg.x;
    let r = (flat % p.row_blocks) * WG + lid;
    let t0 = (flat / p.row_blocks) * TM;
    if (r >= p.rows || t0 >= p.tokens) {
        return;
    }
    let nt = min(TM, p.tokens - t0);
    // Token slots past the last token re-read it (results discarded): the
    // inner loop stays branch-free.
    let x0 = t0 * p.cols;
    let x1 = (t0 + min(1u, nt - 1u)) * p.cols;
    let x2 = (t0 + min(2u, nt - 1u)) * p.cols;
    let x3 = (t0 + min(3u, nt - 1u)) * p.cols;
    let wb = r * p.cols;
    var acc = vec4<f32>(0.0);
    for (var k = 0u; k < p.cols; k++) {
        acc += w[wb + k] * vec4<f32>(x[x0 + k], x[x1 + k], x[x2 + k], x[x3 + k]);
    }
    for (var i = 0u; i < nt; i++) {
        y[(t0 + i) * p.out_stride + p.row0 + r] = acc[i];
    }
}
