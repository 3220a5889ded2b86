//! Q8_0 weights repacked once at load into groups of 8 rows ("Q8_0x8"), so one SIMD register
//! holds the same 4 columns of 8 rows: the dot products of 8 rows accumulate in the 8 lanes of
//! one register, the 8 rows' scales apply with one vector multiply per block, and no horizontal
//! sums are needed. That moves decode from the block bookkeeping back to the memory rate.
//!
//! Layout per group of 8 rows and per 32-column block (272 bytes, the same as 8 Q8_0 blocks):
//! 8 f16 scales (row 0..8), then for each of the 8 four-column groups k, the 4 bytes of row 0,
//! row 1, …, row 7.

use crate::quant::{QuantType, QK};
pub use crate::repack_iq4::Iq4;
pub use crate::repack_k16::K16;

pub const GROUP: usize = 8;

/// A repacked layout: which plain GGML format it holds, in groups of 8 rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Q8_0x8,
    Q4Kx8,
    Q5_0x8,
    /// Q6_K, Q3_K, Q2_K (scales per 16 values): see [`crate::repack_k16`].
    K16x8(K16),
    /// Q5_K: Q4_Kx8 with the fifth bits after it, see [`Q5K_SUPER_BYTES`].
    Q5Kx8,
    /// IQ4_NL, IQ4_XS: see [`crate::repack_iq4`].
    IQ4x8(Iq4),
    /// Q5_1: see [`crate::repack_q5_1`].
    Q5_1x8,
}

impl Layout {
    /// Layouts with an AVX2 kernel only, made where that is the best kernel
    /// ([`k16_repack_supported`]): no AMX, no quantized GEMM panels; prefill dequantizes them.
    pub fn avx2_decode_only(self) -> bool {
        matches!(
            self,
            Layout::K16x8(_) | Layout::Q5Kx8 | Layout::IQ4x8(_) | Layout::Q5_1x8
        )
    }

    /// The plain format the rows hold.
    pub fn plain(self) -> QuantType {
        match self {
            Layout::Q8_0x8 => QuantType::Q8_0,
            Layout::Q4Kx8 => QuantType::Q4K,
            Layout::Q5_0x8 => QuantType::Q5_0,
            Layout::K16x8(k) => k.plain(),
            Layout::Q5Kx8 => QuantType::Q5K,
            Layout::IQ4x8(k) => k.plain(),
            Layout::Q5_1x8 => QuantType::Q5_1,
        }
    }

    /// Bytes of one 8-row group of `cols` columns.
    pub fn group_bytes(self, cols: usize) -> usize {
        match self {
            Layout::Q8_0x8 => group_bytes(cols),
            Layout::Q4Kx8 => q4k_group_bytes(cols),
            Layout::Q5_0x8 => q5_0_group_bytes(cols),
            Layout::K16x8(k) => k.group_bytes(cols),
            Layout::Q5Kx8 => q5k_group_bytes(cols),
            Layout::IQ4x8(k) => k.group_bytes(cols),
            Layout::Q5_1x8 => crate::repack_q5_1::group_bytes(cols),
        }
    }

    /// Row `r` back in the plain format's blocks.
    pub fn unpack_row(self, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
        match self {
            Layout::Q8_0x8 => unpack_q8_0_row(data, cols, r, out),
            Layout::Q4Kx8 => unpack_q4_k_row(data, cols, r, out),
            Layout::Q5_0x8 => unpack_q5_0_row(data, cols, r, out),
            Layout::K16x8(k) => crate::repack_k16::unpack_row(k, data, cols, r, out),
            Layout::Q5Kx8 => unpack_q5_k_row(data, cols, r, out),
            Layout::IQ4x8(k) => crate::repack_iq4::unpack_row(k, data, cols, r, out),
            Layout::Q5_1x8 => crate::repack_q5_1::unpack_row(data, cols, r, out),
        }
    }

