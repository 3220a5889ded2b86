//! Q5_0 in groups of 8 rows ("Q5_0x8") for decode and the quantized GEMM panels.

#[cfg(target_arch = "x86_64")]
use super::group::PREFETCH_BYTES;
use super::group::{
    check_lengths, deinterleave_row, dot_group_unpacked, interleave_row, ActRow, GROUP,
};
use crate::quant::{QuantType, QK};

/// Q5_0 repacked in groups of 8 rows ("Q5_0x8"), per 32-column block (176 bytes, the same as 8
/// Q5_0 blocks): 8 f16 `d`; then 4 little-endian u64 bit masks, mask m holding byte m of each
/// row's `qh` (row r in byte r), i.e. the fifth bits of columns 8m..8m+8; then for each 8-byte
/// column group kk (0, 1), the 8 `qs` bytes kk*8..kk*8+8 of rows 0..8. One 512-bit load holds 8
/// bytes of each row: their low nibbles are columns 8kk.., their high nibbles columns 16+8kk..,
/// whose fifth bits are masks kk and 2+kk, applied as a masked byte add: Q5_0 decode at 5.5 bits
/// per weight instead of the 8.5 of widening it to Q8_0.
pub const Q5_0_BLOCK_BYTES: usize = 16 + 32 + 128;

pub fn q5_0_group_bytes(cols: usize) -> usize {
    cols / QK * Q5_0_BLOCK_BYTES
}

pub fn repack_q5_0(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(rows.is_multiple_of(GROUP) && cols.is_multiple_of(QK));
    let nb = cols / QK;
    let rb = QuantType::Q5_0.row_bytes(cols);
    let bb = QuantType::Q5_0.block_bytes();
    let mut out = vec![0u8; rows / GROUP * q5_0_group_bytes(cols)];
    for g in 0..rows / GROUP {
        for b in 0..nb {
            let dst =
                &mut out[g * q5_0_group_bytes(cols) + b * Q5_0_BLOCK_BYTES..][..Q5_0_BLOCK_BYTES];
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + b * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                for m in 0..4 {
                    dst[16 + m * 8 + r] = src[2 + m];
                }
                interleave_row(&src[6..22], r, &mut dst[48..]);
            }
        }
    }
    out
}

