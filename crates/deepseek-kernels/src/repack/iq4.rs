//! IQ4_NL and IQ4_XS repacked in groups of 8 rows for decode (AVX2), as the K-quants are in
//! [`crate::repack::k16`]: a 256-bit load holds the same 8 columns of 4 rows, whose 4-bit
//! indices become int8 levels by one byte shuffle and meet one 64-bit broadcast of the
//! activations. llama.cpp's IQ4_XS files (IQ4_XS rows, IQ4_NL where a row is not a multiple
//! of 256 wide) otherwise went one row at a time.
//!
//! Layout of one 8-row group:
//! - IQ4_NL, per 32-column block (144 bytes, as 8 plain blocks): the 8 rows' f16 `d`, then
//!   the rows' 16 index bytes in two 8-byte units, unit `u` of row `r` at `16 + 64u + 8r`.
//! - IQ4_XS, per 256-column super-block (1104 bytes, 1.5% more than 8 plain blocks): the 8
//!   rows' f16 `d`, the 6-bit sub-block scales unpacked to int8 (−32..31) as `[sub-block][row]`,
//!   then the rows' 128 index bytes in 16 units, unit `u` of row `r` at `80 + 64u + 8r`.
//!
//! In both, unit `2b + kk` of a 32-value block `b` holds columns `32b + 8kk ..+ 8` in its low
//! nibbles and `32b + 16 + 8kk ..+ 8` in its high ones.

use super::group::{deinterleave_row, interleave_row, ActRow, GROUP};
use crate::quant::{QuantType, IQ4_LEVELS, QK, QK_K};

/// Which of the two formats a group holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iq4 {
    NL,
    XS,
}

impl Iq4 {
    pub fn plain(self) -> QuantType {
        match self {
            Iq4::NL => QuantType::IQ4NL,
            Iq4::XS => QuantType::IQ4XS,
        }
    }

    /// Columns per block of the group layout (the plain format's block).
    const fn cols(self) -> usize {
        match self {
            Iq4::NL => QK,
            Iq4::XS => QK_K,
        }
    }

    /// Bytes before the index units in a group block.
    const fn head(self) -> usize {
        match self {
            Iq4::NL => 16,
            Iq4::XS => 16 + 8 * GROUP,
        }
    }

    pub const fn block_bytes(self) -> usize {
        self.head() + self.cols() / 2 * GROUP
    }

    pub fn group_bytes(self, cols: usize) -> usize {
        cols / self.cols() * self.block_bytes()
    }

    /// Offset of the index bytes in a plain block.
    const fn plain_qs(self) -> usize {
        match self {
            Iq4::NL => 2,
            Iq4::XS => 8,
        }
    }
}

/// IQ4_XS's 6-bit scale of sub-block `ib` (stored + 32) from its plain block.
fn xs_scale(b: &[u8], ib: usize) -> u8 {
    let sh = u16::from_le_bytes([b[2], b[3]]);
    ((b[4 + ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((sh >> (2 * ib)) & 3) as u8) << 4)
}

/// `rows` (a multiple of 8) plain rows in groups of 8.
pub fn repack(kind: Iq4, data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(rows.is_multiple_of(GROUP) && cols.is_multiple_of(kind.cols()));
    let t = kind.plain();
    let (rb, bb, gbb) = (t.row_bytes(cols), t.block_bytes(), kind.block_bytes());
    let (head, qs, units) = (kind.head(), kind.plain_qs(), kind.cols() / 16);
    let mut out = vec![0u8; rows / GROUP * kind.group_bytes(cols)];
    for (g, group) in out.chunks_exact_mut(kind.group_bytes(cols)).enumerate() {
        for (b, dst) in group.chunks_exact_mut(gbb).enumerate() {
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + b * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                if kind == Iq4::XS {
                    for ib in 0..8 {
                        dst[16 + ib * GROUP + r] = (xs_scale(src, ib) as i8 - 32) as u8;
                    }
                }
                interleave_row(&src[qs..qs + 8 * units], r, &mut dst[head..]);
            }
        }
    }
    out
}

