// The ggml block encoding's decode fragment for shaders/matmul.wgsl (the
// contract is at the top of that file): W[r, k] decoded from llama.cpp's
// blocks (ggml-common.h layouts, byte for byte as a GGUF stores them) of
// type GGML_TYPE (its ggml id; the host rewrites the constant per
// pipeline, so the switch constant-folds). Each row's blocks start on a
// u32 word: rows are padded to `p.words_per_row` words. Arithmetic follows
// ggml's dequantize_row_* (and src/encoding/ggml/, the CPU reference)
// operation for operation. Units of 32 columns never straddle a block:
// every type's block is 32 or 256 weights.

const GGML_TYPE: u32 = 2u;

@group(0) @binding(1) var<storage, read> blocks: array<u32>;

var<private> IQ4_NL_VALUES: array<f32, 16> = array<f32, 16>(
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0,
    1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0);

// Byte `i` of the chunk (rows padded to whole words).
fn gb(i: u32) -> u32 {
    return (blocks[i >> 2u] >> ((i & 3u) * 8u)) & 0xffu;
}

// The f16 stored little-endian at byte `i`.
fn gh(i: u32) -> f32 {
    return unpack2x16float(gb(i) | (gb(i + 1u) << 8u)).x;
}

// A byte as a signed int8.
fn gi8(v: u32) -> f32 {
    return f32(i32(v << 24u) >> 24u);
}

// (block size, bytes per block) of GGML_TYPE.
fn block_geometry() -> vec2<u32> {
    switch (GGML_TYPE) {
        case 2u: { return vec2<u32>(32u, 18u); }   // Q4_0
        case 3u: { return vec2<u32>(32u, 20u); }   // Q4_1
        case 6u: { return vec2<u32>(32u, 22u); }   // Q5_0
        case 7u: { return vec2<u32>(32u, 24u); }   // Q5_1
        case 8u: { return vec2<u32>(32u, 34u); }   // Q8_0
        case 10u: { return vec2<u32>(256u, 84u); } // Q2_K
        case 11u: { return vec2<u32>(256u, 110u); } // Q3_K
        case 12u: { return vec2<u32>(256u, 144u); } // Q4_K
        case 13u: { return vec2<u32>(256u, 176u); } // Q5_K
        case 14u: { return vec2<u32>(256u, 210u); } // Q6_K
        default: { return vec2<u32>(32u, 18u); }   // IQ4_NL (20)
    }
}

// Nibble j (0..32) of a legacy block whose 16 code bytes start at `qs`:
// low nibbles are weights 0..16, high nibbles 16..32.
fn nibble(qs: u32, j: u32) -> u32 {
    return (gb(qs + (j & 15u)) >> ((j >> 4u) * 4u)) & 15u;
}

// Q4_K/Q5_K: 6-bit scale and min of sub-block j from the 12 bytes at `s`
// (get_scale_min_k4).
fn scale_min_k4(s: u32, j: u32) -> vec2<f32> {
    if (j < 4u) {
        return vec2<f32>(f32(gb(s + j) & 63u), f32(gb(s + j + 4u) & 63u));
    }
    let d = (gb(s + j + 4u) & 0xfu) | ((gb(s + j - 4u) >> 6u) << 4u);
    let m = (gb(s + j + 4u) >> 4u) | ((gb(s + j) >> 6u) << 4u);
    return vec2<f32>(f32(d), f32(m));
}

// Q2_K/Q3_K: 2-bit code i (0..256) of the 64 bytes at `qs`.
fn code_2bit(qs: u32, i: u32) -> u32 {
    let within = i & 127u;
    return (gb(qs + 32u * (i >> 7u) + (within & 31u)) >> (2u * (within >> 5u))) & 3u;
}

// Q3_K: signed 6-bit scale j of the 12 bytes at `s`.
fn scale_q3k(s: u32, j: u32) -> f32 {
    let low = (gb(s + (j & 7u)) >> (4u * (j >> 3u))) & 0xfu;
    let high = (gb(s + 8u + (j & 3u)) >> (2u * (j >> 2u))) & 3u;
    return f32(i32(low | (high << 4u)) - 32);
}