/// Row `r` of Q5_0x8 data back in plain Q5_0 blocks.
pub fn unpack_q5_0_row(data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (g, i) = (r / GROUP, r % GROUP);
    let bb = QuantType::Q5_0.block_bytes();
    for b in 0..cols / QK {
        let src = &data[g * q5_0_group_bytes(cols) + b * Q5_0_BLOCK_BYTES..][..Q5_0_BLOCK_BYTES];
        let dst = &mut out[b * bb..(b + 1) * bb];
        dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
        for m in 0..4 {
            dst[2 + m] = src[16 + m * 8 + i];
        }
        deinterleave_row(&src[48..], i, &mut dst[6..22]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_q5_0 {
    use super::*;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_group_q5_0_vnni512<const T: usize>(
        group: &[u8],
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        // Row r's partial sums sit in dwords 2r and 2r+1 and stay there (scales duplicated to
        // match) until the end: no per-block fold.
        let mut acc = [_mm512_setzero_ps(); T];
        let low4 = _mm512_set1_epi8(0x0F);
        let bit4 = _mm512_set1_epi8(0x10);
        let dup = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        let base = group.as_ptr();
        for b in 0..nb {
            let blk = base.add(b * Q5_0_BLOCK_BYTES);
            // The Q8_0 kernels' prefetch distance in bytes; 3 lines cover a 176-byte block.
            let ahead = blk.wrapping_add(PREFETCH_BYTES) as *const i8;
            for line in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let d16 = _mm512_permutexvar_ps(dup, _mm512_castps256_ps512(d8));
            let mask = |m: usize| (blk.add(16 + m * 8) as *const u64).read_unaligned();
            let mut isum = [[_mm512_setzero_si512(); 2]; T];
            for kk in 0..2 {
                let q = _mm512_loadu_si512(blk.add(48 + kk * 64) as *const _);
                let lo = _mm512_and_si512(q, low4);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4);
                // The fifth bit: weights 0..31 (unsigned for vpdpbusd), offset 16 removed below.
                let lo = _mm512_mask_add_epi8(lo, mask(kk), lo, bit4);
                let hi = _mm512_mask_add_epi8(hi, mask(2 + kk), hi, bit4);
                for (t, a) in acts.iter().enumerate() {
                    let p = a.2.as_ptr().add(b * QK + 8 * kk);
                    let alo = _mm512_set1_epi64((p as *const i64).read_unaligned());
                    let ahi = _mm512_set1_epi64((p.add(16) as *const i64).read_unaligned());
                    isum[t][0] = _mm512_dpbusd_epi32(isum[t][0], lo, alo);
                    isum[t][1] = _mm512_dpbusd_epi32(isum[t][1], hi, ahi);
                }
            }
            for (t, a) in acts.iter().enumerate() {
                // Σ (w - 16)·a = Σ w·a - 16·Σa, the 16·Σa split evenly over a row's two dwords.
                let z = _mm512_sub_epi32(
                    _mm512_add_epi32(isum[t][0], isum[t][1]),
                    _mm512_set1_epi32(8 * *a.1.get_unchecked(b)),
                );
                let f = _mm512_mul_ps(d16, _mm512_set1_ps(*a.0.get_unchecked(b)));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(z), f, acc[t]);
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            let mut lanes = [0.0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[t]);
            for r in 0..GROUP {
                out[t][r] = lanes[2 * r] + lanes[2 * r + 1];
            }
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_q5_0_avx2 {
    use super::super::group::x86::{half_lanes, rows_in_order};
    use super::*;
    use std::arch::x86_64::*;

    /// The Q5_0x8 kernel for AVX2 (no VNNI, no byte masks): a 256-bit load holds 8 `qs` bytes
    /// of each of 4 rows (rows 0–3, then 4–7); the fifth bits come from the masks' 4 row
    /// bytes, spread over their rows' 64-bit lanes and tested bit by bit (`vpcmpeqb`). The
    /// `vpmaddubsw` pair sums of a block's 32 columns stay in i16 (2 × 2 × 2 × 31 × 127 < 2¹⁵).
    /// As in the Q4_K kernel, one or two tokens take both 4-row halves in one pass, more
    /// tokens one half after the other, so that the accumulators stay in the 16 registers.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group_q5_0_avx2<const T: usize>(
        group: &[u8],
        decoded: Option<&[u8]>,
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let halves: [[__m256; 2]; T] = if T <= 2 {
            let [h0, h1] = halves_q5_0::<T, 2>(group, decoded, nb, acts, 0);
            std::array::from_fn(|t| [h0[t], h1[t]])
        } else {
            let [h0] = halves_q5_0::<T, 1>(group, decoded, nb, acts, 0);
            let [h1] = halves_q5_0::<T, 1>(group, decoded, nb, acts, 1);
            std::array::from_fn(|t| [h0[t], h1[t]])
        };
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            _mm256_storeu_ps(
                out[t].as_mut_ptr(),
                rows_in_order(halves[t][0], halves[t][1]),
            );
        }
        out
    }

    /// Block `blk`'s weights for 8-column group `kk` and rows `4h..4h + 4` as unsigned bytes
    /// (value + 16): columns `8kk..` from the low nibbles, `16 + 8kk..` from the high ones,
    /// each with its fifth bit from the masks.
    #[inline(always)]
    unsafe fn weights_q5_0(blk: *const u8, kk: usize, h: usize) -> (__m256i, __m256i) {
        let low4 = _mm256_set1_epi8(0x0F);
        let q = _mm256_loadu_si256(blk.add(48 + kk * 64 + h * 32) as *const __m256i);
        (
            _mm256_or_si256(_mm256_and_si256(q, low4), fifth_bits_q5_0(blk, kk, h)),
            _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4),
                fifth_bits_q5_0(blk, 2 + kk, h),
            ),
        )
    }

    /// The fifth bits in block `blk`'s mask `m` for rows `4h..4h + 4`, as 0x10 bytes: the rows'
    /// mask bytes spread over their 64-bit lanes (`vpshufb`), then tested bit by bit.
    #[inline(always)]
    unsafe fn fifth_bits_q5_0(blk: *const u8, m: usize, h: usize) -> __m256i {
        let bit4 = _mm256_set1_epi8(0x10);
        let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        // Byte q of a 32-bit word (row 4h + q's mask byte) to every byte of 64-bit lane q.
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let mask = (blk.add(16 + m * 8) as *const u64).read_unaligned();
        let rows = _mm256_set1_epi32((mask >> (32 * h)) as u32 as i32);
        let v = _mm256_shuffle_epi8(rows, spread);
        _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bits), bits), bit4)
    }

    /// Halves `h0..h0 + H` of a Q5_0x8 group against `T` tokens: per half and token, rows
    /// `4h..4h + 4` each in two lanes.
    #[inline(always)]
    /// With `decoded` (from [`decode_q5_0_group_avx2`]) the weights are loaded ready-made
    /// instead of rebuilt from nibbles and bit masks.
    unsafe fn halves_q5_0<const T: usize, const H: usize>(
        group: &[u8],
        decoded: Option<&[u8]>,
        nb: usize,
        acts: &[ActRow; T],
        h0: usize,
    ) -> [[__m256; T]; H] {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); T]; H];
        let base = group.as_ptr();
        for b in 0..nb {
            let blk = base.add(b * Q5_0_BLOCK_BYTES);
            let ahead = blk.wrapping_add(PREFETCH_BYTES) as *const i8;
            for line in 0..3 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let mut isum = [[_mm256_setzero_si256(); T]; H];
            for kk in 0..2 {
                // Weights 0..31 (unsigned for vpmaddubsw), offset 16 removed below.
                let mut w = [(_mm256_setzero_si256(), _mm256_setzero_si256()); H];
                for (i, wi) in w.iter_mut().enumerate() {
                    let h = h0 + i;
                    *wi = match decoded {
                        Some(dec) => {
                            let p = dec.as_ptr().add(b * Q5_0_DECODED_BLOCK + kk * 128 + h * 64);
                            (
                                _mm256_loadu_si256(p as *const __m256i),
                                _mm256_loadu_si256(p.add(32) as *const __m256i),
                            )
                        }
                        None => weights_q5_0(blk, kk, h),
                    };
                }
                for (t, a) in acts.iter().enumerate() {
                    let p = a.2.as_ptr().add(b * QK + 8 * kk);
                    let alo = _mm256_set1_epi64x((p as *const i64).read_unaligned());
                    let ahi = _mm256_set1_epi64x((p.add(16) as *const i64).read_unaligned());
                    for i in 0..H {
                        let s = _mm256_add_epi16(
                            _mm256_maddubs_epi16(w[i].0, alo),
                            _mm256_maddubs_epi16(w[i].1, ahi),
                        );
                        isum[i][t] = _mm256_add_epi16(isum[i][t], s);
                    }
                }
            }
            let d8 = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            for i in 0..H {
                let dh = half_lanes(d8, h0 + i);
                for (t, a) in acts.iter().enumerate() {
                    // Σ (w - 16)·a = Σ w·a - 16·Σa, the 16·Σa split evenly over a row's two
                    // i32 lanes.
                    let z = _mm256_sub_epi32(
                        _mm256_madd_epi16(isum[i][t], ones),
                        _mm256_set1_epi32(8 * *a.1.get_unchecked(b)),
                    );
                    let f = _mm256_mul_ps(dh, _mm256_set1_ps(*a.0.get_unchecked(b)));
                    acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(z), f, acc[i][t]);
                }
            }
        }
        acc
    }

    /// A Q5_0x8 group's weights as unsigned bytes (value + 16), in [`decode_q5_0_group`]'s
    /// layout: the nibble and bit-mask work of [`halves_q5_0`], done once.
    #[target_feature(enable = "avx2")]
    pub unsafe fn decode_q5_0_group_avx2(group: &[u8], nb: usize, out: &mut [u8]) {
        for b in 0..nb {
            let blk = group.as_ptr().add(b * Q5_0_BLOCK_BYTES);
            for kk in 0..2 {
                for h in 0..2 {
                    let (lo, hi) = weights_q5_0(blk, kk, h);
                    let o = out
                        .as_mut_ptr()
                        .add(b * Q5_0_DECODED_BLOCK + kk * 128 + h * 64);
                    _mm256_storeu_si256(o as *mut __m256i, lo);
                    _mm256_storeu_si256(o.add(32) as *mut __m256i, hi);
                }
            }
        }
    }
}

