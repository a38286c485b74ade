// Row and element kernels of the forward pass: RMSNorm, residual add, bias
// add and the SwiGLU activation. They share one binding layout (uniform, two read-only
// inputs, one read-write output) so the wrapper builds them the same way;
// an entry that needs one input gets it bound twice.
// CPU reference: src/backend/cpu/ops.rs (rms_norm, add_in_place, add_bias, silu_mul).

const WG: u32 = 64u;

// Mirrors `Params` in src/backend/gpu/elementwise.rs.
struct Params {
    n: u32,      // rows (rms_norm) or elements (add, add_bias, silu_mul)
    cols: u32,   // row width (rms_norm, add_bias)
    eps: f32,
    _p0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

var<workgroup> red: array<f32, WG>;

// out[row] = a[row] * rsqrt(mean(a[row]^2) + eps) * b: one workgroup per row,
// strided partial sums of squares, then a tree reduction.
@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wg.x + wg.y * nwg.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let v = a[base + j];
        s += v * v;
    }
    red[lid] = s;
    workgroupBarrier();
    for (var k = WG / 2u; k > 0u; k >>= 1u) {
        if (lid < k) {
            red[lid] += red[lid + k];
        }
        workgroupBarrier();
    }
    // 1 / sqrt rather than inverseSqrt: the latter may be approximate.
    let r = 1.0 / sqrt(red[0] / f32(p.cols) + p.eps);
    for (var j = lid; j < p.cols; j += WG) {
        out[base + j] = a[base + j] * r * b[j];
    }
}

fn flat_id(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * WG;
}

// out += a (the residual connection).
@compute @workgroup_size(WG)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        out[i] += a[i];
    }
}

// out[r, j] += a[j]: a bias broadcast over the rows (Qwen2's q/k/v).
@compute @workgroup_size(WG)
fn add_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        out[i] += a[i % p.cols];
    }
}

// out = silu(out) * a, out holding the gate projection and a the up projection.
@compute @workgroup_size(WG)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat_id(gid, nwg);
    if (i < p.n) {
        let g = out[i];
        out[i] = g / (1.0 + exp(-g)) * a[i];
    }
}
