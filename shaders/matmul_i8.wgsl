// INT8 x INT8 matmul: y[t, row0 + r] = s[t] * sum_g scale[r, g] * acc(r, g, t)
// with acc the exact i32 dot product of group g of weight row r (8-bit
// symmetric codes c, zero-point 128: c ^ 0x80 is the signed weight byte)
// with token t's INT8 activation codes, four per word (dot4I8Packed).
// Groups are summed in order in f32, then scaled by the token's scale: the
// same operations in the same order as the CPU reference
// (src/encoding/act8/mod.rs `matmul_i8`). One thread per output; a
// workgroup covers 64 rows of one token.
//
// matmul_w4a8: 4-bit codes, eight per word (code j at bits 4j), with a u8
// zero-point per group: acc = sum c * x - zero * sum x, both exact in i32
// (src/encoding/act8/w4.rs). Each weight word's nibbles are spread into
// two words of four bytes in column order, against two activation words.

struct Params {
    tokens: u32,
    rows: u32,        // rows of this weight chunk
    x_words: u32,     // words per token of the activations (cols / 4)
    w_words: u32,     // words per weight row (cols / 4)
    groups: u32,      // groups per row
    group_words: u32, // words per group (the last one may be shorter)
    out_stride: u32,  // rows of the whole weight
    row0: u32,        // first row of this chunk in y
    row_blocks: u32,  // workgroups per token
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

const WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read> xq: array<u32>;
@group(0) @binding(4) var<storage, read> xs: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
// matmul_w4a8: u8 zero-points, 4 per word, flat over (row, group) of this chunk.
@group(0) @binding(6) var<storage, read> zeros: array<u32>;

@compute @workgroup_size(64)
fn matmul_i8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let flat = wg.x + wg.y * nwg.x;
    let t = flat / p.row_blocks;
    let r = (flat % p.row_blocks) * WG + lid;
    if (t >= p.tokens || r >= p.rows) {
        return;
    }
    let wb = r * p.w_words;
    let xb = t * p.x_words;
    var acc = 0.0;
    for (var g = 0u; g < p.groups; g++) {
        let k0 = g * p.group_words;
        let k1 = min(k0 + p.group_words, p.x_words);
        var dot = 0i;
        for (var k = k0; k < k1; k++) {
            dot += dot4I8Packed(wq[wb + k] ^ 0x80808080u, xq[xb + k]);
        }
        acc += scales[r * p.groups + g] * f32(dot);
    }
    y[t * p.out_stride + p.row0 + r] = xs[t] * acc;
}

// Nibbles 0..3 of v (its low 16 bits) as the four bytes of a word.
fn spread_nibbles(v: u32) -> u32 {
    var x = v & 0xffffu;
    x = (x | (x << 8u)) & 0x00ff00ffu;
    return (x | (x << 4u)) & 0x0f0f0f0fu;
}

@compute @workgroup_size(64)
fn matmul_w4a8(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let flat = wg.x + wg.y * nwg.x;
    let t = flat / p.row_blocks;
    let r = (flat % p.row_blocks) * WG + lid;
    if (t >= p.tokens || r >= p.rows) {
        return;
    }
    let wb = r * p.w_words;
    let xb = t * p.x_words;
    // group_words counts activation words (4 columns); a weight word holds 8.
    let gw = p.group_words / 2u;
    var acc = 0.0;
    for (var g = 0u; g < p.groups; g++) {
        let k0 = g * gw;
        let k1 = min(k0 + gw, p.w_words);
        var dot = 0i;
        var sum_x = 0i;
        for (var k = k0; k < k1; k++) {
            let v = wq[wb + k];
            let xa = xq[xb + 2u * k];
            let xc = xq[xb + 2u * k + 1u];
            dot += dot4I8Packed(spread_nibbles(v), xa) + dot4I8Packed(spread_nibbles(v >> 16u), xc);
            sum_x += dot4I8Packed(0x01010101u, xa) + dot4I8Packed(0x01010101u, xc);
        }
        let gi = r * p.groups + g;
        let z = i32((zeros[gi >> 2u] >> ((gi & 3u) * 8u)) & 0xffu);
        acc += scales[gi] * f32(dot - z * sum_x);
    }
    y[t * p.out_stride + p.row0 + r] = xs[t] * acc;
}
