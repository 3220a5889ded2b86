//! The K-quants whose scales cover 16 values (Q6_K, Q3_K, Q2_K) repacked in groups of 8 rows
//! for decode, as Q4_K is in [`crate::repack`]: one 256-bit load holds the same 8 columns of 4
//! rows, which all meet one 64-bit broadcast of the activations, and the 8 rows' integer sums
//! stay in the lanes of a register over a whole super-block.
//!
//! In plain rows these formats go one row at a time through `quant::x86::dot_rows`, with float
//! work per 32 values: a 2-core AVX2 machine streamed Q3_K at 5 GB/s and Q6_K at 15 (the probe
//! read 27). Every K-quant mix llama.cpp writes has a Q6_K `output.weight` (a third of a
//! Q3_K_M file's bytes per decoded token), so all of them wait on these kernels.
//!
//! Layout of one 8-row group, per 256-column super-block:
//! - the 8 rows' f16 `d` (16 bytes); Q2_K then its 8 `dmin` (16 bytes);
//! - the scales `[sub-block 0..16][row 0..8]`, one byte each: Q6_K's int8 scales, Q3_K's 6-bit
//!   scales unpacked to int8 (−32..31; 32 bytes more per group than the plain rows, +3.6%),
//!   Q2_K's bytes as they are (scale in the low nibble, min in the high one);
//! - the rows' quantized bytes (Q6_K: `ql` then `qh`, 192 bytes; Q3_K: `hmask` then `qs`, 96;
//!   Q2_K: `qs`, 64) in 8-byte units: unit `u` of row `r` at `64u + 8r`. The kernels address
//!   the plain format's own byte offsets, so each row's 8 bytes of a unit hold 8 consecutive
//!   columns of every bit plane they carry.
//!
//! The values are taken unsigned (Q6_K's `q` 0..63, Q3_K's 0..7 with the third bit) and the
//! offsets (32, 4) subtracted once per 16 values against the activations' per-16 sums
//! ([`QuantizedActivations::per_super_block_sums16`]), as are Q2_K's mins.
//!
//! [`QuantizedActivations::per_super_block_sums16`]: crate::quant::QuantizedActivations::per_super_block_sums16

use super::group::{deinterleave_row, interleave_row, ActRow, GROUP};
use crate::quant::{QuantType, QK_K};

/// Which of the three formats a group holds (the `KIND` of the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum K16 {
    Q6K = 0,
    Q3K = 1,
    Q2K = 2,
}

impl K16 {
    pub fn plain(self) -> QuantType {
        match self {
            K16::Q6K => QuantType::Q6K,
            K16::Q3K => QuantType::Q3K,
            K16::Q2K => QuantType::Q2K,
        }
    }

    /// Bytes of the group header (the f16 factors).
    const fn header(self) -> usize {
        match self {
            K16::Q2K => 32,
            _ => 16,
        }
    }

    /// Quantized bytes per row and super-block, and where they start in a plain block.
    const fn quants(self) -> (usize, usize) {
        match self {
            K16::Q6K => (192, 0),
            K16::Q3K => (96, 0),
            K16::Q2K => (64, 16),
        }
    }

    /// Bytes of one super-block of a group.
    pub const fn super_bytes(self) -> usize {
        self.header() + 16 * GROUP + self.quants().0 * GROUP
    }

    pub fn group_bytes(self, cols: usize) -> usize {
        cols / QK_K * self.super_bytes()
    }

    /// Offsets in a plain block of: `d`, `dmin` (Q2_K), the scales.
    const fn plain_fields(self) -> (usize, usize, usize) {
        match self {
            K16::Q6K => (208, 0, 192),
            K16::Q3K => (108, 0, 96),
            K16::Q2K => (80, 82, 0),
        }
    }
}

/// Q3_K's 16 scales (as `quant::q3k_scale` reads them, −32..31) packed back into 12 bytes.
fn pack_q3k_scales(s: &[i8; 16]) -> [u8; 12] {
    let mut out = [0u8; 12];
    for (j, &v) in s.iter().enumerate() {
        let stored = (v as i32 + 32) as u8;
        out[j % 8] |= (stored & 0xF) << (4 * (j / 8));
        out[8 + j % 4] |= (stored >> 4) << (2 * (j / 4));
    }
    out
}

