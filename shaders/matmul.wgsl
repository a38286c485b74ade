// Dequant-matmul family: y[t, row0 + r] = sum_k x[t, k] * W[r, k] with W
// stored in an encoding whose decode fragment the host prepends (the
// affine, VQ or ggml one, shaders/*_decode.wgsl). The fragment declares the
// encoding's parts at bindings 1..=3 and defines, against `p` and `xs`:
// - unit_dot(row, u, xb, sum_x): sum over the 32 weights of unit u (columns
//   32u..32u+32) of `row` of W[row, k] * xs[xb + (k - 32u) / 4][k % 4], where
//   sum_x is the sum of those 32 x values (0 past the chunk's rows);
// - weight_at(row, k): W[row, k] of this chunk, for the GEMM's staging.
//
// The host also keeps or strips the `//#if SUBGROUP ... //#endif` blocks:
// naga rejects subgroup builtins on devices without the feature even in
// unused code. CPU reference: src/encoding/affine/matmul.rs.

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
    group_len: u32,      // group_len, groups_per_row, words_per_row: the affine
                         // encoding's geometry, read by its decode fragment
    groups_per_row: u32,
    words_per_row: u32,
    row_blocks: u32,     // workgroups per token (gemv) or per token tile (gemm)
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;

var<workgroup> xs: array<vec4<f32>, XCH / 4u>;
var<workgroup> red: array<f32, GEMV_ROWS * GEMV_WG>;

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
