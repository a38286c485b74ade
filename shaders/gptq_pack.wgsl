// Packs GPTQ's codes on the device, in the weight's original column order:
// codes arrive [rows, cols] in the order the columns were quantized
// (act-order permutes them); position[c] is where original column c was
// quantized. The layout is src/encoding/affine/packing.rs's (as
// pack_codes in shaders/quantize.wgsl): value c at bits [c*bits, (c+1)*bits)
// of its row, rows padded to whole u32 words.

struct Params {
    rows: u32,
    cols: u32,
    bits: u32,
    words_per_row: u32,
    // 0: codes already in the original order (position unused).
    permuted: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> position: array<u32>;
@group(0) @binding(3) var<storage, read_write> packed: array<u32>;

const WG: u32 = 256u;

// One invocation per output word: gathers every value whose bits touch it,
// so no two invocations write the same word.
@compute @workgroup_size(256)
fn pack_in_order(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let idx = (wg.x + wg.y * nwg.x) * WG + lid;
    if (idx >= p.rows * p.words_per_row) {
        return;
    }
    let r = idx / p.words_per_row;
    let k = idx % p.words_per_row;
    let first_bit = k * 32u;
    let c0 = first_bit / p.bits;
    let c1 = min((first_bit + 31u) / p.bits, p.cols - 1u);
    var word = 0u;
    for (var c = c0; c <= c1; c++) {
        var at = c;
        if (p.permuted != 0u) {
            at = position[c];
        }
        let code = codes[r * p.cols + at];
        let bit = c * p.bits;
        if (bit >= first_bit) {
            word |= code << (bit - first_bit);
        } else {
            word |= code >> (first_bit - bit);
        }
    }
    packed[idx] = word;
}
