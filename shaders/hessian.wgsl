// Running Hessian of a linear layer's inputs (IST-DASLab/gptq `add_batch`):
//
//   H[row0 + i, c] = alpha * H[row0 + i, c] + beta * sum_t X[t, row0 + i] * X[t, c]
//
// for the `h_rows` rows of H starting at `row0` (the host splits H by rows
// so each chunk fits one storage binding) and one chunk of `tokens` rows of
// X `[tokens, cols]` (the host splits X by tokens the same way; the first
// chunk uses alpha = n/(n+b), later ones alpha = 1, all beta = 2/(n+b)).
// Only tiles touching the lower triangle are computed; the host mirrors it.
// The CPU reference is `hessian_update` in src/backend/cpu/gptq.rs.
//
// Tiling: shaders/tile_gemm.wgsl (prepended by the host), a 64x64 tile of
// H per 16x16 workgroup with A = X[:, row0 + r_base ..] and B = X[:, c_base ..],
// 16 tokens per step.

struct Params {
    h_rows: u32,
    row0: u32,
    cols: u32,
    tokens: u32,
    alpha: f32,
    beta: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> h: array<f32>;

// A[t, r] = X[t, row0 + r] for the rows of H, B[t, c] = X[t, c]; in X
// neighbouring features are neighbours in memory.
const TILE_A_K_MAJOR: bool = false;
const TILE_B_K_MAJOR: bool = false;

fn tile_load_a(t: u32, r: u32) -> vec4<f32> {
    let f = t * p.cols + p.row0 + tile_lanes(r, p.h_rows);
    return tile_mask(r, p.h_rows, vec4<f32>(x[f.x], x[f.y], x[f.z], x[f.w]));
}

fn tile_load_b(t: u32, c: u32) -> vec4<f32> {
    let f = t * p.cols + tile_lanes(c, p.cols);
    return tile_mask(c, p.cols, vec4<f32>(x[f.x], x[f.y], x[f.z], x[f.w]));
}

@compute @workgroup_size(16, 16)
fn accumulate(@builtin(workgroup_id) wg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(local_invocation_index) li: u32) {
    let r_base = wg.y * TILE;
    let c_base = wg.x * TILE;
    // H is symmetric: tiles wholly above the diagonal are skipped (the
    // whole workgroup returns, so no barrier diverges) and the host mirrors
    // the lower triangle when it reads H back.
    if (c_base > p.row0 + r_base + TILE - 1u) {
        return;
    }
    var acc = tile_gemm(p.tokens, r_base, c_base, lid, li);
    for (var i = 0u; i < 4u; i++) {
        let r = r_base + lid.y * 4u + i;
        if (r >= p.h_rows) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let c = c_base + lid.x * 4u + j;
            if (c < p.cols) {
                let at = r * p.cols + c;
                h[at] = p.alpha * h[at] + p.beta * acc[i][j];
            }
        }
    }
}