/// `rows` (a multiple of 8) plain rows of `kind` in groups of 8.
pub fn repack(kind: K16, data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(rows.is_multiple_of(GROUP) && cols.is_multiple_of(QK_K));
    let (t, sbb) = (kind.plain(), kind.super_bytes());
    let (rb, bb) = (t.row_bytes(cols), t.block_bytes());
    let (d_at, dmin_at, sc_at) = kind.plain_fields();
    let (qn, q_at) = kind.quants();
    let (h, nsb) = (kind.header(), cols / QK_K);
    let mut out = vec![0u8; rows / GROUP * kind.group_bytes(cols)];
    for (g, dst_group) in out.chunks_exact_mut(kind.group_bytes(cols)).enumerate() {
        for (sb, dst) in dst_group.chunks_exact_mut(sbb).enumerate() {
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + sb * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[d_at..d_at + 2]);
                if kind == K16::Q2K {
                    dst[16 + 2 * r..18 + 2 * r].copy_from_slice(&src[dmin_at..dmin_at + 2]);
                }
                for j in 0..16 {
                    dst[h + j * GROUP + r] = match kind {
                        K16::Q3K => crate::quant::q3k_scale(j, &src[sc_at..sc_at + 12]) as u8,
                        _ => src[sc_at + j],
                    };
                }
                interleave_row(&src[q_at..q_at + qn], r, &mut dst[h + 16 * GROUP..]);
            }
        }
        debug_assert_eq!(nsb * sbb, dst_group.len());
    }
    out
}

/// Row `r` of repacked data back in plain blocks of `kind`.
pub fn unpack_row(kind: K16, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (g, i) = (r / GROUP, r % GROUP);
    let (bb, sbb) = (kind.plain().block_bytes(), kind.super_bytes());
    let (d_at, dmin_at, sc_at) = kind.plain_fields();
    let (qn, q_at) = kind.quants();
    let h = kind.header();
    let group = &data[g * kind.group_bytes(cols)..][..kind.group_bytes(cols)];
    for (src, dst) in group.chunks_exact(sbb).zip(out.chunks_exact_mut(bb)) {
        dst[d_at..d_at + 2].copy_from_slice(&src[2 * i..2 * i + 2]);
        if kind == K16::Q2K {
            dst[dmin_at..dmin_at + 2].copy_from_slice(&src[16 + 2 * i..18 + 2 * i]);
        }
        let scales: [u8; 16] = std::array::from_fn(|j| src[h + j * GROUP + i]);
        match kind {
            K16::Q3K => {
                dst[sc_at..sc_at + 12].copy_from_slice(&pack_q3k_scales(&scales.map(|s| s as i8)))
            }
            _ => dst[sc_at..sc_at + 16].copy_from_slice(&scales),
        }
        deinterleave_row(&src[h + 16 * GROUP..], i, &mut dst[q_at..q_at + qn]);
    }
}

/// The 8 rows of one group against `T` activation rows quantized with one scale per
/// super-block and a sum per 16 values.
pub fn dot_group<const T: usize>(
    kind: K16,
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    assert!(group.len() >= kind.group_bytes(cols) && cols.is_multiple_of(QK_K));
    for a in acts {
        assert!(
            a.2.len() >= cols && a.0.len() >= cols / 32 && a.1.len() >= cols / 16,
            "{kind:?}x8 needs activations with a sum per 16 values"
        );
    }
    #[cfg(target_arch = "x86_64")]
    if super::group::k16_kernels_available() {
        let nsb = cols / QK_K;
        // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
        return unsafe {
            match kind {
                K16::Q6K => x86::dot_group_avx2::<T, 0>(group, nsb, acts),
                K16::Q3K => x86::dot_group_avx2::<T, 1>(group, nsb, acts),
                K16::Q2K => x86::dot_group_avx2::<T, 2>(group, nsb, acts),
            }
        };
    }
    dot_group_plain::<T>(kind, group, cols, acts)
}

