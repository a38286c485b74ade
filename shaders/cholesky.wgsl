// The upper factor U of H⁻¹ = UᵀU for GPTQ, in f32 (one Cholesky and one
// triangular inverse). The host uploads JHJ (H with rows and columns
// reversed: the flat row-major array read backwards) into `a`; these
// kernels compute its lower Cholesky factor L̃ in place and X = L̃⁻¹ into
// `x`; the host reads `x` backwards, which is U = J L̃⁻¹ J. CPU reference:
// src/backend/cpu/cholesky.rs (the algebra is explained there).
//
// Blocked, right-looking, panels of NB = 32 columns. For each panel
// starting at column k (bs = min(NB, n - k) columns), three dispatches:
// - potrf_diag: one workgroup factors the diagonal block A[k.., k..] in
//   workgroup memory (unblocked), writes L̃ back to `a` and the inverse of
//   the block to the same place of `x` (X's diagonal blocks are the inverses
//   of L̃'s); a non-positive or non-finite pivot sets status[0].
// - trsm_panel: L21 = A21 · L11⁻ᵀ, one invocation per row below the block,
//   forward substitution with L11 in workgroup memory.
// - syrk_update: A22 −= L21 · L21ᵀ on the tiles on and below the diagonal
//   (the upper triangle of `a` is never read), a tiled GEMM as
//   shaders/hessian.wgsl (64x64 tile per 16x16 workgroup, 4x4 per invocation).
// Then block row by block row (r0 = k), trtri_step computes
//   X[r0.., c] = −X[r0.., r0..] · Σ_{l < r0} L̃[r0.., l] · X[l, c]  for c < r0,
// which needs only block rows of X above it: one dispatch per block row,
// 32 rows x 64 columns per workgroup.
//
// Rows and columns past n are zero padding in workgroup memory.

struct Params {
    n: u32,
    // First column (row) of the panel (block row).
    k: u32,
    // Its size, min(NB, n - k).
    bs: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// [n, n]: JHJ, overwritten by L̃ in its lower triangle (upper is garbage).
@group(0) @binding(1) var<storage, read_write> a: array<f32>;
// [n, n]: L̃⁻¹ (lower triangular; zero-initialised by the host).
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
// [1]: 0, or 1 + the column of the first failed pivot.
@group(0) @binding(3) var<storage, read_write> status: array<u32>;

const NB: u32 = 32u;

// True for a finite positive pivot (the exponent test also rejects NaN/inf
// where the compiler assumes no NaN).
fn good_pivot(d: f32) -> bool {
    return d > 0.0 && (bitcast<u32>(d) & 0x7f800000u) != 0x7f800000u;
}

var<workgroup> blk: array<f32, 1024>; // [NB][NB]
var<workgroup> inv: array<f32, 1024>; // [NB][NB]

@compute @workgroup_size(32)
fn potrf_diag(@builtin(local_invocation_index) t: u32) {
    let k = p.k;
    let bs = p.bs;
    for (var c = 0u; c < NB; c++) {
        var v = 0.0;
        if (t < bs && c < bs) {
            v = a[(k + t) * p.n + k + c];
        }
        blk[t * NB + c] = v;
    }
    workgroupBarrier();
    for (var j = 0u; j < bs; j++) {
        if (t == 0u) {
            var d = blk[j * NB + j];
            if (!good_pivot(d)) {
                if (status[0] == 0u) {
                    status[0] = k + j + 1u;
                }
                // Go on with a harmless pivot; the host discards the result.
                d = 1.0;
            }
            blk[j * NB + j] = sqrt(d);
        }
        workgroupBarrier();
        let piv = blk[j * NB + j];
        if (t > j && t < bs) {
            blk[t * NB + j] = blk[t * NB + j] / piv;
        }
        workgroupBarrier();
        if (t > j && t < bs) {
            let ltj = blk[t * NB + j];
            for (var c = j + 1u; c <= t; c++) {
                blk[t * NB + c] = fma(-ltj, blk[c * NB + j], blk[t * NB + c]);
            }
        }
        workgroupBarrier();
    }
    // Column t of the inverse: solve L11 y = e_t by forward substitution.
    if (t < bs) {
        for (var r = 0u; r < NB; r++) {
            var y = 0.0;
            if (r >= t && r < bs) {
                var s = select(0.0, 1.0, r == t);
                for (var m = t; m < r; m++) {
                    s = fma(-blk[r * NB + m], inv[m * NB + t], s);
                }
                y = s / blk[r * NB + r];
            }
            inv[r * NB + t] = y;
        }
    }
    workgroupBarrier();
    if (t < bs) {
        for (var c = 0u; c < bs; c++) {
            let at = (k + t) * p.n + k + c;
            if (c <= t) {
                a[at] = blk[t * NB + c];
            }
            x[at] = inv[t * NB + c];
        }
    }
}

const PANEL_WG: u32 = 64u;
var<workgroup> l11: array<f32, 1024>; // [NB][NB]

@compute @workgroup_size(64)
fn trsm_panel(@builtin(workgroup_id) wg: vec3<u32>,
              @builtin(local_invocation_index) t: u32) {
    let k = p.k;
    let bs = p.bs;
    for (var q = 0u; q < NB * NB / PANEL_WG; q++) {
        let idx = t + q * PANEL_WG;
        let r = idx / NB;
        let c = idx % NB;
        var v = 0.0;
        if (r < bs && c <= r) {
            v = a[(k + r) * p.n + k + c];
        }
        l11[idx] = v;
    }
    workgroupBarrier();
    let i = k + bs + wg.x * PANEL_WG + t;
    if (i >= p.n) {
        return;
    }
    // Row i of L21: y L11ᵀ = a_i, i.e. y_j = (a_ij − Σ_{c<j} y_c L11[j, c]) / L11[j, j].
    var y: array<f32, 32>;
    let row = i * p.n + k;
    for (var j = 0u; j < bs; j++) {
        var s = a[row + j];
        for (var c = 0u; c < j; c++) {
            s = fma(-y[c], l11[j * NB + c], s);
        }
        y[j] = s / l11[j * NB + j];
        a[row + j] = y[j];
    }
}

// syrk_update's tile: A[k, r] = L21[r, k] and B[k, c] = L21[c, k], the rows
// s.. of the panel columns p.k..p.k+bs (row-major: neighbouring k are
// neighbours in memory).
const TILE_A_K_MAJOR: bool = true;
const TILE_B_K_MAJOR: bool = true;

fn panel4(k: u32, r: u32) -> vec4<f32> {
    let s = p.k + p.bs;
    let m = p.n - s;
    let i = (s + tile_lanes(r, m)) * p.n + p.k + k;
    return tile_mask(r, m, vec4<f32>(a[i.x], a[i.y], a[i.z], a[i.w]));
}

fn tile_load_a(k: u32, r: u32) -> vec4<f32> {
    return panel4(k, r);
}

fn tile_load_b(k: u32, c: u32) -> vec4<f32> {
    return panel4(k, c);
}

@compute @workgroup_size(16, 16)
fn syrk_update(@builtin(workgroup_id) wg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    // Tiles strictly above the diagonal are never read: skip them.
    if (wg.x > wg.y) {
        return;
    }
    let s = p.k + p.bs;
    let m = p.n - s;
    let r_base = wg.y * TILE;
    let c_base = wg.x * TILE;
    var acc = tile_gemm(p.bs, r_base, c_base, lid, li);
    for (var i = 0u; i < 4u; i++) {
        let r = r_base + lid.y * 4u + i;
        if (r >= m) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = c_base + lid.x * 4u + j;
            if (c < m) {
                let at = (s + r) * p.n + s + c;
                a[at] = a[at] - acc[i][j];
            }
        }
    }
}

