// A ggml block type as the GPTQ kernel's grid (src/encoding/ggml/grid.rs;
// the contract is in src/encoding/grid.rs). The host prepends
// GRID_PARAMS, GGML_KIND (0: value = step·q − min, q in 0..=GGML_MAX;
// 1: value = step·l, l in GGML_LO..=GGML_HI, code l − GGML_LO;
// 2: value = step·kvalues_iq4nl[q]) and the code bounds.
//
// Parameters per group: step, min, then the header they come from (read
// only by the host). grid_round is src/encoding/ggml/coded.rs `round`: the
// nearest code under (step, min), ties to even as nearest_int.

// These grids are fitted on the host (whole k-quant super-blocks at once)
// and always run with static groups, so the kernel never fits a group.
fn grid_fit(row: u32, first: u32, last: u32, at: u32) {}

fn ggml_nearest(v: f32) -> f32 {
    return round(clamp(v, -4.0e6, 4.0e6));
}

// ggml-quants.c best_index_int8 over kvalues_iq4nl.
fn ggml_table_index(t: f32) -> u32 {
    var kv = array<f32, 16>(-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                            1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);
    if (t <= kv[0]) {
        return 0u;
    }
    if (t >= kv[15]) {
        return 15u;
    }
    var mu = 1u;
    while (mu < 15u && t >= kv[mu]) {
        mu++;
    }
    if (t - kv[mu - 1u] < kv[mu] - t) {
        return mu - 1u;
    }
    return mu;
}

fn ggml_table_value(q: u32) -> f32 {
    var kv = array<f32, 16>(-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
                            1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);
    return kv[q];
}

fn grid_round(x: f32, at: u32) -> vec2<f32> {
    let step = gparams[at];
    let mn = gparams[at + 1u];
    if (GGML_KIND == 0u) {
        if (step == 0.0) {
            return vec2<f32>(0.0, -mn);
        }
        let q = clamp(ggml_nearest((x + mn) / step), 0.0, GGML_MAX);
        return vec2<f32>(q, step * q - mn);
    }
    if (GGML_KIND == 1u) {
        var l = 0.0;
        if (step != 0.0) {
            l = clamp(ggml_nearest(x / step), GGML_LO, GGML_HI);
        }
        return vec2<f32>(l - GGML_LO, step * l);
    }
    var t = 0.0;
    if (step != 0.0) {
        t = x / step;
    }
    let q = ggml_table_index(t);
    return vec2<f32>(f32(q), step * ggml_table_value(q));
}
