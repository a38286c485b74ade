// The affine encoding's decode fragment for shaders/matmul.wgsl (the
// contract is at the top of that file): y += scale[r, g] * (q[r, k] -
// zero[r, g]) * x[t, k], g = k / group_len. Codes are packed as in
// src/encoding/affine/packing.rs: per row a little-endian bit stream of
// BITS-bit codes, rows padded to u32 words. 32 codes always fill exactly
// BITS words, so a "unit" of 32 codes is word-aligned for every bit width.
// The host rewrites `const BITS` per pipeline (so extraction constant-folds).

const BITS: u32 = 4u;

@group(0) @binding(1) var<storage, read> wq: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
// u8 zero-points, 4 per word, flat over (row, group) of this chunk.
@group(0) @binding(3) var<storage, read> zeros: array<u32>;

fn zero_of(g: u32) -> f32 {
    return f32((zeros[g >> 2u] >> ((g & 3u) * 8u)) & 0xffu);
}

// Code j of the row whose words start at `base`; 3-bit codes may straddle words.
fn code_at(base: u32, j: u32) -> u32 {
    let bit = j * BITS;
    let w = bit >> 5u;
    let off = bit & 31u;
    var v = wq[base + w] >> off;
    if (off + BITS > 32u) {
        v |= wq[base + w + 1u] << (32u - off);
    }
    return v & ((1u << BITS) - 1u);
}

// Codes 4i..4i+3 of unit u of a row, as floats (fast paths for 4 and 8 bits;
// words past the row's end, in the last unit, read as 0).
fn codes4(base: u32, u: u32, i: u32) -> vec4<f32> {
    if (BITS == 4u) {
        let wi = u * 4u + (i >> 1u);
        if (wi >= p.words_per_row) {
            return vec4<f32>(0.0);
        }
        let w = wq[base + wi] >> ((i & 1u) * 16u);
        return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
    } else if (BITS == 8u) {
        let wi = u * 8u + i;
        if (wi >= p.words_per_row) {
            return vec4<f32>(0.0);
        }
        return vec4<f32>(unpack4xU8(wq[base + wi]));
    }
    var c = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) {
        let j = u * 32u + i * 4u + e;
        if (j < p.cols) {
            c[e] = f32(code_at(base, j));
        }
    }
    return c;
}

// Contribution of 32-code unit u of `row` (0 past the chunk's rows). A unit
// lies in one group whenever group_len % 32 == 0 (32/64/128, per-channel
// with cols % 32 == 0): then the scale applies once, s * (sum q*x - z * sum x).
fn unit_dot(row: u32, u: u32, xb: u32, sum_x: f32) -> f32 {
    if (row >= p.rows) {
        return 0.0;
    }
    let base = row * p.words_per_row;
    if ((p.group_len % 32u) == 0u) {
        let g = row * p.groups_per_row + (u * 32u) / p.group_len;
        var d = vec4<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            d += codes4(base, u, i) * xs[xb + i];
        }
        return scales[g] * (d.x + d.y + d.z + d.w - zero_of(g) * sum_x);
    }
    var acc = 0.0;
    for (var e = 0u; e < 32u; e++) {
        let j = u * 32u + e;
        if (j < p.cols) {
            let g = row * p.groups_per_row + j / p.group_len;
            let w = scales[g] * (f32(code_at(base, j)) - zero_of(g));
            acc += w * xs[xb + (e >> 2u)][e & 3u];
        }
    }
    return acc;
}

// W[row, k] of this chunk, dequantized.
fn weight_at(row: u32, k: u32) -> f32 {
    let g = row * p.groups_per_row + k / p.group_len;
    return scales[g] * (f32(code_at(row * p.words_per_row, k)) - zero_of(g));
}