// Weight j of the block starting at byte `b`.
fn block_weight(b: u32, j: u32) -> f32 {
    switch (GGML_TYPE) {
        case 2u: { // Q4_0: d, qs[16]
            return f32(i32(nibble(b + 2u, j)) - 8) * gh(b);
        }
        case 3u: { // Q4_1: d, m, qs[16]
            return f32(nibble(b + 4u, j)) * gh(b) + gh(b + 2u);
        }
        case 6u: { // Q5_0: d, qh[4], qs[16]
            let hi = ((gb(b + 2u + (j >> 3u)) >> (j & 7u)) & 1u) << 4u;
            return f32(i32(nibble(b + 6u, j) | hi) - 16) * gh(b);
        }
        case 7u: { // Q5_1: d, m, qh[4], qs[16]
            let hi = ((gb(b + 4u + (j >> 3u)) >> (j & 7u)) & 1u) << 4u;
            return f32(nibble(b + 8u, j) | hi) * gh(b) + gh(b + 2u);
        }
        case 8u: { // Q8_0: d, qs[32] int8
            return gi8(gb(b + 2u + j)) * gh(b);
        }
        case 10u: { // Q2_K: scales[16], qs[64], d, dmin
            let sc = gb(b + j / 16u);
            let dl = gh(b + 80u) * f32(sc & 0xfu);
            let ml = gh(b + 82u) * f32(sc >> 4u);
            return dl * f32(code_2bit(b + 16u, j)) - ml;
        }
        case 11u: { // Q3_K: hmask[32], qs[64], scales[12], d
            let dl = gh(b + 108u) * scale_q3k(b + 96u, j / 16u);
            let high = (gb(b + (j & 31u)) >> (j >> 5u)) & 1u;
            let q = i32(code_2bit(b + 32u, j)) - select(4, 0, high != 0u);
            return dl * f32(q);
        }
        case 12u, 13u: { // Q4_K: d, dmin, scales[12], qs[128]; Q5_K adds qh[32] before qs
            let sm = scale_min_k4(b + 4u, j / 32u);
            let d1 = gh(b) * sm.x;
            let m1 = gh(b + 2u) * sm.y;
            let l = j & 31u;
            var qs = b + 16u;
            var hi = 0u;
            if (GGML_TYPE == 13u) {
                qs = b + 48u;
                hi = ((gb(b + 16u + l) >> (j >> 5u)) & 1u) << 4u;
            }
            let q = (gb(qs + 32u * (j >> 6u) + l) >> (4u * ((j >> 5u) & 1u))) & 0xfu;
            return d1 * f32(q + hi) - m1;
        }
        case 14u: { // Q6_K: ql[128], qh[64], scales[16] int8, d
            let half = j >> 7u;
            let quarter = (j & 127u) >> 5u;
            let l = j & 31u;
            let lo = (gb(b + 64u * half + l + 32u * (quarter & 1u)) >> (4u * (quarter >> 1u))) & 0xfu;
            let hi = (gb(b + 128u + 32u * half + l) >> (2u * quarter)) & 3u;
            let sc = gi8(gb(b + 192u + 8u * half + l / 16u + 2u * quarter));
            return gh(b + 208u) * sc * f32(i32(lo | (hi << 4u)) - 32);
        }
        default: { // IQ4_NL: d, qs[16] indices into the non-uniform grid
            return gh(b) * IQ4_NL_VALUES[nibble(b + 2u, j)];
        }
    }
}

// W[row, k] of this chunk.
fn weight_at(row: u32, k: u32) -> f32 {
    let g = block_geometry();
    let b = row * p.words_per_row * 4u + (k / g.x) * g.y;
    return block_weight(b, k % g.x);
}

// Contribution of the 32-column unit u of `row` (0 past the chunk's rows).
fn unit_dot(row: u32, u: u32, xb: u32, sum_x: f32) -> f32 {
    if (row >= p.rows) {
        return 0.0;
    }
    let g = block_geometry();
    let k0 = u * 32u;
    let b = row * p.words_per_row * 4u + (k0 / g.x) * g.y;
    let j0 = k0 % g.x;
    var acc = vec4<f32>(0.0);
    for (var i = 0u; i < 8u; i++) {
        let j = j0 + i * 4u;
        let w = vec4<f32>(block_weight(b, j), block_weight(b, j + 1u),
                          block_weight(b, j + 2u), block_weight(b, j + 3u));
        acc += w * xs[xb + i];
    }
    return acc.x + acc.y + acc.z + acc.w;
}
