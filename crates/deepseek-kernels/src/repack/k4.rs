//! Q4_K and Q5_K in groups of 8 rows ("Q4_Kx8", "Q5_Kx8") for decode and the quantized GEMM
//! panels.

use super::group::{
    check_lengths, deinterleave_row, dot_group_unpacked, interleave_row, ActRow, GROUP,
};
use crate::quant::QuantType;

/// Q4_K repacked in groups of 8 rows ("Q4_Kx8"), per 256-column super-block (1184 bytes, 2.8%
/// more than 8 Q4_K blocks because the 6-bit scales are stored unpacked):
/// 8 f16 `d`, 8 f16 `dmin`, scales `[sub-block][row]`, mins `[sub-block][row]`, then for each
/// 32-byte chunk c of the original rows (sub-blocks 2c and 2c+1 as low and high nibbles), for
/// each 8-byte column group, the 8 bytes of rows 0..8: one 512-bit load holds 8 bytes of each
/// row, which all meet the same 8 activation bytes (a 64-bit broadcast, no shuffles).
pub const Q4K_SUPER_BYTES: usize = 16 + 16 + 64 + 64 + 1024;

pub fn q4k_group_bytes(cols: usize) -> usize {
    cols / crate::quant::QK_K * Q4K_SUPER_BYTES
}

pub fn repack_q4_k(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    repack_k4_k5(data, rows, cols, false)
}

/// Q5_K in groups of 8 rows ("Q5_Kx8", 1440 bytes per super-block, 2.3% more than 8 Q5_K
/// blocks): the Q4_Kx8 super-block of the low four bits, then for each 8-byte column group kk
/// the 8 `qh` bytes kk*8..kk*8+8 of rows 0..8 (bit j of a byte: the fifth bit of sub-block j).
pub const Q5K_SUPER_BYTES: usize = Q4K_SUPER_BYTES + 256;

pub fn q5k_group_bytes(cols: usize) -> usize {
    cols / crate::quant::QK_K * Q5K_SUPER_BYTES
}

pub fn repack_q5_k(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    repack_k4_k5(data, rows, cols, true)
}

/// Q4_K (`five` false) or Q5_K rows into their 8-row groups.
fn repack_k4_k5(data: &[u8], rows: usize, cols: usize, five: bool) -> Vec<u8> {
    use crate::quant::{scale_min_k4, QuantType, QK_K};
    assert!(rows.is_multiple_of(GROUP) && cols.is_multiple_of(QK_K));
    let (ty, sbb, qs_at) = if five {
        (QuantType::Q5K, Q5K_SUPER_BYTES, 48)
    } else {
        (QuantType::Q4K, Q4K_SUPER_BYTES, 16)
    };
    let (nsb, rb, bb) = (cols / QK_K, ty.row_bytes(cols), ty.block_bytes());
    let mut out = vec![0u8; rows / GROUP * nsb * sbb];
    for g in 0..rows / GROUP {
        for sb in 0..nsb {
            let dst = &mut out[(g * nsb + sb) * sbb..][..sbb];
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + sb * bb..][..bb];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[0..2]);
                dst[16 + 2 * r..16 + 2 * r + 2].copy_from_slice(&src[2..4]);
                for j in 0..8 {
                    let (sc, m) = scale_min_k4(j, &src[4..16]);
                    dst[32 + j * 8 + r] = sc;
                    dst[96 + j * 8 + r] = m;
                }
                for c in 0..4 {
                    interleave_row(&src[qs_at + c * 32..][..32], r, &mut dst[160 + c * 256..]);
                }
                if five {
                    interleave_row(&src[16..48], r, &mut dst[Q4K_SUPER_BYTES..]);
                }
            }
        }
    }
    out
}

/// Row `r` of Q4_Kx8 data back in plain Q4_K blocks.
pub fn unpack_q4_k_row(data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    unpack_k4_k5_row(data, cols, r, out, false)
}

/// Row `r` of Q5_Kx8 data back in plain Q5_K blocks.
pub fn unpack_q5_k_row(data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    unpack_k4_k5_row(data, cols, r, out, true)
}

