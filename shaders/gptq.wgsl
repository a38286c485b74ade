// GPTQ update kernels (IST-DASLab/gptq `fasterquant`, the two heavy parts),
// on a weight that stays resident from the first block to the last, on any
// grid: the host prepends the grid's WGSL (GRID_PARAMS, grid_fit,
// grid_round; the contract is in src/encoding/grid.rs) and
// shaders/tile_gemm.wgsl.
//
// - quantize_block: one block of columns start..start+len, one invocation
//   per weight row (rows are independent given Hinv). Column by column:
//   when a column starts a group (dynamic groups), grid_fit fits the
//   group's parameters to the row's current weights; grid_round gives the
//   code and the value w_hat; err = (w - w_hat) / Hinv[j, j], spread over
//   the rest of the block: w[k] -= err * Hinv[j, k].
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
    group_len: u32,
    groups: u32,
    end: u32,
    n: u32,
    // 1: static groups (act-order), group of column j is group_of[j] and
    // the parameters are given; 0: group j / group_len, fitted here;
    // 2: group j / group_len, parameters given (shaders/vq_columns.wgsl).
    static_groups: u32,
    // quantize_block: the block's columns first..last (block-relative), at
    // most one dynamic group's start among them.
    first: u32,
    last: u32,
    // Consecutive rows sharing one set of parameters (1 but for VQ).
    rows_per_params: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// quantize_block: Hinv[block, block] [len, len]; update_rest: Hinv[block, end..] [len, n].
@group(0) @binding(1) var<storage, read> hinv: array<f32>;
// [rows, cols] weights of this chunk of rows.
@group(0) @binding(2) var<storage, read_write> w: array<f32>;
// [rows, len] scaled errors: written by quantize_block, read by update_rest.
@group(0) @binding(3) var<storage, read_write> err: array<f32>;
// [rows / rows_per_params, groups, GRID_PARAMS] grid parameters; [rows,
// cols] codes (a vector grid's at each vector's first column).
@group(0) @binding(4) var<storage, read_write> gparams: array<f32>;
@group(0) @binding(5) var<storage, read_write> codes: array<u32>;
// [cols] group of each column when static_groups == 1.
@group(0) @binding(6) var<storage, read> group_of: array<u32>;
// [cols] diag(H) of each column, in quantization order.
@group(0) @binding(7) var<storage, read> hdiag: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn quantize_block(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = (wg.x + wg.y * nwg.x) * WG + lid;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.cols;
    for (var jj = p.first; jj < p.last; jj++) {
        let j = p.start + jj;
        var g = j / p.group_len;
        if (p.static_groups != 0u) {
            g = group_of[j];
        }
        let at = (r * p.groups + g) * GRID_PARAMS;
        if (p.static_groups == 0u && j % p.group_len == 0u) {
            grid_fit(base, j, min(j + p.group_len, p.cols), at);
        }
        let x = w[base + j];
        let q = grid_round(x, at);
        let e = (x - q.y) / hinv[jj * p.len + jj];
        codes[base + j] = u32(q.x);
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
