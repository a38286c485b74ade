//! The bit layout of linear integer codes (stored as `NAME.qweight`).
//!
//! Layout: codes of each row are a dense little-endian bit stream, value `j`
//! at bits `[j*bits, (j+1)*bits)`, rows padded to whole `u32` words. For 8, 4
//! and 2 bits that is the usual "4/8/16 values per u32, low bits first";
//! 3-bit codes cross word boundaries (32 values in 3 words).

use rayon::prelude::*;

/// u32 words holding one row of `cols` codes of `bits` bits.
pub fn words_per_row(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(32)
}

/// Packs one row of codes into `out` (which must be zeroed, `words_per_row` long).
pub fn pack_row(codes: &[u32], bits: u32, out: &mut [u32]) {
    let mask = (1u64 << bits) - 1;
    for (j, &q) in codes.iter().enumerate() {
        let bit = j * bits as usize;
        let (w, off) = (bit / 32, bit % 32);
        let v = (q as u64 & mask) << off;
        out[w] |= v as u32;
        if off + bits as usize > 32 {
            out[w + 1] |= (v >> 32) as u32;
        }
    }
}

/// Code `j` of a packed row.
#[inline]
pub fn unpack_code(row: &[u32], bits: u32, j: usize) -> u32 {
    let bit = j * bits as usize;
    let (w, off) = (bit / 32, bit % 32);
    let mut v = (row[w] as u64) >> off;
    if off + bits as usize > 32 {
        v |= (row[w + 1] as u64) << (32 - off);
    }
    (v as u32) & ((1u32 << bits) - 1)
}

/// Unpacks the first `out.len()` codes of a packed row, streaming bits
/// through a 64-bit buffer (no per-code division).
pub fn unpack_row(row: &[u32], bits: u32, out: &mut [u32]) {
    let mask = (1u64 << bits) - 1;
    let (mut buf, mut have, mut words) = (0u64, 0u32, row.iter());
    for o in out.iter_mut() {
        if have < bits {
            buf |= (*words.next().unwrap_or(&0) as u64) << have;
            have += 32;
        }
        *o = (buf & mask) as u32;
        buf >>= bits;
        have -= bits;
    }
}

/// Packs `rows * cols` codes row by row.
pub fn pack_codes(codes: &[u32], rows: usize, cols: usize, bits: u32) -> Vec<u32> {
    let wpr = words_per_row(cols, bits);
    let mut out = vec![0u32; rows * wpr];
    for r in 0..rows {
        pack_row(
            &codes[r * cols..(r + 1) * cols],
            bits,
            &mut out[r * wpr..(r + 1) * wpr],
        );
    }
    out
}

/// Inverse of [`pack_codes`].
pub fn unpack_codes(packed: &[u32], rows: usize, cols: usize, bits: u32) -> Vec<u32> {
    let wpr = words_per_row(cols, bits);
    let mut out = vec![0u32; rows * cols];
    for (r, o) in out.chunks_mut(cols).enumerate() {
        unpack_row(&packed[r * wpr..(r + 1) * wpr], bits, o);
    }
    out
}

/// Packs `rows * cols` codes given in the order GPTQ quantized the columns:
/// with `perm` (`perm[k]` the original index of the k-th column) they are
/// put back in the original order first.
pub fn pack_in_order(
    codes: &[u32],
    rows: usize,
    cols: usize,
    bits: u32,
    perm: Option<&[u32]>,
) -> Vec<u32> {
    let Some(perm) = perm else {
        return pack_codes(codes, rows, cols, bits);
    };
    let wpr = words_per_row(cols, bits);
    let mut out = vec![0u32; rows * wpr];
    out.par_chunks_mut(wpr)
        .zip(codes.par_chunks(cols))
        .for_each_init(
            || vec![0u32; cols],
            |row, (packed, src)| {
                for (&c, &q) in perm.iter().zip(src) {
                    row[c as usize] = q;
                }
                pack_row(row, bits, packed);
            },
        );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_unpack_matches_per_code_extraction() {
        for bits in 2..=8u32 {
            for cols in [1usize, 7, 31, 32, 33, 100] {
                let codes: Vec<u32> = (0..cols as u32)
                    .map(|j| j.wrapping_mul(2654435761) >> (32 - bits))
                    .collect();
                let packed = pack_codes(&codes, 1, cols, bits);
                let mut out = vec![0u32; cols];
                unpack_row(&packed, bits, &mut out);
                let one_by_one: Vec<u32> =
                    (0..cols).map(|j| unpack_code(&packed, bits, j)).collect();
                assert_eq!(out, codes, "{bits}-bit, {cols} cols");
                assert_eq!(one_by_one, codes, "{bits}-bit, {cols} cols");
            }
        }
    }
}