fn unpack_k4_k5_row(data: &[u8], cols: usize, r: usize, out: &mut [u8], five: bool) {
    use crate::quant::{pack_scale_min_k4, QK_K};
    let (sbb, bb, qs_at) = if five {
        (Q5K_SUPER_BYTES, 176, 48)
    } else {
        (Q4K_SUPER_BYTES, 144, 16)
    };
    let (g, i, nsb) = (r / GROUP, r % GROUP, cols / QK_K);
    for sb in 0..nsb {
        let src = &data[(g * nsb + sb) * sbb..][..sbb];
        let dst = &mut out[sb * bb..(sb + 1) * bb];
        dst[0..2].copy_from_slice(&src[2 * i..2 * i + 2]);
        dst[2..4].copy_from_slice(&src[16 + 2 * i..16 + 2 * i + 2]);
        let ls: [u8; 8] = std::array::from_fn(|j| src[32 + j * 8 + i]);
        let lm: [u8; 8] = std::array::from_fn(|j| src[96 + j * 8 + i]);
        dst[4..16].copy_from_slice(&pack_scale_min_k4(&ls, &lm));
        for c in 0..4 {
            deinterleave_row(&src[160 + c * 256..], i, &mut dst[qs_at + c * 32..][..32]);
        }
        if five {
            deinterleave_row(&src[Q4K_SUPER_BYTES..], i, &mut dst[16..48]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_q4k {
    use super::*;
    use std::arch::x86_64::*;

    /// Row r's two partial sums sit in dwords 2r and 2r+1: add them, keep one per row.
    #[inline(always)]
    unsafe fn fold(z: __m512i) -> __m256i {
        _mm512_cvtepi64_epi32(_mm512_add_epi64(z, _mm512_srli_epi64::<32>(z)))
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_group_q4k_vnni512<const T: usize>(
        group: &[u8],
        nsb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let mut acc = [_mm256_setzero_ps(); T];
        let low4 = _mm512_set1_epi8(0x0F);
        let base = group.as_ptr();
        for sb in 0..nsb {
            let blk = base.add(sb * Q4K_SUPER_BYTES);
            let ahead = blk.wrapping_add(2 * Q4K_SUPER_BYTES) as *const i8;
            for line in 0..Q4K_SUPER_BYTES.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let dv = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let dminv = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            let mut accs = [_mm256_setzero_ps(); T];
            let mut accm = [_mm256_setzero_ps(); T];
            for c in 0..4 {
                let mut ilo = [_mm512_setzero_si512(); T];
                let mut ihi = [_mm512_setzero_si512(); T];
                let (j0, j1) = (2 * c, 2 * c + 1);
                for kk in 0..4 {
                    let q = _mm512_loadu_si512(blk.add(160 + c * 256 + kk * 64) as *const _);
                    let lo = _mm512_and_si512(q, low4);
                    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(q), low4);
                    for (t, a) in acts.iter().enumerate() {
                        let p = a.2.as_ptr().add((sb * 8 + j0) * 32 + 8 * kk);
                        // Each row's 8 bytes meet the same 8 activation bytes: a broadcast.
                        let alo = _mm512_set1_epi64((p as *const i64).read_unaligned());
                        let ahi = _mm512_set1_epi64((p.add(32) as *const i64).read_unaligned());
                        ilo[t] = _mm512_dpbusd_epi32(ilo[t], lo, alo);
                        ihi[t] = _mm512_dpbusd_epi32(ihi[t], hi, ahi);
                    }
                }
                for (j, sums) in [(j0, &ilo), (j1, &ihi)] {
                    let sc = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        blk.add(32 + j * 8) as *const __m128i
                    ));
                    let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                        blk.add(96 + j * 8) as *const __m128i,
                    )));
                    for (t, a) in acts.iter().enumerate() {
                        let ab = sb * 8 + j;
                        let prod = _mm256_mullo_epi32(fold(sums[t]), sc);
                        let da = *a.0.get_unchecked(ab);
                        accs[t] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(da), accs[t]);
                        let dsum = da * *a.1.get_unchecked(ab) as f32;
                        accm[t] = _mm256_fmadd_ps(mn, _mm256_set1_ps(dsum), accm[t]);
                    }
                }
            }
            for t in 0..T {
                acc[t] = _mm256_fmadd_ps(dv, accs[t], acc[t]);
                acc[t] = _mm256_fnmadd_ps(dminv, accm[t], acc[t]);
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
        out
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_q4k_avx2 {
    use super::super::group::x86::{half_lanes, rows_in_order};
    use super::*;
    use std::arch::x86_64::*;

    /// `pshufb` masks spreading a sub-block's 8 row scales (bytes 0..8, in both 128-bit lanes)
    /// over the i16 lanes of a half's products: row `4h + q` in i16 lanes `4q..4q + 4`.
    const SCALE_SPREAD: [[i8; 32]; 2] = {
        let mut m = [[-1i8; 32]; 2];
        let mut h = 0;
        while h < 2 {
            let mut i = 0;
            while i < 16 {
                // i16 lane i of the half (byte 2i, high byte zero): row 4h + i/4.
                m[h][2 * i] = (4 * h + i / 4) as i8;
                i += 1;
            }
            h += 1;
        }
        m
    };

    /// The Q4_Kx8 kernel for AVX2 (no VNNI): a 256-bit load holds 8 bytes of each of 4 rows
    /// (rows 0–3, then 4–7). `vpmaddubsw` pairs stay in i16 over a sub-block's 32 columns
    /// (4 × 2 × 15 × 127 < 2¹⁵), then one `vpmaddwd` against the rows' 6-bit scales does the
    /// pairing and the scale at once (llama.cpp's AVX2 Q4_K trick), and the i32 sums run over
    /// the whole super-block (< 8 × 2 × 15240 × 63 < 2³¹): the activations carry one scale per
    /// 256 values (as llama.cpp's Q8_K), so the float work is once per super-block, not per
    /// sub-block. A row's two i32 lanes (and its f32 accumulators) stay side by side until the
    /// end.
    ///
    /// AVX2 has 16 vector registers and each token needs an i16 sum, an i32 sum and an f32
    /// accumulator per 4-row half: one or two tokens take both halves in one pass (sharing
    /// the activation broadcasts), more tokens take the halves one after the other (4
    /// tokens: 12 registers plus the weights). Holding both halves of 4 tokens at once
    /// spilled to the stack in the inner loop.
    #[target_feature(enable = "avx2,fma,f16c")]
    ///
    /// `FIVE`: the Q5_Kx8 layout, whose fifth bits (one 256-bit load per column group and
    /// half) are or-ed in as 0x10; values ≤ 31 keep a sub-block's i16 sums < 4 × 2 × 31 × 127
    /// < 2¹⁵.
    pub unsafe fn dot_group_q4k_avx2<const T: usize, const FIVE: bool>(
        group: &[u8],
        nsb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let halves: [[__m256; 2]; T] = if T <= 2 {
            let [h0, h1] = halves_q4k::<T, 2, FIVE>(group, nsb, acts, 0);
            std::array::from_fn(|t| [h0[t], h1[t]])
        } else {
            let [h0] = halves_q4k::<T, 1, FIVE>(group, nsb, acts, 0);
            let [h1] = halves_q4k::<T, 1, FIVE>(group, nsb, acts, 1);
            std::array::from_fn(|t| [h0[t], h1[t]])
        };
        // The mins: Σ_j dmin · m_j · Σ(activations of sub-block j), one value per row.
        let base = group.as_ptr();
        let sbb = if FIVE {
            Q5K_SUPER_BYTES
        } else {
            Q4K_SUPER_BYTES
        };
        let mut accm = [_mm256_setzero_ps(); T];
        for sb in 0..nsb {
            let blk = base.add(sb * sbb);
            let dminv = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16) as *const __m128i));
            let mut mins = [_mm256_setzero_ps(); T];
            for j in 0..8 {
                let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                    blk.add(96 + j * 8) as *const __m128i,
                )));
                for (t, a) in acts.iter().enumerate() {
                    let sum = *a.1.get_unchecked(sb * 8 + j) as f32;
                    mins[t] = _mm256_fmadd_ps(mn, _mm256_set1_ps(sum), mins[t]);
                }
            }
            for (t, a) in acts.iter().enumerate() {
                let f = _mm256_mul_ps(dminv, _mm256_set1_ps(*a.0.get_unchecked(sb * 8)));
                accm[t] = _mm256_fmadd_ps(f, mins[t], accm[t]);
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            let rows = rows_in_order(halves[t][0], halves[t][1]);
            _mm256_storeu_ps(out[t].as_mut_ptr(), _mm256_sub_ps(rows, accm[t]));
        }
        out
    }

    /// Halves `h0..h0 + H` of a Q4_Kx8 group against `T` tokens, without the mins: per half
    /// and token, rows `4h..4h + 4` each in two lanes.
    #[inline(always)]
    unsafe fn halves_q4k<const T: usize, const H: usize, const FIVE: bool>(
        group: &[u8],
        nsb: usize,
        acts: &[ActRow; T],
        h0: usize,
    ) -> [[__m256; T]; H] {
        let low4 = _mm256_set1_epi8(0x0F);
        let base = group.as_ptr();
        // Plain loops, not `array::from_fn`: a closure is not always inlined into a
        // `target_feature` function, and intrinsics outside it become calls.
        let mut spread = [_mm256_setzero_si256(); H];
        for (i, s) in spread.iter_mut().enumerate() {
            *s = _mm256_loadu_si256(SCALE_SPREAD[h0 + i].as_ptr() as *const __m256i);
        }
        let sbb = if FIVE {
            Q5K_SUPER_BYTES
        } else {
            Q4K_SUPER_BYTES
        };
        let mut acc = [[_mm256_setzero_ps(); T]; H];
        for sb in 0..nsb {
            let blk = base.add(sb * sbb);
            let ahead = blk.wrapping_add(2 * sbb) as *const i8;
            for line in 0..sbb.div_ceil(64) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let mut isb = [[_mm256_setzero_si256(); T]; H];
            for j in 0..8 {
                // Sub-block j: the low (even j) or high nibbles of 32-byte chunk j / 2.
                let chunk = blk.add(160 + (j / 2) * 256 + h0 * 32);
                let mut isum = [[_mm256_setzero_si256(); T]; H];
                for kk in 0..4 {
                    let mut w = [_mm256_setzero_si256(); H];
                    for (i, wi) in w.iter_mut().enumerate() {
                        let q = _mm256_loadu_si256(chunk.add(kk * 64 + i * 32) as *const __m256i);
                        *wi = if j % 2 == 0 {
                            _mm256_and_si256(q, low4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4)
                        };
                        if FIVE {
                            // Bit j of the column group's qh bytes, moved to bit 4.
                            let qh = _mm256_loadu_si256(
                                blk.add(Q4K_SUPER_BYTES + kk * 64 + (h0 + i) * 32)
                                    as *const __m256i,
                            );
                            let h = if j <= 4 {
                                _mm256_sll_epi16(qh, _mm_cvtsi32_si128(4 - j as i32))
                            } else {
                                _mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32 - 4))
                            };
                            *wi = _mm256_or_si256(*wi, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
                        }
                    }
                    for (t, a) in acts.iter().enumerate() {
                        let p = a.2.as_ptr().add((sb * 8 + j) * 32 + 8 * kk);
                        // Each row's 8 bytes meet the same 8 activation bytes: a broadcast.
                        let av = _mm256_set1_epi64x((p as *const i64).read_unaligned());
                        for i in 0..H {
                            isum[i][t] =
                                _mm256_add_epi16(isum[i][t], _mm256_maddubs_epi16(w[i], av));
                        }
                    }
                }
                let sc =
                    _mm256_broadcastq_epi64(_mm_loadl_epi64(blk.add(32 + j * 8) as *const __m128i));
                for i in 0..H {
                    let scales = _mm256_shuffle_epi8(sc, spread[i]);
                    for t in 0..T {
                        isb[i][t] =
                            _mm256_add_epi32(isb[i][t], _mm256_madd_epi16(isum[i][t], scales));
                    }
                }
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            for i in 0..H {
                let dh = half_lanes(d, h0 + i);
                for (t, a) in acts.iter().enumerate() {
                    let f = _mm256_mul_ps(dh, _mm256_set1_ps(*a.0.get_unchecked(sb * 8)));
                    acc[i][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isb[i][t]), f, acc[i][t]);
                }
            }
        }
        acc
    }
}

