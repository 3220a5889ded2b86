//! Q8_0 weights repacked once at load into groups of 8 rows ("Q8_0x8"), so one SIMD register
//! holds the same 4 columns of 8 rows: the dot products of 8 rows accumulate in the 8 lanes of
//! one register, the 8 rows' scales apply with one vector multiply per block, and no horizontal
//! sums are needed. That moves decode from the block bookkeeping back to the memory rate.
//!
//! Layout per group of 8 rows and per 32-column block (272 bytes, the same as 8 Q8_0 blocks):
//! 8 f16 scales (row 0..8), then for each of the 8 four-column groups k, the 4 bytes of row 0,
//! row 1, …, row 7.

#[cfg(target_arch = "x86_64")]
use super::group::PREFETCH_BYTES;
use super::group::{check_lengths, ActRow, GROUP};
use crate::quant::QK;

const BLOCK_BYTES: usize = 2 * GROUP + QK * GROUP;
/// Bytes of one 8-row group of `cols` columns.
pub fn group_bytes(cols: usize) -> usize {
    cols / QK * BLOCK_BYTES
}

/// Repacks `rows` (a multiple of 8) plain Q8_0 rows.
pub fn repack_q8_0(data: &[u8], rows: usize, cols: usize) -> Vec<u8> {
    assert!(rows.is_multiple_of(GROUP) && cols.is_multiple_of(QK));
    let nb = cols / QK;
    let row_bytes = nb * 34;
    let mut out = vec![0u8; rows / GROUP * group_bytes(cols)];
    for g in 0..rows / GROUP {
        for b in 0..nb {
            let dst = &mut out[g * group_bytes(cols) + b * BLOCK_BYTES..][..BLOCK_BYTES];
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * row_bytes + b * 34..][..34];
                dst[2 * r..2 * r + 2].copy_from_slice(&src[..2]);
                for k in 0..QK / 4 {
                    let o = 2 * GROUP + k * 4 * GROUP + r * 4;
                    dst[o..o + 4].copy_from_slice(&src[2 + 4 * k..2 + 4 * k + 4]);
                }
            }
        }
    }
    out
}

/// Row `r` of repacked data back in plain Q8_0 blocks (`out`: `cols / 32 * 34` bytes).
pub fn unpack_q8_0_row(data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
    let (g, i) = (r / GROUP, r % GROUP);
    for b in 0..cols / QK {
        let src = &data[g * group_bytes(cols) + b * BLOCK_BYTES..][..BLOCK_BYTES];
        let dst = &mut out[b * 34..(b + 1) * 34];
        dst[..2].copy_from_slice(&src[2 * i..2 * i + 2]);
        for k in 0..QK / 4 {
            let o = 2 * GROUP + k * 4 * GROUP + i * 4;
            dst[2 + 4 * k..2 + 4 * k + 4].copy_from_slice(&src[o..o + 4]);
        }
    }
}