// trtri_step: 32 rows (the block row at r0 = p.k) x 64 columns per
// workgroup, 2x4 per invocation. Phase 1: T = L̃[r0.., c_base..r0] ·
// X[c_base..r0, cols] (X is zero above its diagonal, so the sum starts at
// c_base), staged 32 values of l at a time. Phase 2: X[r0.., cols] = −D · T
// with D = X[r0.., r0..], the inverse of the diagonal block.
const XW: u32 = 64u;
var<workgroup> ls: array<f32, 1024>; // [NB][NB]: L̃ block, then D
var<workgroup> xs: array<f32, 2048>; // [NB][XW]: X block, then T

@compute @workgroup_size(16, 16)
fn trtri_step(@builtin(workgroup_id) wg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let r0 = p.k;
    let c_base = wg.x * XW;
    var acc: array<f32, 8>;
    for (var i = 0u; i < 8u; i++) {
        acc[i] = 0.0;
    }
    for (var l0 = c_base; l0 < r0; l0 += NB) {
        for (var q = 0u; q < 4u; q++) {
            let idx = li + q * 256u;
            let rr = idx / NB;
            var v = 0.0;
            if (rr < p.bs) {
                v = a[(r0 + rr) * p.n + l0 + idx % NB];
            }
            ls[idx] = v;
        }
        for (var q = 0u; q < 8u; q++) {
            let idx = li + q * 256u;
            let c = c_base + idx % XW;
            var v = 0.0;
            if (c < r0) {
                v = x[(l0 + idx / XW) * p.n + c];
            }
            xs[idx] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < NB; kk++) {
            let a0 = ls[(lid.y * 2u) * NB + kk];
            let a1 = ls[(lid.y * 2u + 1u) * NB + kk];
            for (var j = 0u; j < 4u; j++) {
                let b = xs[kk * XW + lid.x * 4u + j];
                acc[j] = fma(a0, b, acc[j]);
                acc[4u + j] = fma(a1, b, acc[4u + j]);
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 2u; i++) {
        for (var j = 0u; j < 4u; j++) {
            xs[(lid.y * 2u + i) * XW + lid.x * 4u + j] = acc[i * 4u + j];
        }
    }
    for (var q = 0u; q < 4u; q++) {
        let idx = li + q * 256u;
        let rr = idx / NB;
        let mm = idx % NB;
        var v = 0.0;
        if (rr < p.bs && mm < p.bs) {
            v = x[(r0 + rr) * p.n + r0 + mm];
        }
        ls[idx] = v;
    }
    workgroupBarrier();
    for (var i = 0u; i < 2u; i++) {
        let rr = lid.y * 2u + i;
        if (rr >= p.bs) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = c_base + lid.x * 4u + j;
            if (c >= r0) {
                continue;
            }
            var s = 0.0;
            for (var mm = 0u; mm <= rr; mm++) {
                s = fma(ls[rr * NB + mm], xs[mm * XW + lid.x * 4u + j], s);
            }
            x[(r0 + rr) * p.n + c] = -s;
        }
    }
}
