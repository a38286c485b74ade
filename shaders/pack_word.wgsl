// One u32 word of a row of packed codes, the layout of
// src/encoding/affine/packing.rs: value j at bits [j*bits, (j+1)*bits) of
// its row, rows padded to whole words. The kernel that prepends this file
// defines packed_code(r, j), the code of value j of row r. One invocation
// per word gathers every value whose bits touch it, so no two invocations
// write the same word. Used by shaders/quantize.wgsl and gptq_pack.wgsl.

fn pack_word(r: u32, k: u32, bits: u32, cols: u32) -> u32 {
    let first_bit = k * 32u;
    let j0 = first_bit / bits;
    let j1 = min((first_bit + 31u) / bits, cols - 1u);
    var word = 0u;
    for (var j = j0; j <= j1; j++) {
        let code = packed_code(r, j);
        let bit = j * bits;
        if (bit >= first_bit) {
            word |= code << (bit - first_bit);
        } else {
            word |= code >> (first_bit - bit);
        }
    }
    return word;
}
