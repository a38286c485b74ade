// Packs GPTQ's codes on the device, in the weight's original column order:
// codes arrive [rows, cols] in the order the columns were quantized
// (act-order permutes them); position[c] is where original column c was
// quantized. The host prepends shaders/pack_word.wgsl, the layout of
// src/encoding/affine/packing.rs.

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    words_per_row: u32,
    // 0: codes already in the original order (position unused).
    permuted: u32,
    // Code c of row r is codes[r * row_stride + c * step] (VQ: one code
    // per vector of `step` columns, `cols` codes per row).
    row_stride: u32,
    step: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> position: array<u32>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;

const WG: u32 = 256u;

fn packed_code(r: u32, c: u32) -> u32 {
    var at = c;
    if (p.permuted != 0u) {
        at = position[c];
    }
    return codes[r * p.row_stride + at * p.step];
}

// One invocation per output word (shaders/pack_word.wgsl).
@compute @workgroup_size(256)
fn pack_in_order(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.x + wg.y * nwg.x) * WG + lid;
    if (idx >= p.rows * p.words_per_row) {
        return;
    }
    packed[idx] = pack_word(idx / p.words_per_row, idx % p.words_per_row, p.bits, p.cols);
}
