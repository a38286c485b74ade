// The affine grid of src/encoding/affine/grid.rs for the GPTQ kernel
// (shaders/gptq.wgsl; the contract is in src/encoding/grid.rs). The host
// prepends GRID_BITS, GRID_SYMMETRIC and GRID_SYMMETRIC_ZERO.
//
// Parameters per group: scale, zero-point. grid_fit mirrors
// params_from_range (src/encoding/affine/scheme.rs: GPTQ's range rule when
// asymmetric, llama.cpp's Q4_0 rule when symmetric); grid_round is RTN's
// q = clamp(floor(w * (1/scale) + 0.5) + zero, 0, maxq).

const GRID_PARAMS: u32 = 2u;
const GRID_MAXQ: f32 = f32((1u << GRID_BITS) - 1u);

fn grid_fit(row: u32, first: u32, last: u32, at: u32) {
    var lo = w[row + first];
    var hi = lo;
    for (var k = first + 1u; k < last; k++) {
        lo = min(lo, w[row + k]);
        hi = max(hi, w[row + k]);
    }
    if (GRID_SYMMETRIC) {
        // llama.cpp's Q4_0 rule: the value of largest magnitude is the lowest code.
        var m = hi;
        if (-lo > hi) {
            m = lo;
        }
        var scale = 1.0;
        if (m != 0.0) {
            scale = m / -GRID_SYMMETRIC_ZERO;
        }
        gparams[at] = scale;
        gparams[at + 1u] = GRID_SYMMETRIC_ZERO;
        return;
    }
    lo = min(lo, 0.0);
    hi = max(hi, 0.0);
    if (lo == 0.0 && hi == 0.0) {
        lo = -1.0;
        hi = 1.0;
    }
    let scale = (hi - lo) / GRID_MAXQ;
    gparams[at] = scale;
    gparams[at + 1u] = clamp(floor(-lo / scale + 0.5), 0.0, GRID_MAXQ);
}

fn grid_round(x: f32, at: u32) -> vec2<f32> {
    let s = gparams[at];
    let z = gparams[at + 1u];
    let q = clamp(floor(x * (1.0 / s) + 0.5) + z, 0.0, GRID_MAXQ);
    return vec2<f32>(q, s * (q - z));
}
