// Dequant-matmul family: y[t, row0 + r] = sum_k x[t, k] * scale[r, g] * (q[r, k] - zero[r, g]),
// g = k / group_len. Weights are packed as in src/encoding/affine/packing.rs: per row a
// little-endian bit stream of BITS-bit codes, rows padded to u32 words.
// 32 codes always fill exactly BITS words, so a "unit" of 32 codes is
// word-aligned for every bit width.
//
// The host rewrites `const BITS` per pipeline (so extraction constant-folds)
// and keeps or strips the `//#if SUBGROUP ... //#endif` blocks: naga rejects
// subgroup builtins on devices without the feature even in unused code.
// CPU reference: src/backend/cpu/matmul.rs.

const BITS: u32 = 4u;

// GEMV: GEMV_ROWS output rows per workgroup, x cached in XCH-float chunks.
// XCH = 32 * GEMV_WG, so every thread gets one 32-code unit per row per chunk.
const GEMV_WG: u32 = 64u;
const GEMV_ROWS: u32 = 4u; // gemv unrolls 4 rows into a vec4: keep at 4
const XCH: u32 = 2048u;

// GEMM: a 64-token x 64-row tile per 16x16 workgroup through the tiled
// GEMM of tile_gemm.wgsl, which the host prepends to this file.

// Mirrors `Params` in src/backend/gpu/matmul.rs.
struct Params {
    tokens: u32,         // tokens in this dispatch (x and y buffers)
    rows: u32,           // rows of this weight chunk
    cols: u32,
    out_stride: u32,     // row stride of y: all rows of the weight
    row0: u32,           // first row of this chunk in y
    group_len: u32,
    groups_per_row: u32,
    words_per_row: u32,
    row_blocks: u32,     // workgroups per token (gemv) or per token tile (gemm)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
// u8 zero-points, 4 per word, flat over (row, group) of this chunk.
@group(0) @binding(3) var<storage, read> zeros: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

fn zero_of(g: u32) -> f32 {
    return f32((zeros[g >> 2u] >> ((g & 3u) * 8u)) & 0xffu);
}

// Code j of the row whose words start at `base`; 3-bit codes may straddle words.
fn code_at(base: u32, j: u32) -> u32 {
    let bit = j * BITS;
    let w = bit >> 5u;
    let off = bit & 31u;
    var v = wq[base + w] >> off;
    if (off + BITS > 32u) {
        v |= wq[base + w + 1u] << (32u - off);
    }
    return v & ((1u << BITS) - 1u);
}

// Codes 4i..4i+3 of unit u of a row, as floats (fast paths for 4 and 8 bits;
// words past the row's end, in the last unit, read as 0).
fn codes4(base: u32, u: u32, i: u32) -> vec4<f32> {
    if (BITS == 4u) {
        let wi = u * 4u + (i >> 1u);
        if (wi >= p.words_per_row) {
            return vec4<f32>(0.0);
        }
        let w = wq[base + wi] >> ((i & 1u) * 16u);
        return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
    } else if (BITS == 8u) {
        let wi = u * 8u + i;
        if (wi >= p.words_per_row) {
            return vec4<f32>(0.0);
        }
        return vec4<f32>(unpack4xU8(wq[base + wi]));
    }
    var c = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        let j = u * 32u + i * 4u + e;
        if (j < p.cols) {
            c[e] = f32(code_at(base, j));
        }
    }
    return c;
}

var<workgroup> xs: array<vec4<f32>, XCH / 4u>;
var<workgroup> red: array<f32, GEMV_ROWS * GEMV_WG>;

// Contribution of 32-code unit u of `row` (0 past the chunk's rows). A unit
// lies in one group whenever group_len % 32 == 0 (32/64/128, per-channel
// with cols % 32 == 0): then the scale applies once, s * (sum q*x - z * sum x).
fn unit_dot(row: u32, u: u32, xb: u32, sum_x: f32) -> f32 {
    if (row >= p.rows) {
        return 0.0;
    }
    let base = row * p.words_per_row;
    if ((p.group_len % 32u) == 0u) {
        let g = row * p.groups_per_row + (u * 32u) / p.group_len;
        var d = vec4<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            d += codes4(base, u, i) * xs[xb + i];
        }
        return scales[g] * (d.x + d.y + d.z + d.w - zero_of(g) * sum_x);
    }
    var acc = 0.0;
    for (var e = 0u; e < 32u; e++) {
        let j = u * 32u + e;
        if (j < p.cols) {
            let g = row * p.groups_per_row + j / p.group_len;
            let w = scales[g] * (f32(code_at(base, j)) - zero_of(g));
            acc += w * xs[xb + (e >> 2u)][e & 3u];
        }
    }
    return acc;
}

// One workgroup per GEMV_ROWS rows of one token.
@compute @workgroup_size(GEMV_WG)
fn gemv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32,
//#if SUBGROUP
        @builtin(subgroup_invocation_id) sg_lane: u32,