/// Plain version: the 8 rows of `group` against `T` activation rows.
fn dot_group_generic<const T: usize>(
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    let mut out = [[0.0f32; 8]; T];
    for b in 0..cols / QK {
        let blk = &group[b * BLOCK_BYTES..][..BLOCK_BYTES];
        for (t, a) in acts.iter().enumerate() {
            for r in 0..GROUP {
                let d = half::f16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]).to_f32();
                let mut s = 0i32;
                for k in 0..QK / 4 {
                    for j in 0..4 {
                        let w = blk[2 * GROUP + k * 4 * GROUP + r * 4 + j] as i8;
                        s += w as i32 * a.2[b * QK + 4 * k + j] as i32;
                    }
                }
                out[t][r] += d * a.0[b] * s as f32;
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// AVX2: `vpmaddubsw` on |w| and the activations carrying w's sign.
    #[inline(always)]
    unsafe fn group_kernel_avx2<const T: usize>(
        group: *const u8,
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let mut acc = [_mm256_setzero_ps(); T];
        let ones = _mm256_set1_epi16(1);
        for b in 0..nb {
            let blk = group.add(b * BLOCK_BYTES);
            // One sequential stream per core: prefetch ahead of the hardware streamer.
            let ahead = blk.wrapping_add(PREFETCH_BYTES) as *const i8;
            for line in 0..5 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let scales = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let w = blk.add(2 * GROUP);
            // Two chains per token for one or two tokens, so consecutive dot products do not
            // wait on each other; three or more tokens are independent chains already, and a
            // second chain each would not fit the 16 registers.
            let mut isum = [[_mm256_setzero_si256(); 2]; T];
            for k in 0..QK / 4 {
                let wv = _mm256_loadu_si256(w.add(k * 32) as *const __m256i);
                let wu = _mm256_sign_epi8(wv, wv);
                for (t, a) in acts.iter().enumerate() {
                    let av = _mm256_set1_epi32(
                        (a.2.as_ptr().add(b * QK + 4 * k) as *const i32).read_unaligned(),
                    );
                    let s = &mut isum[t][if T <= 2 { k & 1 } else { 0 }];
                    let p = _mm256_maddubs_epi16(wu, _mm256_sign_epi8(av, wv));
                    *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
                }
            }
            for (t, a) in acts.iter().enumerate() {
                let s = _mm256_add_epi32(isum[t][0], isum[t][1]);
                let f = _mm256_mul_ps(scales, _mm256_set1_ps(*a.0.get_unchecked(b)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
        out
    }

    /// AVX-512 VNNI on full 512-bit registers: one load covers two 4-column groups of the 8
    /// rows (lanes 0–7 and 8–15), the activations' two 4-byte groups are spread to match by one
    /// permute, halving the instructions per byte of the 256-bit form.
    #[inline(always)]
    unsafe fn group_kernel_512<const T: usize>(
        group: *const u8,
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let mut acc = [_mm256_setzero_ps(); T];
        let flip = _mm512_set1_epi8(-128);
        let idx = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
        for b in 0..nb {
            let blk = group.add(b * BLOCK_BYTES);
            let ahead = blk.wrapping_add(PREFETCH_BYTES) as *const i8;
            for line in 0..5 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
            }
            let scales = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
            let w = blk.add(2 * GROUP);
            let mut isum = [[_mm512_setzero_si512(); 2]; T];
            for kk in 0..QK / 8 {
                let wu = _mm512_xor_si512(_mm512_loadu_si512(w.add(kk * 64) as *const _), flip);
                for (t, a) in acts.iter().enumerate() {
                    let a8 = _mm_loadl_epi64(a.2.as_ptr().add(b * QK + 8 * kk) as *const __m128i);
                    let av = _mm512_permutexvar_epi32(idx, _mm512_castsi128_si512(a8));
                    let s = &mut isum[t][kk & 1];
                    *s = _mm512_dpbusd_epi32(*s, wu, av);
                }
            }
            for (t, a) in acts.iter().enumerate() {
                let z = _mm512_add_epi32(isum[t][0], isum[t][1]);
                let mut s =
                    _mm256_add_epi32(_mm512_castsi512_si256(z), _mm512_extracti64x4_epi64::<1>(z));
                s = _mm256_sub_epi32(s, _mm256_set1_epi32(128 * *a.1.get_unchecked(b)));
                let f = _mm256_mul_ps(scales, _mm256_set1_ps(*a.0.get_unchecked(b)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), f, acc[t]);
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            _mm256_storeu_ps(out[t].as_mut_ptr(), acc[t]);
        }
        out
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn dot_group_vnni512<const T: usize>(
        g: &[u8],
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        group_kernel_512::<T>(g.as_ptr(), nb, acts)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_group_avx2<const T: usize>(
        g: &[u8],
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        group_kernel_avx2::<T>(g.as_ptr(), nb, acts)
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    use super::*;
    use crate::quant::neon::{f16x4_to_f32, sdot};
    use std::arch::aarch64::*;

    /// `sdot`: each 16-byte load holds one 4-column group of rows 0–3 (or 4–7), so the 4 i32
    /// lanes are 4 rows' partial sums; the token's 4 activation bytes are one lane broadcast.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn dot_group_sdot<const T: usize>(
        g: &[u8],
        nb: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        let mut acc = [[vdupq_n_f32(0.0); 2]; T];
        for b in 0..nb {
            let blk = g.as_ptr().add(b * BLOCK_BYTES);
            let scales = [f16x4_to_f32(blk), f16x4_to_f32(blk.add(8))];
            let w = blk.add(2 * GROUP) as *const i8;
            let mut isum = [[vdupq_n_s32(0); 2]; T];
            for k in 0..QK / 4 {
                let lo = vld1q_s8(w.add(k * 32));
                let hi = vld1q_s8(w.add(k * 32 + 16));
                for (t, a) in acts.iter().enumerate() {
                    let four = (a.2.as_ptr().add(b * QK + 4 * k) as *const i32).read_unaligned();
                    let av = vreinterpretq_s8_s32(vdupq_n_s32(four));
                    isum[t][0] = sdot(isum[t][0], lo, av);
                    isum[t][1] = sdot(isum[t][1], hi, av);
                }
            }
            for (t, a) in acts.iter().enumerate() {
                let ad = *a.0.get_unchecked(b);
                for h in 0..2 {
                    let f = vmulq_n_f32(scales[h], ad);
                    acc[t][h] = vfmaq_f32(acc[t][h], vcvtq_f32_s32(isum[t][h]), f);
                }
            }
        }
        let mut out = [[0.0f32; 8]; T];
        for t in 0..T {
            vst1q_f32(out[t].as_mut_ptr(), acc[t][0]);
            vst1q_f32(out[t].as_mut_ptr().add(4), acc[t][1]);
        }
        out
    }
}

/// The 8 rows of one repacked group (`group_bytes(cols)` bytes) against `T` activation rows.
pub fn dot_group<const T: usize>(group: &[u8], cols: usize, acts: &[ActRow; T]) -> [[f32; 8]; T] {
    check_lengths(group, group_bytes(cols), cols, acts);
    let nb = cols / QK;
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::ByteDotIsa;
        match crate::quant::byte_dot_isa() {
            // SAFETY: features detected at run time; lengths checked above.
            ByteDotIsa::Vnni => return unsafe { x86::dot_group_vnni512::<T>(group, nb, acts) },
            // SAFETY: as above.
            ByteDotIsa::Avx2 => return unsafe { x86::dot_group_avx2::<T>(group, nb, acts) },
            ByteDotIsa::Scalar => {}
        }
    }
    #[cfg(target_arch = "aarch64")]
    if crate::quant::byte_dot_isa() == crate::quant::ByteDotIsa::NeonDot {
        // SAFETY: `dotprod` detected at run time; lengths checked above.
        return unsafe { neon::dot_group_sdot::<T>(group, nb, acts) };
    }
    let _ = nb;
    dot_group_generic::<T>(group, cols, acts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, QuantType, QuantizedActivations};

    #[test]
    fn repacked_groups_equal_plain_q8_0() {
        let (rows, cols) = (16, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let rb = QuantType::Q8_0.row_bytes(cols);
        let mut plain = vec![0u8; rows * rb];
        for (r, o) in plain.chunks_mut(rb).enumerate() {
            quantize_row(QuantType::Q8_0, &w[r * cols..(r + 1) * cols], o);
        }
        let packed = repack_q8_0(&plain, rows, cols);
        let mut row = vec![0u8; rb];
        for r in 0..rows {
            unpack_q8_0_row(&packed, cols, r, &mut row);
            assert_eq!(row, plain[r * rb..(r + 1) * rb]);
        }
        let x: Vec<f32> = (0..3 * cols)
            .map(|i| ((i * 13) % 29) as f32 / 14.0 - 1.0)
            .collect();
        let a = QuantizedActivations::new(&x, cols);
        let xq: Vec<f32> = (0..x.len()).map(|i| a.d[i / QK] * a.qs[i] as f32).collect();
        let mut deq = vec![0.0; cols];
        for g in 0..rows / GROUP {
            let group = &packed[g * group_bytes(cols)..];
            let acts = [a.row(0), a.row(1), a.row(2)];
            let mut results = vec![
                dot_group_generic::<3>(group, cols, &acts),
                dot_group::<3>(group, cols, &acts),
            ];
            #[cfg(target_arch = "aarch64")]
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                results.push(unsafe { neon::dot_group_sdot::<3>(group, cols / QK, &acts) });
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                results.push(unsafe { x86::dot_group_avx2::<3>(group, cols / QK, &acts) });
            }
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                results.push(unsafe { x86::dot_group_vnni512::<3>(group, cols / QK, &acts) });
            }
            for res in results {
                for (t, rt) in res.iter().enumerate() {
                    for (i, &got) in rt.iter().enumerate() {
                        let r = g * GROUP + i;
                        dequantize_row(QuantType::Q8_0, &plain[r * rb..(r + 1) * rb], &mut deq);
                        let want: f32 = deq.iter().zip(&xq[t * cols..]).map(|(a, b)| a * b).sum();
                        assert!(
                            (got - want).abs() < 1e-3 * (1.0 + want.abs()),
                            "row {r} token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
