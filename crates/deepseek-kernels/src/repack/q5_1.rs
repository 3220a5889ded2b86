//! Q5_1 repacked in groups of 8 rows for decode (AVX2): llama.cpp's Q5_K_M and Q5_K_S files
//! write V2-Lite's 1408-wide expert `down` rows (not a multiple of 256) as Q5_1 (in the 8-layer
//! synthetic's Q5_K_M file 52 of the 666 MB read per token), and these went one row at a time.
//!
//! Layout of one 8-row group, per 32-column block (192 bytes, as 8 plain blocks): the 8 rows'
//! f16 `d`, their f16 `m`, the `qh` bytes as `[byte 0..4][row]` (byte `k` holds the fifth bits
//! of columns `8k ..+ 8`), then the rows' 16 `qs` bytes in two 8-byte units, unit `u` of row
//! `r` at `64 + 64u + 8r` (low nibbles columns `8u ..+ 8`, high nibbles `16 + 8u ..+ 8`).
//! A value is `d·q + m` with `q` 0..31: the kernel sums `q·a` in integers and adds `m` times the
//! activations' per-32 sum.

use super::group::{deinterleave_row, interleave_row, ActRow, GROUP};
use crate::quant::{QuantType, QK};

pub const BLOCK_BYTES: usize = 64 + 128;

pub fn group_bytes(cols: usize) -> usize {
    cols / QK * BLOCK_BYTES
}

/// `rows` (a multiple of 8) plain Q5_1 rows in groups of 8.
pub fn repack(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(rows.is_multiple_of(GROUP) && cols.is_multiple_of(QK));
    let (rb, bb) = (
        QuantType::Q5_1.row_bytes(cols),
        QuantType::Q5_1.block_bytes(),
    );
    let mut out = vec![0u8; rows / GROUP * group_bytes(cols)];
    for (g, group) in out.chunks_exact_mut(group_bytes(cols)).enumerate() {
        for (b, dst) in group.chunks_exact_mut(BLOCK_BYTES).enumerate() {
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + b * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                dst[16 + 2 * r..18 + 2 * r].copy_from_slice(&src[2..4]);
                for k in 0..4 {
                    dst[32 + 8 * k + r] = src[4 + k];
                }
                interleave_row(&src[8..24], r, &mut dst[64..]);
            }
        }
    }
    out
}

/// Row `r` of repacked data back in plain Q5_1 blocks.
pub fn unpack_row(data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (g, i) = (r / GROUP, r % GROUP);
    let group = &data[g * group_bytes(cols)..][..group_bytes(cols)];
    let bb = QuantType::Q5_1.block_bytes();
    for (src, dst) in group
        .chunks_exact(BLOCK_BYTES)
        .zip(out.chunks_exact_mut(bb))
    {
        dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
        dst[2..4].copy_from_slice(&src[16 + 2 * i..18 + 2 * i]);
        for k in 0..4 {
            dst[4 + k] = src[32 + 8 * k + i];
        }
        deinterleave_row(&src[64..], i, &mut dst[8..24]);
    }
}

/// The 8 rows of one group against `T` activation rows (per-32 scales and sums).
pub fn dot_group<const T: usize>(group: &[u8], cols: usize, acts: &[ActRow; T]) -> [[f32; 8]; T] {
    assert!(group.len() >= group_bytes(cols) && cols.is_multiple_of(QK));
    for a in acts {
        assert!(a.2.len() >= cols && a.0.len() >= cols / QK && a.1.len() >= cols / QK);
    }
    #[cfg(target_arch = "x86_64")]
    if super::group::k16_kernels_available() {
        // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
        return unsafe { x86::dot_group_avx2::<T>(group, cols / QK, acts) };
    }
    dot_group_plain::<T>(group, cols, acts)
}

