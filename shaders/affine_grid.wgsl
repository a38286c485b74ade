// The affine grid of src/encoding/affine/grid.rs for the GPTQ kernel
// (shaders/gptq.wgsl; the contract is in src/encoding/grid.rs). The host
// prepends GRID_BITS, GRID_SYMMETRIC and GRID_SYMMETRIC_ZERO.
//
// Parameters per group: scale, zero-point. grid_fit mirrors
// params_from_range (src/encoding/affine/scheme.rs); grid_round is RTN's
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
    lo = min(lo, 0.0);
    hi = max(hi, 0.0);
    if (GRID_SYMMETRIC) {
        hi = max(hi, -lo);
        lo = -hi;
    }
    if (lo == 0.0 && hi == 0.0) {
        lo = -1.0;
        hi = 1.0;
    }
    let scale = (hi - lo) / GRID_MAXQ;
    var zero = GRID_SYMMETRIC_ZERO;
    if (!GRID_SYMMETRIC) {
        zero = clamp(floor(-lo / scale + 0.5), 0.0, GRID_MAXQ);
    }
    gparams[at] = scale;
    gparams[at + 1u] = zero;
}

fn grid_round(x: f32, at: u32) -> vec2<f32> {
    let s = gparams[at];
    let z = gparams[at + 1u];
    let q = clamp(floor(x * (1.0 / s) + 0.5) + z, 0.0, GRID_MAXQ);
    return vec2<f32>(q, s * (q - z));
}