/// The 8 rows of one Q4_Kx8 group against `T` activation rows, quantized with one scale per
/// super-block ([`crate::quant::QuantizedActivations::per_super_block`]).
pub fn dot_group_q4k<const T: usize>(
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    check_lengths(group, q4k_group_bytes(cols), cols, acts);
    // Checked per call in debug builds only (it costs ~5% of the kernel); `matrix` checks
    // the activations' `scale_block` once per matmul.
    debug_assert!(
        acts.iter().all(|a| a
            .0
            .chunks_exact(8)
            .all(|d| d.iter().all(|&v| v.to_bits() == d[0].to_bits()))),
        "Q4_Kx8 needs activations with one scale per 256 values"
    );
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::ByteDotIsa;
        let nsb = cols / crate::quant::QK_K;
        match crate::quant::byte_dot_isa() {
            // SAFETY: VNNI detected at run time; lengths checked above.
            ByteDotIsa::Vnni => {
                return unsafe { x86_q4k::dot_group_q4k_vnni512::<T>(group, nsb, acts) }
            }
            // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
            ByteDotIsa::Avx2 => {
                return unsafe { x86_q4k_avx2::dot_group_q4k_avx2::<T, false>(group, nsb, acts) }
            }
            ByteDotIsa::Scalar => {}
        }
    }
    dot_group_unpacked::<T>(QuantType::Q4K, unpack_q4_k_row, group, cols, acts)
}

/// The 8 rows of one Q5_Kx8 group against `T` activation rows, quantized with one scale per
/// super-block (AVX2; elsewhere the plain rows' dot products, though the layout is only made
/// where [`k16_repack_supported`]).
pub fn dot_group_q5k<const T: usize>(
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    check_lengths(group, q5k_group_bytes(cols), cols, acts);
    #[cfg(target_arch = "x86_64")]
    if super::group::k16_kernels_available() {
        // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
        return unsafe {
            x86_q4k_avx2::dot_group_q4k_avx2::<T, true>(group, cols / crate::quant::QK_K, acts)
        };
    }
    dot_group_unpacked::<T>(QuantType::Q5K, unpack_q5_k_row, group, cols, acts)
}