    /// The 8 rows of one group against `T` activation rows.
    pub fn dot_group<const T: usize>(
        self,
        group: &[u8],
        cols: usize,
        acts: &[ActRow; T],
    ) -> [[f32; 8]; T] {
        match self {
            Layout::Q8_0x8 => dot_group::<T>(group, cols, acts),
            Layout::Q4Kx8 => dot_group_q4k::<T>(group, cols, acts),
            Layout::Q5_0x8 => dot_group_q5_0::<T>(group, cols, acts),
            Layout::K16x8(k) => crate::repack_k16::dot_group::<T>(k, group, cols, acts),
            Layout::Q5Kx8 => dot_group_q5k::<T>(group, cols, acts),
            Layout::IQ4x8(k) => crate::repack_iq4::dot_group::<T>(k, group, cols, acts),
            Layout::Q5_1x8 => crate::repack_q5_1::dot_group::<T>(group, cols, acts),
        }
    }
}
const BLOCK_BYTES: usize = 2 * GROUP + QK * GROUP;
/// How far ahead (in 272-byte blocks) the kernels prefetch.
#[cfg(target_arch = "x86_64")]
const PREFETCH_BLOCKS: usize = 16;

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

/// One activation row: per-32 scales, per-32 sums, int8 values.
pub type ActRow<'a> = (&'a [f32], &'a [i32], &'a [i8]);

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
            let ahead = blk.wrapping_add(PREFETCH_BLOCKS * BLOCK_BYTES) as *const i8;
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
            let ahead = blk.wrapping_add(PREFETCH_BLOCKS * BLOCK_BYTES) as *const i8;
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
    use crate::quant_neon::{f16x4_to_f32, sdot};
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