/// Plain reference: the layout's formula one value at a time.
pub fn dot_group_plain<const T: usize>(
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let mut out = [[0.0f32; 8]; T];
    for (b, blk) in group.chunks_exact(BLOCK_BYTES).take(cols / QK).enumerate() {
        for (t, a) in acts.iter().enumerate() {
            for r in 0..GROUP {
                let mut s = 0i64;
                for c in 0..QK {
                    let (u, hi) = ((c % 16) / 8, c >= 16);
                    let byte = blk[64 + 64 * u + 8 * r + c % 8];
                    let low = if hi { byte >> 4 } else { byte & 0xF };
                    let fifth = (blk[32 + 8 * (c / 8) + r] >> (c % 8)) & 1;
                    s += (low | (fifth << 4)) as i64 * a.2[b * QK + c] as i64;
                }
                let ad = a.0[b];
                out[t][r] +=
                    ad * (f16(blk, 2 * r) * s as f32 + f16(blk, 16 + 2 * r) * a.1[b] as f32);
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::group::x86::{half_lanes, rows_in_order};
    use super::{ActRow, BLOCK_BYTES, QK};

    /// Bytes of the 4 rows' fifth-bit bytes (`k`) of half `h` spread to their 8 columns, each
    /// 0x10 where the bit is set.
    #[inline(always)]
    unsafe fn fifth_bits(blk: *const u8, k: usize, h: usize) -> __m256i {
        let four = (blk.add(32 + 8 * k + 4 * h) as *const i32).read_unaligned();
        // Row i of the half to bytes 8i..8i+8 (in-lane shuffles: rows 0, 1 in the low lane).
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(four), spread);
        let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[allow(clippy::needless_range_loop)]
    pub unsafe fn dot_group_avx2<const T: usize>(
        group: &[u8],
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let base = group.as_ptr();
        let (low4, ones) = (_mm256_set1_epi8(15), _mm256_set1_epi16(1));
        let mut acc = [[_mm256_setzero_ps(); 2]; T];
        let mut accm = [_mm256_setzero_ps(); T];
        for b in 0..nb {
            let blk = base.add(b * BLOCK_BYTES);
            let ahead = blk.wrapping_add(4 * BLOCK_BYTES) as *const i8;
            for line in 0..BLOCK_BYTES / 64 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let m = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            for h in 0..2 {
                let mut isum = [_mm256_setzero_si256(); T];
                for u in 0..2 {
                    let unit = _mm256_loadu_si256(blk.add(64 + 64 * u + 32 * h) as *const __m256i);
                    let lo = _mm256_or_si256(_mm256_and_si256(unit, low4), fifth_bits(blk, u, h));
                    let hi = _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(unit), low4),
                        fifth_bits(blk, 2 + u, h),
                    );
                    for (t, a) in acts.iter().enumerate() {
                        let p = a.2.as_ptr().add(b * QK + 8 * u);
                        let a_lo = _mm256_set1_epi64x((p as *const i64).read_unaligned());
                        let a_hi = _mm256_set1_epi64x((p.add(16) as *const i64).read_unaligned());
                        // q ≤ 31, |a| ≤ 127: four products of a pair ≤ 31496 in i16.
                        let s = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, a_lo),
                            _mm256_maddubs_epi16(hi, a_hi),
                        );
                        isum[t] = _mm256_add_epi16(isum[t], s);
                    }
                }
                let dh = half_lanes(d, h);
                for (t, a) in acts.iter().enumerate() {
                    let ad = _mm256_set1_ps(*a.0.get_unchecked(b));
                    let i32s = _mm256_madd_epi16(isum[t], ones);
                    acc[t][h] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32s), _mm256_mul_ps(dh, ad), acc[t][h]);
                }
            }
            // The mins meet the block's activation sum: rows in order, all 8 at once.
            for (t, a) in acts.iter().enumerate() {
                let f = *a.0.get_unchecked(b) * *a.1.get_unchecked(b) as f32;
                accm[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(f), accm[t]);
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            let rows = _mm256_add_ps(rows_in_order(acc[t][0], acc[t][1]), accm[t]);
            _mm256_storeu_ps(out[t].as_mut_ptr(), rows);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::group::test_support::{activations, check_groups, check_unpack, rows_of};
    use super::*;
    use crate::quant::QuantizedActivations;

    #[test]
    fn groups_unpack_to_the_plain_rows() {
        let (rows, cols) = (16, 96);
        let data = rows_of(QuantType::Q5_1, rows, cols, 1);
        let packed = repack(&data, rows, cols);
        assert_eq!(packed.len(), rows / GROUP * group_bytes(cols));
        check_unpack(QuantType::Q5_1, &data, &packed, cols, unpack_row);
    }

    fn check<const T: usize>(rows: usize, cols: usize) {
        let data = rows_of(QuantType::Q5_1, rows, cols, T);
        let packed = repack(&data, rows, cols);
        let a = QuantizedActivations::new(&activations(T, cols), cols);
        check_groups::<T>(
            QuantType::Q5_1,
            &data,
            &packed,
            group_bytes(cols),
            &a,
            |g, acts| dot_group_plain::<T>(g, cols, acts),
            |g, acts| dot_group::<T>(g, cols, acts),
        );
    }

    #[test]
    fn repacked_groups_equal_the_plain_rows() {
        check::<1>(16, 1408);
        check::<2>(8, 64);
        check::<3>(8, 96);
        check::<4>(16, 128);
    }
}
