// GPTQ update kernels (IST-DASLab/gptq `fasterquant`, the two heavy parts),
// on a weight that stays resident from the first block to the last:
//
// - quantize_block: one block of columns start..start+len, one invocation
//   per weight row (rows are independent given Hinv). Column by column:
//   when a column starts a group, the group's scale/zero come from the
//   row's current weights (params_from_range, as src/quant/scheme.rs);
//   q = clamp(floor(w * (1/scale) + 0.5) + zero, 0, maxq) as RTN;
//   err = (w - scale * (q - zero)) / Hinv[j, j], spread over the rest of the
//   block: w[k] -= err * Hinv[j, k].
// - update_rest: the deferred update W[:, end..] -= Err * Hinv[block, end..],
//   a tiled GEMM (64x64 tile per 16x16 workgroup, 4x4 per invocation).
//
// The host splits W by rows to fit the binding limit. CPU reference:
// src/backend/cpu/gptq.rs. Divisions here may differ from the CPU's by a
// few ULP, so codes can differ at rounding ties (bounded in tests/gptq.rs).

struct Params {
    rows: u32,
    cols: u32,
    start: u32,
    len: u32,
    bits: u32,
    symmetric: u32,
    group_len: u32,
    groups: u32,
    end: u32,
    n: u32,
    // 1: static groups (act-order), group of column j is group_of[j] and
    // the parameters are given; 0: group j / group_len, computed here.
    static_groups: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// quantize_block: Hinv[block, block] [len, len]; update_rest: Hinv[block, end..] [len, n].
@group(0) @binding(1) var<storage, read> hinv: array<f32>;
// [rows, cols] weights of this chunk of rows.
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
// [rows, len] scaled errors: written by quantize_block, read by update_rest.
@group(0) @binding(3) var<storage, read_write> err: array<f32>;
// [rows, groups] scales and zero-points; [rows, cols] codes.
@group(0) @binding(4) var<storage, read_write> scales: array<f32>;
@group(0) @binding(5) var<storage, read_write> zeros: array<u32>;
@group(0) @binding(6) var<storage, read_write> codes: array<u32>;
// [cols] group of each column when static_groups == 1.
@group(0) @binding(7) var<storage, read> group_of: array<u32>;

const WG: u32 = 64u;

// Scale and zero of a group from its range; mirrors params_from_range.
fn params_from_range(min_in: f32, max_in: f32) -> vec2<f32> {
    let maxq = f32((1u << p.bits) - 1u);
    var lo = min(min_in, 0.0);
    var hi = max(max_in, 0.0);
    if (p.symmetric != 0u) {
        hi = max(hi, -lo);
        lo = -hi;
    }
    if (lo == 0.0 && hi == 0.0) {
        lo = -1.0;
        hi = 1.0;
    }
    let scale = (hi - lo) / maxq;
    var zero = f32(1u << (p.bits - 1u));
    if (p.symmetric == 0u) {
        zero = clamp(floor(-lo / scale + 0.5), 0.0, maxq);
    }
    return vec2<f32>(scale, zero);
}

@compute @workgroup_size(64)
fn quantize_block(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = (wg.x + wg.y * nwg.x) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    let maxq = f32((1u << p.bits) - 1u);
    for (var jj = 0u; jj < p.len; jj++) {
        let j = p.start + jj;
        var g = j / p.group_len;
        if (p.static_groups != 0u) {
            g = group_of[j];
        }
        let gi = r * p.groups + g;
        if (p.static_groups == 0u && j % p.group_len == 0u) {
            let last = min(j + p.group_len, p.cols);
            var lo = w[base + j];
            var hi = lo;
            for (var k = j + 1u; k < last; k++) {
                lo = min(lo, w[base + k]);
                hi = max(hi, w[base + k]);
            }
            let sz = params_from_range(lo, hi);
            scales[gi] = sz.x;
            zeros[gi] = u32(sz.y);
        }
        let s = scales[gi];
        let z = f32(zeros[gi]);
        let x = w[base + j];
        let q = clamp(floor(x * (1.0 / s) + 0.5) + z, 0.0, maxq);
        let e = (x - s * (q - z)) / hinv[jj * p.len + jj];
        codes[base + j] = u32(q);
        err[r * p.len + jj] = e;
        for (var kk = jj + 1u; kk < p.len; kk++) {
            w[base + p.start + kk] -= e * hinv[jj * p.len + kk];
        }
    }
}

// update_rest's tile: A = Err [rows, len] (row-major: neighbouring k are
// neighbours in memory), B = Hinv[block, end..] [len, n] (row-major).
const TILE_A_K_MAJOR: bool = true;
const TILE_B_K_MAJOR: bool = false;

fn tile_load_a(k: u32, r: u32) -> vec4<f32> {
    let i = tile_lanes(r, p.rows) * p.len + k;
    return tile_mask(r, p.rows, vec4<f32>(err[i.x], err[i.y], err[i.z], err[i.w]));
}

fn tile_load_b(k: u32, c: u32) -> vec4<f32> {
    let i = k * p.n + tile_lanes(c, p.n);
    return tile_mask(c, p.n, vec4<f32>(hinv[i.x], hinv[i.y], hinv[i.z], hinv[i.w]));
}

@compute @workgroup_size(16, 16)
fn update_rest(@builtin(workgroup_id) wg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>,
               @builtin(local_invocation_index) li: u32) {
    let r_base = wg.y * TILE;
    let c_base = wg.x * TILE;
    var acc = tile_gemm(p.len, r_base, c_base, lid, li);
    for (var i = 0u; i < 4u; i++) {
        let r = r_base + lid.y * 4u + i;
        if (r >= p.rows) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = c_base + lid.x * 4u + j;
            if (c < p.n) {
                let at = r * p.cols + p.end + c;
                w[at] = w[at] - acc[i][j];
            }
        }
    }
}
