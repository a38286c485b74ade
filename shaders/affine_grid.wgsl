// The affine grid of src/encoding/affine/grid.rs for the GPTQ kernel
// (shaders/gptq.wgsl; the contract is in src/encoding/grid.rs). The host
// prepends GRID_BITS, GRID_SYMMETRIC, GRID_SYMMETRIC_ZERO, and for the
// search GRID_SEARCH, GRID_GROW_STEPS, GRID_SHRINK_STEPS, GRID_ZERO_SHIFTS,
// GRID_TOP and GRID_REFITS.
//
// Parameters per group: scale, zero-point. grid_range mirrors
// params_from_range (src/encoding/affine/scheme.rs: GPTQ's range rule when
// asymmetric, llama.cpp's Q4_0 rule when symmetric); with GRID_SEARCH,
// grid_fit is fit_weighted (src/encoding/affine/search.rs: scaled ranges
// and their least-squares refits, scored by the diag(H)-weighted error),
// in the same order of f32 operations; grid_round is RTN's
// q = clamp(floor(w * (1/scale) + 0.5) + zero, 0, maxq).

const GRID_PARAMS: u32 = 2u;
const GRID_MAXQ: f32 = f32((1u << GRID_BITS) - 1u);

fn grid_range(lo_in: f32, hi_in: f32) -> vec2<f32> {
    if (GRID_SYMMETRIC) {
        // llama.cpp's Q4_0 rule: the value of largest magnitude is the lowest code.
        var m = hi_in;
        if (-lo_in > hi_in) {
            m = lo_in;
        }
        var scale = 1.0;
        if (m != 0.0) {
            scale = m / -GRID_SYMMETRIC_ZERO;
        }
        return vec2<f32>(scale, GRID_SYMMETRIC_ZERO);
    }
    var lo = min(lo_in, 0.0);
    var hi = max(hi_in, 0.0);
    if (lo == 0.0 && hi == 0.0) {
        lo = -1.0;
        hi = 1.0;
    }
    let scale = (hi - lo) / GRID_MAXQ;
    return vec2<f32>(scale, clamp(floor(-lo / scale + 0.5), 0.0, GRID_MAXQ));
}

fn grid_code(x: f32, inv: f32, z: f32) -> f32 {
    return clamp(floor(x * inv + 0.5) + z, 0.0, GRID_MAXQ);
}

// The importance of column k: diag(H), or 1 for every column of a group
// whose diag(H) is all zero.
fn grid_weight(k: u32, uniform: bool) -> f32 {
    if (uniform) {
        return 1.0;
    }
    return max(hdiag[k], 0.0);
}

// Σ h (x − s·(q − z))² with q the nearest code.
fn grid_error(row: u32, first: u32, last: u32, uniform: bool, p: vec2<f32>) -> f32 {
    let inv = 1.0 / p.x;
    var e = 0.0;
    for (var k = first; k < last; k++) {
        let x = w[row + k];
        let d = x - p.x * (grid_code(x, inv, p.y) - p.y);
        e += grid_weight(k, uniform) * d * d;
    }
    return e;
}

// The least-squares scale of the codes p gives, the zero-point kept
// (search.rs's refit); .z is 0 when they determine no scale.
fn grid_refit(row: u32, first: u32, last: u32, uniform: bool, p: vec2<f32>) -> vec3<f32> {
    let inv = 1.0 / p.x;
    var num = 0.0;
    var den = 0.0;
    for (var k = first; k < last; k++) {
        let x = w[row + k];
        let h = grid_weight(k, uniform);
        let l = grid_code(x, inv, p.y) - p.y;
        num += h * x * l;
        den += h * l * l;
    }
    let s = num / den;
    if (den > 0.0 && s == s && abs(s) <= 3.4e38 && s != 0.0) {
        return vec3<f32>(s, p.y, 1.0);
    }
    return vec3<f32>(0.0);
}

fn grid_fit(row: u32, first: u32, last: u32, at: u32) {
    var lo = w[row + first];
    var hi = lo;
    var uniform = true;
    for (var k = first; k < last; k++) {
        lo = min(lo, w[row + k]);
        hi = max(hi, w[row + k]);
        if (hdiag[k] > 0.0) {
            uniform = false;
        }
    }
    let base = grid_range(lo, hi);
    var best = base;
    if (GRID_SEARCH && !(lo == 0.0 && hi == 0.0)) {
        // Every scaled range (asymmetric ones also with the zero-point
        // moved) scored as it is; the GRID_TOP best go on to the refits.
        var shifts = 0u;
        if (!GRID_SYMMETRIC) {
            shifts = GRID_ZERO_SHIFTS;
        }
        var top_err: array<f32, GRID_TOP>;
        var top: array<vec2<f32>, GRID_TOP>;
        for (var t = 0u; t < GRID_TOP; t++) {
            top_err[t] = 3.4e38;
            top[t] = base;
        }
        for (var c = 0u; c < GRID_GROW_STEPS + GRID_SHRINK_STEPS; c++) {
            // k = c − GRID_GROW_STEPS runs from −GROW_STEPS to SHRINK_STEPS − 1.
            let scaled = 1.0 - (f32(c) - f32(GRID_GROW_STEPS)) / 40.0;
            var cand = vec2<f32>(base.x * scaled, base.y);
            if (!GRID_SYMMETRIC) {
                cand = grid_range(lo * scaled, hi * scaled);
            }
            for (var d = 0u; d <= 2u * shifts; d++) {
                let z = clamp(cand.y + f32(d) - f32(shifts), 0.0, GRID_MAXQ);
                let p = vec2<f32>(cand.x, z);
                let e = grid_error(row, first, last, uniform, p);
                // Insert into the sorted list, dropping its last entry.
                var pos = GRID_TOP;
                for (var t = 0u; t < GRID_TOP; t++) {
                    if (pos == GRID_TOP && e < top_err[t]) {
                        pos = t;
                    }
                }
                if (pos < GRID_TOP) {
                    for (var t = GRID_TOP - 1u; t > pos; t--) {
                        top_err[t] = top_err[t - 1u];
                        top[t] = top[t - 1u];
                    }
                    top_err[pos] = e;
                    top[pos] = p;
                }
            }
        }
        var best_err = grid_error(row, first, last, uniform, base);
        for (var t = 0u; t < GRID_TOP; t++) {
            if (top_err[t] < 3.4e38) {
                if (top_err[t] < best_err) {
                    best = top[t];
                    best_err = top_err[t];
                }
                var cur = grid_refit(row, first, last, uniform, top[t]);
                for (var r = 0u; r < GRID_REFITS; r++) {
                    if (cur.z != 0.0) {
                        let e = grid_error(row, first, last, uniform, cur.xy);
                        if (e < best_err) {
                            best = cur.xy;
                            best_err = e;
                        }
                        cur = grid_refit(row, first, last, uniform, cur.xy);
                    }
                }
            }
        }
    }
    gparams[at] = best.x;
    gparams[at + 1u] = best.y;
}

fn grid_round(x: f32, at: u32) -> vec2<f32> {
    let s = gparams[at];
    let z = gparams[at + 1u];
    let q = grid_code(x, 1.0 / s, z);
    return vec2<f32>(q, s * (q - z));
}
