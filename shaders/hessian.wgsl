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
// Tiling: a 16x16 workgroup computes a 64x64 tile of H, 4x4 per invocation
// in registers; each step stages 16 tokens of the tile's 64 row-features and
// 64 column-features in workgroup memory (2 x 4 KiB).

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

const TILE: u32 = 64u;
const TK: u32 = 16u;
const PER: u32 = 4u;

var<workgroup> xa: array<f32, 1024>; // [TK][TILE]: features row0 + r_base ..
var<workgroup> xb: array<f32, 1024>; // [TK][TILE]: features c_base ..

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
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    for (var t0 = 0u; t0 < p.tokens; t0 += TK) {
        // 2 x TK*TILE = 2 x 1024 values staged by 256 invocations.
        for (var k = 0u; k < 4u; k++) {
            let idx = li + k * 256u;
            let t = t0 + idx / TILE;
            let off = idx % TILE;
            let r = r_base + off;
            let c = c_base + off;
            var va = 0.0;
            var vb = 0.0;
            if (t < p.tokens) {
                if (r < p.h_rows) {
                    va = x[t * p.cols + p.row0 + r];
                }
                if (c < p.cols) {
                    vb = x[t * p.cols + c];
                }
            }
            xa[idx] = va;
            xb[idx] = vb;
        }
        workgroupBarrier();
        for (var tt = 0u; tt < TK; tt++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var i = 0u; i < PER; i++) {
                a[i] = xa[tt * TILE + lid.y * PER + i];
                b[i] = xb[tt * TILE + lid.x * PER + i];
            }
            for (var i = 0u; i < PER; i++) {
                for (var j = 0u; j < PER; j++) {
                    acc[i * PER + j] = fma(a[i], b[j], acc[i * PER + j]);
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < PER; i++) {
        let r = r_base + lid.y * PER + i;
        if (r >= p.h_rows) {
            continue;
        }
        for (var j = 0u; j < PER; j++) {
            let c = c_base + lid.x * PER + j;
            if (c < p.cols) {
                let at = r * p.cols + c;
                h[at] = p.alpha * h[at] + p.beta * acc[i * PER + j];
            }
        }
    }
}
