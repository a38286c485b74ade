// Quantize, pack, unpack and dequantize kernels.
//
// Layout (see src/encoding/affine/packing.rs): codes of each row form a dense
// little-endian bit stream, value j at bits [j*bits, (j+1)*bits), rows padded
// to whole u32 words. Codes are unsigned; w = scale * (q - zero).
// The CPU reference is src/backend/cpu/mod.rs (and the encoding's
// dequantize in src/encoding/affine/mod.rs); both must round alike:
// q = clamp(floor(w * inv_scale + 0.5) + zero, 0, maxq).

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    group_len: u32,
    words_per_row: u32,
    // pack_codes: 1 = src holds f32 weights, quantized with group_scale =
    // 1/scale (RTN); 0 = src holds codes.
    quantize_src: u32,
    groups_per_row: u32,
    // unpack_codes: 1 = write values dequantized with group_scale = scale;
    // 0 = write codes.
    dequantize_dst: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<u32>;
// Per group: 1/scale when pack_codes quantizes, scale when unpack_codes
// dequantizes (unused otherwise); and the zero-points.
@group(0) @binding(2) var<storage, read> group_scale: array<f32>;
@group(0) @binding(3) var<storage, read> zeros: array<u32>;
@group(0) @binding(4) var<storage, read_write> dst: array<u32>;

const WG: u32 = 256u;

// Flat invocation index over a 2-D grid (the host splits large dispatches
// across y to stay under 65535 workgroups per dimension).
fn flat_index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wg.x + wg.y * nwg.x) * WG + lid;
}

fn code_of(r: u32, j: u32) -> u32 {
    let v = src[r * p.cols + j];
    if (p.quantize_src == 0u) {
        return v;
    }
    let g = r * p.groups_per_row + j / p.group_len;
    let maxq = (1u << p.bits) - 1u;
    let q = floor(bitcast<f32>(v) * group_scale[g] + 0.5) + f32(zeros[g]);
    return u32(clamp(q, 0.0, f32(maxq)));
}

fn packed_code(r: u32, j: u32) -> u32 {
    return code_of(r, j);
}

// One invocation per output word (shaders/pack_word.wgsl, which the host
// prepends).
@compute @workgroup_size(256)
fn pack_codes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let idx = flat_index(wg, nwg, lid);
    if (idx >= p.rows * p.words_per_row) {
        return;
    }
    dst[idx] = pack_word(idx / p.words_per_row, idx % p.words_per_row, p.bits, p.cols);
}

// One invocation per value.
@compute @workgroup_size(256)
fn unpack_codes(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let idx = flat_index(wg, nwg, lid);
    if (idx >= p.rows * p.cols) {
        return;
    }
    let r = idx / p.cols;
    let j = idx % p.cols;
    let bit = j * p.bits;
    let w = r * p.words_per_row + bit / 32u;
    let off = bit % 32u;
    var v = src[w] >> off;
    if (off + p.bits > 32u) {
        v |= src[w + 1u] << (32u - off);
    }
    let code = v & ((1u << p.bits) - 1u);
    if (p.dequantize_dst == 0u) {
        dst[idx] = code;
    } else {
        let g = r * p.groups_per_row + j / p.group_len;
        dst[idx] = bitcast<u32>(group_scale[g] * (f32(code) - f32(zeros[g])));
    }
}

// One invocation per (row, group): minimum and maximum of the group (the
// last group of a row may be shorter), as bit patterns in dst[2*i], dst[2*i+1].
@compute @workgroup_size(256)
fn group_range(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let idx = flat_index(wg, nwg, lid);
    if (idx >= p.rows * p.groups_per_row) {
        return;
    }
    let first = (idx % p.groups_per_row) * p.group_len;
    let last = min(first + p.group_len, p.cols);
    let base = (idx / p.groups_per_row) * p.cols;
    var lo = bitcast<f32>(src[base + first]);
    var hi = lo;
    for (var j = first + 1u; j < last; j++) {
        let x = bitcast<f32>(src[base + j]);
        lo = min(lo, x);
        hi = max(hi, x);
    }
    dst[2u * idx] = bitcast<u32>(lo);
    dst[2u * idx + 1u] = bitcast<u32>(hi);
}