/// Bytes per 32-column block of a Q5_0x8 group decoded by [`decode_q5_0_group`].
pub const Q5_0_DECODED_BLOCK: usize = 256;

/// Whether [`dot_group_q5_0_decoded`] is faster than [`dot_group_q5_0`] once a group meets
/// more tokens than one kernel pass takes (AVX2 without VNNI, where rebuilding the fifth bits
/// costs about as much as the multiplies of four tokens).
pub fn q5_0_predecode_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::quant::byte_dot_isa() == crate::quant::ByteDotIsa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One Q5_0x8 group's weights as unsigned bytes `value + 16` (0..31), 256 bytes per block: for
/// each 8-column group `kk` and 4-row half `h`, 32 bytes of columns `8kk..8kk+8` then 32 of
/// columns `16+8kk..`, each 8 bytes of rows `4h..4h+4` in turn (the order of the group's `qs`
/// loads). `out`: `cols / 32 * Q5_0_DECODED_BLOCK` bytes.
pub fn decode_q5_0_group(group: &[u8], cols: usize, out: &mut [u8]) {
    let nb = cols / QK;
    assert!(group.len() >= q5_0_group_bytes(cols) && out.len() >= nb * Q5_0_DECODED_BLOCK);
    #[cfg(target_arch = "x86_64")]
    if crate::tier::at_least(crate::tier::Tier::Avx2) {
        // SAFETY: AVX2 detected; lengths checked above.
        unsafe { x86_q5_0_avx2::decode_q5_0_group_avx2(group, nb, out) };
        return;
    }
    decode_q5_0_group_plain(group, nb, out);
}