/// The bounds the unchecked kernels rely on: a whole group, and activation rows (values, block
/// scales, block sums) covering `cols`.
fn check_lengths<const T: usize>(
    group: &[u8],
    group_bytes: usize,
    cols: usize,
    acts: &[ActRow; T],
) {
    assert!(group.len() >= group_bytes);
    for a in acts {
        assert!(a.2.len() >= cols && a.0.len() >= cols / QK && a.1.len() >= cols / QK);
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

/// What the tests of the decode-only layouts (`repack_k16`, `repack_iq4`, `repack_q5_1`) share.
#[cfg(test)]
pub(crate) mod test_support {
    use super::{ActRow, GROUP};
    use crate::quant::{dot_row_reference, quantize_row, QuantType, QuantizedActivations};

    /// `rows` rows of `ty`, quantized from a pattern with columns of different magnitudes.
    pub fn rows_of(ty: QuantType, rows: usize, cols: usize, seed: usize) -> Vec<u8> {
        let rb = ty.row_bytes(cols);
        let mut data = vec![0u8; rows * rb];
        for (r, o) in data.chunks_exact_mut(rb).enumerate() {
            let x: Vec<f32> = (0..cols)
                .map(|c| {
                    (((r * 131 + c * 71 + seed * 17) % 997) as f32 / 997.0 - 0.45)
                        * (1.0 + (c % 7) as f32)
                })
                .collect();
            quantize_row(ty, &x, o);
        }
        data
    }

    /// `n` activation rows with an outlier every 61 values.
    pub fn activations(n: usize, cols: usize) -> Vec<f32> {
        (0..n * cols)
            .map(|i| ((i * 37 % 101) as f32 / 101.0 - 0.5) * if i % 61 == 0 { 9.0 } else { 1.0 })
            .collect()
    }

    /// Every row of `packed` unpacks to the plain row it was made from.
    pub fn check_unpack(
        ty: QuantType,
        data: &[u8],
        packed: &[u8],
        cols: usize,
        unpack: impl Fn(&[u8], usize, usize, &mut [u8]),
    ) {
        let rb = ty.row_bytes(cols);
        let mut row = vec![0u8; rb];
        for r in 0..data.len() / rb {
            unpack(packed, cols, r, &mut row);
            assert_eq!(row, data[r * rb..(r + 1) * rb], "{ty:?} row {r}");
        }
    }

    /// Per group of `packed`: the layout's plain formula (`plain`) against the plain rows'
    /// dequantized dot product with the quantized activations' values, and the dispatched
    /// kernel (`fast`) against the formula.
    pub fn check_groups<const T: usize>(
        ty: QuantType,
        data: &[u8],
        packed: &[u8],
        group_bytes: usize,
        a: &QuantizedActivations,
        plain: impl Fn(&[u8], &[ActRow; T]) -> [[f32; 8]; T],
        fast: impl Fn(&[u8], &[ActRow; T]) -> [[f32; 8]; T],
    ) {
        let cols = a.cols;
        let rb = ty.row_bytes(cols);
        let acts: [ActRow; T] = std::array::from_fn(|t| a.row(t));
        for (g, group) in packed.chunks_exact(group_bytes).enumerate() {
            let (p, f) = (plain(group, &acts), fast(group, &acts));
            for t in 0..T {
                let xq: Vec<f32> = (0..cols)
                    .map(|c| a.qs[t * cols + c] as f32 * a.d[t * cols / 32 + c / 32])
                    .collect();
                for r in 0..GROUP {
                    let row = &data[(g * GROUP + r) * rb..][..rb];
                    let want = dot_row_reference(ty, row, &xq);
                    let tol = 1e-3 * (1.0 + want.abs());
                    assert!(
                        (p[t][r] - want).abs() < tol,
                        "{ty:?} plain group {g} t{t} r{r}: {} vs {want}",
                        p[t][r]
                    );
                    assert!(
                        (f[t][r] - p[t][r]).abs() < tol,
                        "{ty:?} kernel group {g} t{t} r{r}: {} vs {}",
                        f[t][r],
                        p[t][r]
                    );
                }
            }
        }
    }
}

/// Rows of `layout`'s plain format (rows of different magnitudes, so per-row scales differ),
/// repacked: the test weights of the panel kernels (`amx::grouped`, `qgemm_vnni`).
#[cfg(test)]
pub(crate) fn test_weights(layout: Layout, rows: usize, cols: usize, seed: usize) -> Vec<u8> {
    let ty = layout.plain();
    let rb = ty.row_bytes(cols);
    let mut plain = vec![0u8; rows * rb];
    for (r, o) in plain.chunks_mut(rb).enumerate() {
        let w: Vec<f32> = (0..cols)
            .map(|c| {
                let i = (r * cols + c) * 2654435761 + seed;
                ((i >> 7) % 2001) as f32 / 1000.0 - 1.0 + (r % 5) as f32 * 0.1
            })
            .collect();
        crate::quant::quantize_row(ty, &w, o);
    }
    match layout {
        Layout::Q8_0x8 => repack_q8_0(&plain, rows, cols),
        Layout::Q5_0x8 => repack_q5_0(&plain, rows, cols),
        Layout::Q4Kx8 => repack_q4_k(&plain, rows, cols),
        Layout::K16x8(_) | Layout::Q5Kx8 | Layout::IQ4x8(_) | Layout::Q5_1x8 => {
            unreachable!("no panel kernels for {layout:?}")
        }
    }
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

// ---- Q4_K in groups of 8 rows ----

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

/// Plain version of a repacked layout: unpack each row and use the per-row dot product.
#[allow(clippy::needless_range_loop)]
fn dot_group_unpacked<const T: usize>(
    layout: Layout,
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    let ty = layout.plain();
    let mut row = vec![0u8; ty.row_bytes(cols)];
    let mut out = [[0.0f32; 8]; T];
    for r in 0..GROUP {
        layout.unpack_row(group, cols, r, &mut row);
        for (t, a) in acts.iter().enumerate() {
            out[t][r] = crate::quant::dot_row_generic(ty, &row, a.0, a.1, a.2);
        }
    }
    out
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

    /// `v` (one value per row) in the i32-lane layout of half `h`'s products: rows
    /// 4h..4h+4, each twice.
    #[inline(always)]
    pub(crate) unsafe fn half_lanes(v: __m256, h: usize) -> __m256 {
        let idx = if h == 0 {
            _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
        } else {
            _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7)
        };
        _mm256_permutevar8x32_ps(v, idx)
    }

    /// The two halves' sums (`[r0 r0 r1 r1 r2 r2 r3 r3]`, `[r4 …]`) as one value per row, in
    /// row order.
    #[inline(always)]
    pub(crate) unsafe fn rows_in_order(half0: __m256, half1: __m256) -> __m256 {
        // hadd: [r0 r1 r4 r5 | r2 r3 r6 r7].
        let pairs = _mm256_hadd_ps(half0, half1);
        _mm256_permutevar8x32_ps(pairs, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7))
    }

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

/// Row `r`'s bytes `src` (a multiple of 8) into the 8-byte units of a group: unit `u` of row
/// `r` at `dst[64u + 8r..][..8]`, so one 256-bit load holds the same 8 bytes of 4 rows. The
/// quantized bytes of Q4_Kx8, Q5_Kx8, Q5_0x8 and the decode-only layouts are laid out so.
pub(crate) fn interleave_row(src: &[u8], r: usize, dst: &mut [u8]) {
    for (u, unit) in src.chunks_exact(8).enumerate() {
        dst[64 * u + 8 * r..][..8].copy_from_slice(unit);
    }
}

/// The inverse of [`interleave_row`]: row `r`'s units of `src` back into `dst`.
pub(crate) fn deinterleave_row(src: &[u8], r: usize, dst: &mut [u8]) {
    for (u, unit) in dst.chunks_exact_mut(8).enumerate() {
        unit.copy_from_slice(&src[64 * u + 8 * r..][..8]);
    }
}

/// Whether Q4_K and Q5_0 weights are repacked in their own formats (Q4_Kx8, Q5_0x8) on this
/// CPU: where kernels for the layouts exist (512-bit VNNI or AVX2); elsewhere Q4_K stays in
/// plain rows and Q5_0 is widened to Q8_0.
pub fn k_and_q5_repack_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::ByteDotIsa;
        matches!(
            crate::quant::byte_dot_isa(),
            ByteDotIsa::Vnni | ByteDotIsa::Avx2
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether Q5_K, Q6_K, Q3_K, Q2_K, IQ4_NL, IQ4_XS and Q5_1 weights are repacked
/// ([`Layout::avx2_decode_only`]) on this CPU: where
/// the AVX2 kernel is the best there is (AVX2 without 512-bit VNNI, whose machines keep the
/// plain rows and their VNNI dot products).
pub fn k16_repack_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::quant::byte_dot_isa() == crate::quant::ByteDotIsa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
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
    dot_group_unpacked::<T>(Layout::Q4Kx8, group, cols, acts)
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
    if k16_repack_supported() {
        // SAFETY: AVX2, FMA and F16C detected at run time; lengths checked above.
        return unsafe {
            x86_q4k_avx2::dot_group_q4k_avx2::<T, true>(group, cols / crate::quant::QK_K, acts)
        };
    }
    dot_group_unpacked::<T>(Layout::Q5Kx8, group, cols, acts)
}

// ---- Q5_0 in groups of 8 rows ----

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
            let ahead = blk.wrapping_add(PREFETCH_BLOCKS * BLOCK_BYTES) as *const i8;
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
mod x86_q5_0_avx2 {
    use super::x86_q4k_avx2::{half_lanes, rows_in_order};
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
            let ahead = blk.wrapping_add(PREFETCH_BLOCKS * BLOCK_BYTES) as *const i8;
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

fn decode_q5_0_group_plain(group: &[u8], nb: usize, out: &mut [u8]) {
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
    dot_group_unpacked::<T>(Layout::Q5_0x8, group, cols, acts)
}

#[cfg(test)]
mod grouped_tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, QuantizedActivations};

    /// Repacks `rows × cols` weights of `layout`'s format, checks every row round-trips, and
    /// runs the plain and the dispatched kernel against dequantize-then-multiply for `T` tokens.
    fn check<const T: usize>(
        layout: Layout,
        repack: fn(&[u8], usize, usize) -> Vec<u8>,
        rows: usize,
        cols: usize,
        tol: f32,
    ) {
        let ty = layout.plain();
        // Weights over the format's whole range, with exact zeros and extremes.
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| match i % 37 {
                0 => 0.0,
                1 => -1.0,
                _ => ((i * 53) % 97) as f32 / 48.0 - 1.0,
            })
            .collect();
        let rb = ty.row_bytes(cols);
        let mut plain = vec![0u8; rows * rb];
        for (r, o) in plain.chunks_mut(rb).enumerate() {
            quantize_row(ty, &w[r * cols..(r + 1) * cols], o);
        }
        let packed = repack(&plain, rows, cols);
        assert_eq!(packed.len(), rows / GROUP * layout.group_bytes(cols));
        let mut row = vec![0u8; rb];
        for r in 0..rows {
            layout.unpack_row(&packed, cols, r, &mut row);
            assert_eq!(row, plain[r * rb..(r + 1) * rb], "{layout:?} row {r}");
        }
        let x: Vec<f32> = (0..T * cols)
            .map(|i| ((i * 17) % 31) as f32 / 15.0 - 1.0)
            .collect();
        let a = match layout {
            Layout::Q4Kx8 | Layout::Q5Kx8 => QuantizedActivations::per_super_block(&x, cols),
            _ => QuantizedActivations::new(&x, cols),
        };
        let xq: Vec<f32> = (0..x.len()).map(|i| a.d[i / QK] * a.qs[i] as f32).collect();
        let mut deq = vec![0.0; cols];
        for g in 0..rows / GROUP {
            let group = &packed[g * layout.group_bytes(cols)..];
            let acts: [ActRow; T] = std::array::from_fn(|t| a.row(t));
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut results = vec![
                dot_group_unpacked::<T>(layout, group, cols, &acts),
                layout.dot_group::<T>(group, cols, &acts),
            ];
            // The AVX2 kernel too where the dispatch picks the VNNI one.
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                // SAFETY: features detected just above; lengths as in the dispatchers.
                match layout {
                    Layout::Q4Kx8 => results.push(unsafe {
                        x86_q4k_avx2::dot_group_q4k_avx2::<T, false>(
                            group,
                            cols / crate::quant::QK_K,
                            &acts,
                        )
                    }),
                    Layout::Q5_0x8 => {
                        results.push(unsafe {
                            x86_q5_0_avx2::dot_group_q5_0_avx2::<T>(group, None, cols / QK, &acts)
                        });
                        // The pre-decoded form, decoded by the AVX2 and the plain code.
                        let nb = cols / QK;
                        let mut dec = vec![0u8; nb * Q5_0_DECODED_BLOCK];
                        let mut plain_dec = vec![0u8; nb * Q5_0_DECODED_BLOCK];
                        decode_q5_0_group(group, cols, &mut dec);
                        decode_q5_0_group_plain(group, nb, &mut plain_dec);
                        assert_eq!(dec, plain_dec, "decoded Q5_0x8 group {g}");
                        results.push(unsafe {
                            x86_q5_0_avx2::dot_group_q5_0_avx2::<T>(group, Some(&dec), nb, &acts)
                        });
                    }
                    Layout::Q8_0x8
                    | Layout::K16x8(_)
                    | Layout::Q5Kx8
                    | Layout::IQ4x8(_)
                    | Layout::Q5_1x8 => {}
                }
            }
            for res in results {
                for (t, rt) in res.iter().enumerate() {
                    for (i, &got) in rt.iter().enumerate() {
                        let r = g * GROUP + i;
                        dequantize_row(ty, &plain[r * rb..(r + 1) * rb], &mut deq);
                        let want: f32 = deq.iter().zip(&xq[t * cols..]).map(|(a, b)| a * b).sum();
                        assert!(
                            (got - want).abs() < tol * (1.0 + want.abs()),
                            "{layout:?} row {r} token {t}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn repacked_q4_k_groups_equal_plain_rows() {
        check::<2>(Layout::Q4Kx8, repack_q4_k, 16, 512, 1e-3);
        check::<1>(Layout::Q4Kx8, repack_q4_k, 8, 256, 1e-3);
        check::<3>(Layout::Q4Kx8, repack_q4_k, 16, 768, 1e-3);
        check::<4>(Layout::Q4Kx8, repack_q4_k, 8, 1536, 1e-3);
    }

    #[test]
    fn repacked_q5_k_groups_equal_plain_rows() {
        check::<1>(Layout::Q5Kx8, repack_q5_k, 16, 512, 1e-3);
        check::<2>(Layout::Q5Kx8, repack_q5_k, 8, 256, 1e-3);
        check::<3>(Layout::Q5Kx8, repack_q5_k, 16, 768, 1e-3);
        check::<4>(Layout::Q5Kx8, repack_q5_k, 8, 1536, 1e-3);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "one scale per 256 values")]
    fn q4_k_groups_refuse_activations_scaled_per_32() {
        let (rows, cols) = (8, 256);
        let x: Vec<f32> = (0..cols).map(|i| (i as f32 - 100.0) / 50.0).collect();
        let w: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
        let rb = QuantType::Q4K.row_bytes(cols);
        let mut plain = vec![0u8; rows * rb];
        for (r, o) in plain.chunks_mut(rb).enumerate() {
            quantize_row(QuantType::Q4K, &w[r * cols..(r + 1) * cols], o);
        }
        let packed = repack_q4_k(&plain, rows, cols);
        let a = QuantizedActivations::new(&x, cols);
        dot_group_q4k::<1>(&packed, cols, &[a.row(0)]);
    }

    #[test]
    fn repacked_q5_0_groups_equal_plain_rows() {
        check::<1>(Layout::Q5_0x8, repack_q5_0, 16, 1408, 1e-4);
        check::<3>(Layout::Q5_0x8, repack_q5_0, 8, 96, 1e-4);
        check::<4>(Layout::Q5_0x8, repack_q5_0, 24, 64, 1e-4);
    }
}
