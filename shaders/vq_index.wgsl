// Index v of a VQ row whose packed words start at `base` in `vq_idx`, as
// src/encoding/vq/mod.rs stores them: a little-endian bit stream of
// VQ_INDEX_BITS-bit indices; indices may straddle words. Prepended to the
// kernels that read VQ indices (they declare `vq_idx` and VQ_INDEX_BITS).
fn vq_index(base: u32, v: u32) -> u32 {
    let bit = v * VQ_INDEX_BITS;
    let w = bit >> 5u;
    let off = bit & 31u;
    var x = vq_idx[base + w] >> off;
    if (off + VQ_INDEX_BITS > 32u) {
        x |= vq_idx[base + w + 1u] << (32u - off);
    }
    return x & ((1u << VQ_INDEX_BITS) - 1u);
}