//#endif
) {
    let flat = wg.x + wg.y * nwg.x;
    let t = flat / p.row_blocks;
    let r0 = (flat % p.row_blocks) * GEMV_ROWS;
    if (t >= p.tokens) {
        return;
    }
    // vec4 accumulator, one lane per row: no dynamically indexed private
    // arrays, which LLVM-based drivers (lavapipe) spill to scratch memory.
    var acc = vec4<f32>(0.0);
    let units = (p.cols + 31u) / 32u;
    for (var c0 = 0u; c0 < p.cols; c0 += XCH) {
        workgroupBarrier();
        for (var i = lid; i < XCH / 4u; i += GEMV_WG) {
            let k = c0 + i * 4u;
            var v = vec4<f32>(0.0);
            let xbase = t * p.cols + k;
            if (k + 3u < p.cols) {
                v = vec4<f32>(x[xbase], x[xbase + 1u], x[xbase + 2u], x[xbase + 3u]);
            } else {
                for (var e = 0u; e < 4u; e++) {
                    if (k + e < p.cols) {
                        v[e] = x[xbase + e];
                    }
                }
            }
            xs[i] = v;
        }
        workgroupBarrier();
        let u0 = c0 / 32u;
        let u1 = min(units, u0 + XCH / 32u);
        for (var u = u0 + lid; u < u1; u += GEMV_WG) {
            let xb = (u - u0) * 8u;
            var sx = vec4<f32>(0.0);
            for (var i = 0u; i < 8u; i++) {
                sx += xs[xb + i];
            }
            let sum_x = sx.x + sx.y + sx.z + sx.w;
            acc += vec4<f32>(unit_dot(r0, u, xb, sum_x), unit_dot(r0 + 1u, u, xb, sum_x),
                             unit_dot(r0 + 2u, u, xb, sum_x), unit_dot(r0 + 3u, u, xb, sum_x));
        }
    }
//#if SUBGROUP
    // One partial per subgroup, stored at its first lane's slot (no
    // assumption on subgroup size or on how lanes map to lid).
    let sg_sum = subgroupAdd(acc);
    let mine = select(vec4<f32>(0.0), sg_sum, sg_lane == 0u);
    red[lid] = mine.x;
    red[GEMV_WG + lid] = mine.y;
    red[2u * GEMV_WG + lid] = mine.z;
    red[3u * GEMV_WG + lid] = mine.w;
//#else
    red[lid] = acc.x;
    red[GEMV_WG + lid] = acc.y;
    red[2u * GEMV_WG + lid] = acc.z;
    red[3u * GEMV_WG + lid] = acc.w;
//#endif
    workgroupBarrier();
    for (var s = GEMV_WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            for (var r = 0u; r < GEMV_ROWS; r++) {
                red[r * GEMV_WG + lid] += red[r * GEMV_WG + lid + s];
            }
        }
        workgroupBarrier();
    }
    if (lid < GEMV_ROWS && r0 + lid < p.rows) {
        y[t * p.out_stride + p.row0 + r0 + lid] = red[lid * GEMV_WG];
    }
}

// The GEMM's operands: A[k, t] = x[t, k] (token rows, neighbouring k are
// neighbours in memory) and B[k, n] = W[n, k], dequantized as it is staged
// (each weight value once per 64 tokens), rows of codes along k likewise.
const TILE_A_K_MAJOR: bool = true;
const TILE_B_K_MAJOR: bool = true;

fn tile_load_a(k: u32, t: u32) -> vec4<f32> {
    let i = tile_lanes(t, p.tokens) * p.cols + k;
    return tile_mask(t, p.tokens, vec4<f32>(x[i.x], x[i.y], x[i.z], x[i.w]));
}

// W[row, k] of this chunk, dequantized.
fn weight_at(row: u32, k: u32) -> f32 {
    let g = row * p.groups_per_row + k / p.group_len;
    return scales[g] * (f32(code_at(row * p.words_per_row, k)) - zero_of(g));
}

fn tile_load_b(k: u32, n: u32) -> vec4<f32> {
    let r = tile_lanes(n, p.rows);
    let w = vec4<f32>(weight_at(r.x, k), weight_at(r.y, k), weight_at(r.z, k), weight_at(r.w, k));
    return tile_mask(n, p.rows, w);
}

// One workgroup per 64 tokens x 64 rows of y.
@compute @workgroup_size(16, 16)
fn gemm(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let flat = wg.x + wg.y * nwg.x;
    let m0 = (flat / p.row_blocks) * TILE;
    let n0 = (flat % p.row_blocks) * TILE;
    if (m0 >= p.tokens) {
        return;
    }
    var acc = tile_gemm(p.cols, m0, n0, lid, li);
    for (var i = 0u; i < 4u; i++) {
        let t = m0 + lid.y * 4u + i;
        if (t >= p.tokens) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let r = n0 + lid.x * 4u + j;
            if (r < p.rows) {
                y[t * p.out_stride + p.row0 + r] = acc[i][j];
            }
        }
    }
}
