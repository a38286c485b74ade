// INT8 activations (src/encoding/act8.rs): token t of x [tokens, cols] as
// codes q = clamp(floor(x * inv + 0.5), -127, 127), four per word (column
// 4i + j in byte j), with scale s[t] = max|x_t| / 127 (dynamic) or the
// static scale, inv = 1 / s (0 for an all-zero token). One workgroup per
// token: the max is a tree reduction (exact in any order), then each
// thread packs words. The CPU reference does the same operations; only a
// GPU whose f32 division is not correctly rounded can move a code by one.

struct Params {
    tokens: u32,
    cols: u32,
    words: u32,       // cols / 4
    static_scale: f32, // 0: per token
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> xs: array<f32>;

var<workgroup> red: array<f32, 64>;

@compute @workgroup_size(64)
fn quantize_i8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so the early exit keeps barriers uniform.
    let t = wg.x + wg.y * nwg.x;
    if (t >= p.tokens) {
        return;
    }
    let xb = t * p.cols;
    var m = 0.0;
    for (var c = lid; c < p.cols; c += WG) {
        m = max(m, abs(x[xb + c]));
    }
    red[lid] = m;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    var scale = red[0] / 127.0;
    if (p.static_scale > 0.0) {
        scale = p.static_scale;
    }
    var inv = 0.0;
    if (scale > 0.0) {
        inv = 1.0 / scale;
    }
    for (var w = lid; w < p.words; w += WG) {
        var word = 0u;
        for (var j = 0u; j < 4u; j++) {
            let q = i32(clamp(floor(x[xb + 4u * w + j] * inv + 0.5), -127.0, 127.0));
            word |= (bitcast<u32>(q) & 0xffu) << (8u * j);
        }
        xq[t * p.words + w] = word;
    }
    if (lid == 0u) {
        xs[t] = scale;
    }
}