/// Row `r` of repacked data back in plain blocks.
pub fn unpack_row(kind: Iq4, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (g, i) = (r / GROUP, r % GROUP);
    let (bb, gbb) = (kind.plain().block_bytes(), kind.block_bytes());
    let (head, qs, units) = (kind.head(), kind.plain_qs(), kind.cols() / 16);
    let group = &data[g * kind.group_bytes(cols)..][..kind.group_bytes(cols)];
    for (src, dst) in group.chunks_exact(gbb).zip(out.chunks_exact_mut(bb)) {
        dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
        if kind == Iq4::XS {
            let (mut sh, mut sl) = (0u16, [0u8; 4]);
            for ib in 0..8 {
                let ls = (src[16 + ib * GROUP + i] as i8 as i32 + 32) as u8;
                sl[ib / 2] |= (ls & 0xF) << (4 * (ib % 2));
                sh |= ((ls >> 4) as u16) << (2 * ib);
            }
            dst[2..4].copy_from_slice(&sh.to_le_bytes());
            dst[4..8].copy_from_slice(&sl);
        }
        deinterleave_row(&src[head..], i, &mut dst[qs..qs + 8 * units]);
    }
}

/// The 8 rows of one group against `T` activation rows: per-32 scales for IQ4_NL, one scale
/// per super-block for IQ4_XS.
pub fn dot_group<const T: usize>(
    kind: Iq4,
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    assert!(group.len() >= kind.group_bytes(cols) && cols.is_multiple_of(kind.cols()));
    for a in acts {
        assert!(a.2.len() >= cols && a.0.len() >= cols / QK);
    }
    #[cfg(target_arch = "x86_64")]
    if super::group::k16_kernels_available() {
        let nb = cols / kind.cols();
        // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
        return unsafe {
            match kind {
                Iq4::NL => x86::dot_group_avx2::<T, false>(group, nb, acts),
                Iq4::XS => x86::dot_group_avx2::<T, true>(group, nb, acts),
            }
        };
    }
    dot_group_plain::<T>(kind, group, cols, acts)
}