/// Plain reference: the formula of the layout, one value at a time (the tests' reference for
/// the SIMD kernel, and the kernel where there is none).
pub fn dot_group_plain<const T: usize>(
    kind: K16,
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    let (sbb, h) = (kind.super_bytes(), kind.header());
    let q0 = h + 16 * GROUP;
    let f16 = |b: &[u8], o: usize| half::f16::from_le_bytes([b[o], b[o + 1]]).to_f32();
    // Byte `o` of row `r`'s quantized bytes within super-block `blk`.
    let byte = |blk: &[u8], r: usize, o: usize| blk[q0 + (o / 8) * 64 + r * 8 + o % 8];
    let mut out = [[0.0f32; 8]; T];
    for (sb, blk) in group.chunks_exact(sbb).take(cols / QK_K).enumerate() {
        for (t, a) in acts.iter().enumerate() {
            let ad = a.0[sb * 8];
            for r in 0..GROUP {
                let (mut sum, mut mins) = (0i64, 0i64);
                for g in 0..16 {
                    let sc = blk[h + g * GROUP + r];
                    let mut s = 0i64;
                    for l in 0..16 {
                        let c = g * 16 + l; // column in the super-block
                        let (n, j, e) = (c / 128, (c % 128) / 32, c % 32);
                        let v = match kind {
                            K16::Q6K => {
                                let ql = byte(blk, r, 64 * n + 32 * (j % 2) + e) >> (4 * (j / 2));
                                let qh = byte(blk, r, 128 + 32 * n + e) >> (2 * j);
                                ((ql & 0xF) | ((qh & 3) << 4)) as i64 - 32
                            }
                            K16::Q3K => {
                                let lo = (byte(blk, r, 32 + 32 * n + e) >> (2 * j)) & 3;
                                let hi = (byte(blk, r, e) >> (4 * n + j)) & 1;
                                (lo | (hi << 2)) as i64 - 4
                            }
                            K16::Q2K => ((byte(blk, r, 32 * n + e) >> (2 * j)) & 3) as i64,
                        };
                        s += v * a.2[sb * QK_K + c] as i64;
                    }
                    match kind {
                        K16::Q2K => {
                            sum += (sc & 0xF) as i64 * s;
                            mins += (sc >> 4) as i64 * a.1[sb * 16 + g] as i64;
                        }
                        _ => sum += sc as i8 as i64 * s,
                    }
                }
                out[t][r] += ad * f16(blk, 2 * r) * sum as f32;
                if kind == K16::Q2K {
                    out[t][r] -= ad * f16(blk, 16 + 2 * r) * mins as f32;
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    use super::super::group::x86::{half_lanes, rows_in_order};
    use super::{ActRow, GROUP, QK_K};

    /// Per half (rows 0–3, 4–7): i16 lane k of a sub-block's scale vector takes row
    /// `4h + k / 4`'s byte into its high byte (so an arithmetic shift sign-extends it, and
    /// Q2_K's nibbles come out with logical ones).
    pub(crate) const SPREAD_HI: [[i8; 32]; 2] = {
        let mut s = [[-1i8; 32]; 2];
        let mut h = 0;
        while h < 2 {
            let mut k = 0;
            while k < 16 {
                s[h][2 * k + 1] = (4 * h + k / 4) as i8;
                k += 1;
            }
            h += 1;
        }
        s
    };

    #[inline(always)]
    unsafe fn shift_right(v: __m256i, s: i32) -> __m256i {
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(s))
    }

    #[inline(always)]
    unsafe fn shift_left(v: __m256i, s: i32) -> __m256i {
        _mm256_sll_epi16(v, _mm_cvtsi32_si128(s))
    }

    /// The weights of half `h`, columns `128n + 32j + 8kk ..+ 8` of 4 rows, as unsigned bytes.
    #[inline(always)]
    unsafe fn weights<const KIND: u8, const N: usize, const J: usize>(
        q: *const u8,
        h: usize,
        kk: usize,
    ) -> __m256i {
        let (n, j) = (N, J);
        let unit = |u: usize| _mm256_loadu_si256(q.add(u * 64 + h * 32) as *const __m256i);
        match KIND {
            0 => {
                // Q6_K: low nibbles from ql[64n + 32(j%2) + l] (high nibble for j ≥ 2), bits
                // 2j..2j+2 of qh[32n + l] as bits 4–5.
                let ql = unit(8 * n + 4 * (j % 2) + kk);
                let qh = unit(16 + 4 * n + kk);
                let lo =
                    _mm256_and_si256(shift_right(ql, 4 * (j / 2) as i32), _mm256_set1_epi8(15));
                let hi = match j {
                    0 => shift_left(qh, 4),
                    1 => shift_left(qh, 2),
                    2 => qh,
                    _ => shift_right(qh, 2),
                };
                _mm256_or_si256(lo, _mm256_and_si256(hi, _mm256_set1_epi8(0x30)))
            }
            1 => {
                // Q3_K: bits 2j of qs[32n + l], bit 4n + j of hmask[l] as the third bit.
                let qs = unit(4 + 4 * n + kk);
                let hm = unit(kk);
                let lo = _mm256_and_si256(shift_right(qs, 2 * j as i32), _mm256_set1_epi8(3));
                let b = (4 * n + j) as i32;
                let hi = if b >= 2 {
                    shift_right(hm, b - 2)
                } else {
                    shift_left(hm, 2 - b)
                };
                _mm256_or_si256(lo, _mm256_and_si256(hi, _mm256_set1_epi8(4)))
            }
            _ => {
                // Q2_K: bits 2j of qs[32n + l].
                let qs = unit(4 * n + kk);
                _mm256_and_si256(shift_right(qs, 2 * j as i32), _mm256_set1_epi8(3))
            }
        }
    }

    /// Chunk (N, J) of a super-block: columns `128N + 32J ..+ 32`, sub-blocks `8N + 2J` and
    /// `8N + 2J + 1`, added to the i32 sums (`isb`) and Q2_K's min sums (`imin`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn chunk<
        const T: usize,
        const H: usize,
        const KIND: u8,
        const N: usize,
        const J: usize,
    >(
        q: *const u8,
        scales: *const u8,
        acts: &[ActRow; T],
        sb: usize,
        h0: usize,
        spread: &[__m256i; H],
        isb: &mut [[__m256i; T]; H],
        imin: &mut [[__m256i; T]; H],
    ) {
        for kp in 0..2 {
            let g = 8 * N + 2 * J + kp; // the 16-value sub-block
            let mut isum = [[_mm256_setzero_si256(); T]; H];
            for kk in 2 * kp..2 * kp + 2 {
                let mut w = [_mm256_setzero_si256(); H];
                for (i, wi) in w.iter_mut().enumerate() {
                    *wi = weights::<KIND, N, J>(q, h0 + i, kk);
                }
                for (t, a) in acts.iter().enumerate() {
                    let p = a.2.as_ptr().add(sb * QK_K + 128 * N + 32 * J + 8 * kk);
                    let av = _mm256_set1_epi64x((p as *const i64).read_unaligned());
                    // Unsigned ≤ 63 times |a| ≤ 127: a pair ≤ 16002, two ≤ 32004.
                    for i in 0..H {
                        isum[i][t] = _mm256_add_epi16(isum[i][t], _mm256_maddubs_epi16(w[i], av));
                    }
                }
            }
            let sc = _mm256_set1_epi64x((scales.add(g * GROUP) as *const i64).read_unaligned());
            for i in 0..H {
                let hi = _mm256_shuffle_epi8(sc, spread[i]);
                for (t, a) in acts.iter().enumerate() {
                    let asum = *a.1.get_unchecked(sb * 16 + g);
                    match KIND {
                        0 | 1 => {
                            let s = _mm256_srai_epi16::<8>(hi);
                            // The offset (32 or 4) times the sub-block's sum, half
                            // in each of a row's two lanes.
                            let off = if KIND == 0 { 16 * asum } else { 2 * asum };
                            let off = _mm256_set1_epi32(off & 0xFFFF);
                            let v = _mm256_sub_epi32(
                                _mm256_madd_epi16(isum[i][t], s),
                                _mm256_madd_epi16(off, s),
                            );
                            isb[i][t] = _mm256_add_epi32(isb[i][t], v);
                        }
                        _ => {
                            let nib = _mm256_set1_epi16(15);
                            let s = _mm256_and_si256(_mm256_srli_epi16::<8>(hi), nib);
                            let m = _mm256_srli_epi16::<12>(hi);
                            isb[i][t] =
                                _mm256_add_epi32(isb[i][t], _mm256_madd_epi16(isum[i][t], s));
                            // The min times the sum, in a row's first lane only.
                            let sum = _mm256_set1_epi64x((asum & 0xFFFF) as i64);
                            imin[i][t] = _mm256_add_epi32(imin[i][t], _mm256_madd_epi16(sum, m));
                        }
                    }
                }
            }
        }
    }

    /// The whole group against `T` tokens; see the module documentation for the layout.
    /// Registers: per half and token an i16 sum (one sub-block), an i32 sum (the super-block),
    /// Q2_K's i32 min sum and an f32 accumulator; one token takes both halves in one pass,
    /// more tokens take the halves one after the other, as the Q4_Kx8 kernel does.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn dot_group_avx2<const T: usize, const KIND: u8>(
        group: &[u8],
        nsb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let halves: [[__m256; 2]; T] = if T == 1 {
            let [h0, h1] = halves::<T, 2, KIND>(group, nsb, acts, 0);
            std::array::from_fn(|t| [h0[t], h1[t]])
        } else {
            let [h0] = halves::<T, 1, KIND>(group, nsb, acts, 0);
            let [h1] = halves::<T, 1, KIND>(group, nsb, acts, 1);
            std::array::from_fn(|t| [h0[t], h1[t]])
        };
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            let rows = rows_in_order(halves[t][0], halves[t][1]);
            _mm256_storeu_ps(out[t].as_mut_ptr(), rows);
        }
        out
    }

    /// Halves `h0..h0 + H` against `T` tokens: per half and token, rows `4h..4h + 4` each in
    /// two lanes.
    #[inline(always)]
    unsafe fn halves<const T: usize, const H: usize, const KIND: u8>(
        group: &[u8],
        nsb: usize,
        acts: &[ActRow; T],
        h0: usize,
    ) -> [[__m256; T]; H] {
        let (header, qbytes) = match KIND {
            0 => (16, 192),
            1 => (16, 96),
            _ => (32, 64),
        };
        let super_bytes = header + 16 * GROUP + qbytes * GROUP;
        let base = group.as_ptr();
        let mut spread = [_mm256_setzero_si256(); H];
        for (i, s) in spread.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(SPREAD_HI[h0 + i].as_ptr() as *const __m256i);
        }
        let mut acc = [[_mm256_setzero_ps(); T]; H];
        for sb in 0..nsb {
            let blk = base.add(sb * super_bytes);
            let ahead = blk.wrapping_add(2 * super_bytes) as *const i8;
            for line in 0..super_bytes.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let scales = blk.add(header);
            let q = blk.add(header + 16 * GROUP);
            let mut isb = [[_mm256_setzero_si256(); T]; H];
            let mut imin = [[_mm256_setzero_si256(); T]; H];
            // The (n, j) chunks as constants, so that every shift is an immediate and no
            // `match` on them is left in the loop (LLVM had kept a jump table).
            macro_rules! chunks {
                ($(($n:literal, $j:literal)),*) => {
                    $(chunk::<T, H, KIND, $n, $j>(q, scales, acts, sb, h0, &spread, &mut isb, &mut imin);)*
                };
            }
            chunks!(
                (0, 0),
                (0, 1),
                (0, 2),
                (0, 3),
                (1, 0),
                (1, 1),
                (1, 2),
                (1, 3)
            );
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let dmin = if KIND == 2 {
                _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i))
            } else {
                _mm256_setzero_ps()
            };
            for i in 0..H {
                let dh = half_lanes(d, h0 + i);
                let mh = half_lanes(dmin, h0 + i);
                for (t, a) in acts.iter().enumerate() {
                    let ad = _mm256_set1_ps(*a.0.get_unchecked(sb * 8));
                    acc[i][t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(isb[i][t]),
                        _mm256_mul_ps(dh, ad),
                        acc[i][t],
                    );
                    if KIND == 2 {
                        acc[i][t] = _mm256_fnmadd_ps(
                            _mm256_cvtepi32_ps(imin[i][t]),
                            _mm256_mul_ps(mh, ad),
                            acc[i][t],
                        );
                    }
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
    fn q3k_scales_pack_back() {
        let s: [i8; 16] = std::array::from_fn(|j| (j as i8) * 4 - 32);
        let packed = pack_q3k_scales(&s);
        for (j, &v) in s.iter().enumerate() {
            assert_eq!(crate::quant::q3k_scale(j, &packed), v);
        }
    }

    #[test]
    fn groups_unpack_to_the_plain_rows() {
        for kind in [K16::Q6K, K16::Q3K, K16::Q2K] {
            let (rows, cols) = (16, 512);
            let data = rows_of(kind.plain(), rows, cols, 1);
            let packed = repack(kind, &data, rows, cols);
            assert_eq!(packed.len(), rows / GROUP * kind.group_bytes(cols));
            check_unpack(kind.plain(), &data, &packed, cols, |p, c, r, o| {
                unpack_row(kind, p, c, r, o)
            });
        }
    }

    fn check<const T: usize>(kind: K16, rows: usize, cols: usize) {
        let data = rows_of(kind.plain(), rows, cols, T);
        let packed = repack(kind, &data, rows, cols);
        let a = QuantizedActivations::per_super_block_sums16(&activations(T, cols), cols);
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
        for kind in [K16::Q6K, K16::Q3K, K16::Q2K] {
            check::<1>(kind, 16, 512);
            check::<2>(kind, 8, 256);
            check::<3>(kind, 8, 768);
            check::<4>(kind, 16, 1024);
        }
    }
}
