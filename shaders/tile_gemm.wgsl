// The register-tiled GEMM shared by matmul.wgsl (gemm), hessian.wgsl,
// trace.wgsl, gptq.wgsl (update_rest) and cholesky.wgsl (syrk_update).
// WGSL has no includes: the Rust wrappers prepend this file to those
// sources (`with_tile_gemm` in src/backend/gpu/mod.rs), so the loop that
// sets their speed is written, and tuned, once.
//
// A 16x16 workgroup computes a 64x64 tile C[r, c] = sum_k A[k, r] * B[k, c],
// r = r_base.., c = c_base... Invocation (lid.x, lid.y) owns rows
// 4·lid.y .. +3 and columns 4·lid.x .. +3 as four vec4 rows in registers.
// Each step stages TK values of k: every invocation loads one vec4 of A
// (four neighbouring rows at one k) and one of B into workgroup memory,
// then reads a vec4 of each per k for 16 FMAs. The staging rows are padded
// (17 vec4s for 16) so the stores of neighbouring k fall in other banks.
//
// The kernel that includes this file defines, for its operands:
//   const TILE_A_K_MAJOR: bool  // true: A[.., k] and A[.., k + 1] are neighbours
//   const TILE_B_K_MAJOR: bool  //       in memory; false: rows r and r + 1 are
//   fn tile_load_a(k: u32, r: u32) -> vec4<f32>  // A[k, r .. r + 3], 0 past the edge
//   fn tile_load_b(k: u32, c: u32) -> vec4<f32>  // B[k, c .. c + 3], 0 past the edge
// and the staging gives neighbouring invocations neighbouring addresses.

const TILE: u32 = 64u;
const TK: u32 = 16u;
const TILE_QUADS: u32 = 16u; // vec4s across a tile (TILE / 4)
const TILE_STRIDE: u32 = 17u; // TILE_QUADS + 1: padding against bank conflicts

var<workgroup> tile_a: array<vec4<f32>, 272>; // [TK][TILE_STRIDE]
var<workgroup> tile_b: array<vec4<f32>, 272>;

// (k, quad) this invocation stages: k varies fastest over neighbouring
// invocations for k-major operands, the quad for the others.
fn tile_stager(li: u32, k_major: bool) -> vec2<u32> {
    let by_k = vec2<u32>(li % TK, li / TK);
    let by_quad = vec2<u32>(li / TILE_QUADS, li % TILE_QUADS);
    return select(by_quad, by_k, k_major);
}

// Lanes i .. i+3 clamped below `limit` (an in-bounds address for every
// lane), and the mask of the lanes that really are below it.
fn tile_lanes(i: u32, limit: u32) -> vec4<u32> {
    return min(vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(limit - 1u));
}

fn tile_mask(i: u32, limit: u32, v: vec4<f32>) -> vec4<f32> {
    let inside = vec4<u32>(i) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(limit);
    return select(vec4<f32>(0.0), v, inside);
}

// The tile of C over k = 0 .. k_len. Call from uniform control flow: it
// holds workgroup barriers.
fn tile_gemm(k_len: u32, r_base: u32, c_base: u32, lid: vec3<u32>, li: u32) -> array<vec4<f32>, 4> {
    var acc = array<vec4<f32>, 4>();
    let sa = tile_stager(li, TILE_A_K_MAJOR);
    let sb = tile_stager(li, TILE_B_K_MAJOR);
    for (var k0 = 0u; k0 < k_len; k0 += TK) {
        var va = vec4<f32>(0.0);
        if (k0 + sa.x < k_len) {
            va = tile_load_a(k0 + sa.x, r_base + 4u * sa.y);
        }
        tile_a[sa.x * TILE_STRIDE + sa.y] = va;
        var vb = vec4<f32>(0.0);
        if (k0 + sb.x < k_len) {
            vb = tile_load_b(k0 + sb.x, c_base + 4u * sb.y);
        }
        tile_b[sb.x * TILE_STRIDE + sb.y] = vb;
        workgroupBarrier();
        for (var k = 0u; k < TK; k++) {
            let a = tile_a[k * TILE_STRIDE + lid.y];
            let b = tile_b[k * TILE_STRIDE + lid.x];
            acc[0] = fma(vec4<f32>(a.x), b, acc[0]);
            acc[1] = fma(vec4<f32>(a.y), b, acc[1]);
            acc[2] = fma(vec4<f32>(a.z), b, acc[2]);
            acc[3] = fma(vec4<f32>(a.w), b, acc[3]);
        }
        workgroupBarrier();
    }
    return acc;
}