/// Plain reference: the layout's formula one value at a time.
pub fn dot_group_plain<const T: usize>(
    kind: Iq4,
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    let (gbb, head) = (kind.block_bytes(), kind.head());
    let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    let mut out = [[0.0f32; 8]; T];
    for (b, blk) in group.chunks_exact(gbb).take(cols / kind.cols()).enumerate() {
        for (t, a) in acts.iter().enumerate() {
            for r in 0..GROUP {
                for sub in 0..kind.cols() / QK {
                    let mut s = 0i64;
                    for c in 0..QK {
                        let (kk, hi) = ((c % 16) / 8, c >= 16);
                        let byte = blk[head + (2 * sub + kk) * 64 + r * 8 + c % 8];
                        let idx = if hi { byte >> 4 } else { byte & 0xF };
                        let col = b * kind.cols() + sub * QK + c;
                        s += IQ4_LEVELS[idx as usize] as i64 * a.2[col] as i64;
                    }
                    let scale = match kind {
                        Iq4::NL => 1,
                        Iq4::XS => blk[16 + sub * GROUP + r] as i8 as i64,
                    };
                    let ad = a.0[(b * kind.cols()) / QK + sub];
                    out[t][r] += ad * f16(blk, 2 * r) * (scale * s) as f32;
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::group::x86::{half_lanes, rows_in_order};
    use super::super::k16::x86::SPREAD_HI;
    use super::{ActRow, GROUP, IQ4_LEVELS, QK, QK_K};

    /// The levels of half `h`'s 4 rows × 8 columns (low or high nibbles of a unit) against the
    /// 8 activation bytes at `a`: i16 pairs (|level|, |a| ≤ 127: a pair ≤ 32258).
    #[inline(always)]
    unsafe fn level_products(unit: __m256i, high: bool, table: __m256i, a: *const i8) -> __m256i {
        let idx = if high {
            _mm256_and_si256(_mm256_srli_epi16::<4>(unit), _mm256_set1_epi8(15))
        } else {
            _mm256_and_si256(unit, _mm256_set1_epi8(15))
        };
        let w = _mm256_shuffle_epi8(table, idx);
        let av = _mm256_set1_epi64x((a as *const i64).read_unaligned());
        _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(av, w))
    }

    /// The group against `T` tokens (`XS`: IQ4_XS super-blocks, else IQ4_NL blocks).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group_avx2<const T: usize, const XS: bool>(
        group: &[u8],
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let halves: [[__m256; 2]; T] = if T == 1 {
            let [h0, h1] = halves::<T, 2, XS>(group, nb, acts, 0);
            std::array::from_fn(|t| [h0[t], h1[t]])
        } else {
            let [h0] = halves::<T, 1, XS>(group, nb, acts, 0);
            let [h1] = halves::<T, 1, XS>(group, nb, acts, 1);
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

    #[inline(always)]
    unsafe fn halves<const T: usize, const H: usize, const XS: bool>(
        group: &[u8],
        nb: usize,
        acts: &[ActRow; T],
        h0: usize,
    ) -> [[__m256; T]; H] {
        let (cols, head) = if XS { (QK_K, 16 + 8 * GROUP) } else { (QK, 16) };
        let block_bytes = head + cols / 2 * GROUP;
        let t16 = _mm_loadu_si128(IQ4_LEVELS.as_ptr() as *const __m128i);
        let table = _mm256_set_m128i(t16, t16);
        let ones = _mm256_set1_epi16(1);
        let mut spread = [_mm256_setzero_si256(); H];
        for (i, s) in spread.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(SPREAD_HI[h0 + i].as_ptr() as *const __m256i);
        }
        let base = group.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); T]; H];
        for b in 0..nb {
            let blk = base.add(b * block_bytes);
            let ahead = blk.wrapping_add(4 * block_bytes) as *const i8;
            for line in 0..block_bytes.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let mut isb = [[_mm256_setzero_si256(); T]; H];
            for sub in 0..cols / QK {
                let mut scale = [ones; H];
                if XS {
                    let sc = _mm256_set1_epi64x(
                        (blk.add(16 + sub * GROUP) as *const i64).read_unaligned(),
                    );
                    for i in 0..H {
                        scale[i] = _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(sc, spread[i]));
                    }
                }
                for kk in 0..2 {
                    for i in 0..H {
                        let unit =
                            _mm256_loadu_si256(blk.add(head + (2 * sub + kk) * 64 + (h0 + i) * 32)
                                as *const __m256i);
                        for (t, a) in acts.iter().enumerate() {
                            let col = b * cols + sub * QK + 8 * kk;
                            let pa = a.2.as_ptr().add(col);
                            let lo = level_products(unit, false, table, pa);
                            let hi = level_products(unit, true, table, pa.add(16));
                            // Each product pair times the row's scale (IQ4_XS, |s| ≤ 32) or 1.
                            let v = _mm256_add_epi32(
                                _mm256_madd_epi16(lo, scale[i]),
                                _mm256_madd_epi16(hi, scale[i]),
                            );
                            isb[i][t] = _mm256_add_epi32(isb[i][t], v);
                        }
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            for i in 0..H {
                let dh = half_lanes(d, h0 + i);
                for (t, a) in acts.iter().enumerate() {
                    let ad = _mm256_set1_ps(*a.0.get_unchecked(b * cols / QK));
                    acc[i][t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isb[i][t]),
                        _mm256_mul_ps(dh, ad),
                        acc[i][t],
                    );
                }
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::super::group::test_support::{activations, check_groups, check_unpack, rows_of};
    use super::*;
    use crate::quant::QuantizedActivations;

    #[test]
    fn groups_unpack_to_the_plain_rows() {
        for (kind, cols) in [(Iq4::NL, 96), (Iq4::XS, 512)] {
            let rows = 16;
            let data = rows_of(kind.plain(), rows, cols, 1);
            let packed = repack(kind, &data, rows, cols);
            assert_eq!(packed.len(), rows / GROUP * kind.group_bytes(cols));
            check_unpack(kind.plain(), &data, &packed, cols, |p, c, r, o| {
                unpack_row(kind, p, c, r, o)
            });
        }
    }

    fn check<const T: usize>(kind: Iq4, rows: usize, cols: usize) {
        let data = rows_of(kind.plain(), rows, cols, T);
        let packed = repack(kind, &data, rows, cols);
        let x = activations(T, cols);
        let a = match kind {
            Iq4::NL => QuantizedActivations::new(&x, cols),
            Iq4::XS => QuantizedActivations::per_super_block(&x, cols),
        };
        check_groups::<T>(
            kind.plain(),
            &data,
            &packed,
            kind.group_bytes(cols),
            &a,
            |g, acts| dot_group_plain::<T>(kind, g, cols, acts),
            |g, acts| dot_group::<T>(kind, g, cols, acts),
        );
    }

    #[test]
    fn repacked_groups_equal_the_plain_rows() {
        check::<1>(Iq4::NL, 16, 1408);
        check::<2>(Iq4::NL, 8, 64);
        check::<3>(Iq4::NL, 8, 96);
        check::<4>(Iq4::NL, 16, 128);
        check::<1>(Iq4::XS, 16, 512);
        check::<2>(Iq4::XS, 8, 256);
        check::<3>(Iq4::XS, 8, 768);
        check::<4>(Iq4::XS, 16, 1024);
    }
}