pub(crate) fn decode_q5_0_group_plain(group: &[u8], nb: usize, out: &mut [u8]) {
    for b in 0..nb {
        let blk = &group[b * Q5_0_BLOCK_BYTES..(b + 1) * Q5_0_BLOCK_BYTES];
        let mask = |m: usize| u64::from_le_bytes(blk[16 + m * 8..24 + m * 8].try_into().unwrap());
        // Fifth bit of row r, column c: bit c % 8 of row r's byte in mask c / 8.
        let fifth = |r: usize, c: usize| (((mask(c / 8) >> (8 * r + c % 8)) & 1) as u8) << 4;
        for kk in 0..2 {
            for h in 0..2 {
                for i in 0..32 {
                    let (r, j) = (4 * h + i / 8, kk * 8 + i % 8);
                    let q = blk[48 + kk * 64 + h * 32 + i];
                    let o = b * Q5_0_DECODED_BLOCK + kk * 128 + h * 64 + i;
                    out[o] = (q & 0x0F) | fifth(r, j);
                    out[o + 32] = (q >> 4) | fifth(r, j + 16);
                }
            }
        }
    }
}

/// [`dot_group_q5_0`] over a group already decoded by [`decode_q5_0_group`] (`decoded`);
/// falls back to `dot_group_q5_0` where [`q5_0_predecode_pays`] is false.
pub fn dot_group_q5_0_decoded<const T: usize>(
    group: &[u8],
    decoded: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    check_lengths(group, q5_0_group_bytes(cols), cols, acts);
    assert!(decoded.len() >= cols / QK * Q5_0_DECODED_BLOCK);
    #[cfg(target_arch = "x86_64")]
    if q5_0_predecode_pays() {
        // SAFETY: AVX2, FMA and F16C detected at run time (byte_dot_isa); lengths checked.
        return unsafe {
            x86_q5_0_avx2::dot_group_q5_0_avx2::<T>(group, Some(decoded), cols / QK, acts)
        };
    }
    dot_group_q5_0::<T>(group, cols, acts)
}

/// The 8 rows of one Q5_0x8 group against `T` activation rows.
pub fn dot_group_q5_0<const T: usize>(
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    check_lengths(group, q5_0_group_bytes(cols), cols, acts);
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::ByteDotIsa;
        match crate::quant::byte_dot_isa() {
            // SAFETY: VNNI detected at run time; lengths checked above.
            ByteDotIsa::Vnni => {
                return unsafe { x86_q5_0::dot_group_q5_0_vnni512::<T>(group, cols / QK, acts) }
            }
            // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
            ByteDotIsa::Avx2 => {
                return unsafe {
                    x86_q5_0_avx2::dot_group_q5_0_avx2::<T>(group, None, cols / QK, acts)
                }
            }
            ByteDotIsa::Scalar => {}
        }
    }
    dot_group_unpacked::<T>(QuantType::Q5_0, unpack_q5_0_row, group, cols, acts)
}
