//! What every repacked layout shares: the group of 8 rows, the row interleaving, the activation
//! rows the group kernels take, which layouts this CPU repacks into, and the plain fallback that
//! unpacks each row and uses the per-row dot product.

use crate::quant::{QuantType, QK};

pub const GROUP: usize = 8;

/// One activation row: per-32 scales, per-32 sums, int8 values.
pub type ActRow<'a> = (&'a [f32], &'a [i32], &'a [i8]);

/// How far ahead the x86 group kernels prefetch: 16 Q8_0x8 blocks (272 bytes each).
#[cfg(target_arch = "x86_64")]
pub(crate) const PREFETCH_BYTES: usize = 16 * (2 * GROUP + QK * GROUP);

/// The bounds the unchecked kernels rely on: a whole group, and activation rows (values, block
/// scales, block sums) covering `cols`.
pub(crate) fn check_lengths<const T: usize>(
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

/// Whether the 8-row kernels of the layouts with decode kernels only
/// ([`Layout::avx2_decode_only`]: Q5_K, Q6_K, Q3_K, Q2_K, IQ4_NL, IQ4_XS and Q5_1) run on this
/// CPU: x86 with AVX2, 512-bit VNNI machines included.
pub fn k16_kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::ByteDotIsa;
        matches!(
            crate::quant::byte_dot_isa(),
            ByteDotIsa::Avx2 | ByteDotIsa::Vnni
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether weights of `ty` (one of the seven above) are repacked on this CPU. With AVX2 alone,
/// all seven. With 512-bit VNNI all but Q6_K: `examples/gemv_speed` (2 threads, 32768 x 2048,
/// Zen 4; the plain rows' side on the commit before this rule, whose VNNI CPUs kept them) ran
/// the 8-row kernels at 1.4-3.5x the plain rows' VNNI dot products for one token (Q5_K 79 vs
/// 57 GFLOP/s, IQ4_NL 140 vs 92, Q2_K 151 vs 42) and 1.3-2.5x for four; Q6_K, still plain here,
/// at 0.9x for one. Their prefill is not given up: with enough tokens the groups are unpacked
/// back into rows for the VNNI GEMM's panels (`matmul`).
pub fn k16_repack_supported(ty: QuantType) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::quant::ByteDotIsa;
        match crate::quant::byte_dot_isa() {
            ByteDotIsa::Avx2 => true,
            ByteDotIsa::Vnni => ty != QuantType::Q6K,
            _ => false,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        false
    }
}

/// Plain version of a repacked layout: unpack each row (`unpack_row(group, cols, r, out)`) and
/// use the per-row dot product of its plain format.
#[allow(clippy::needless_range_loop)]
pub(crate) fn dot_group_unpacked<const T: usize>(
    plain: QuantType,
    unpack_row: impl Fn(&[u8], usize, usize, &mut [u8]),
    group: &[u8],
    cols: usize,
    acts: &[ActRow; T],
) -> [[f32; 8]; T] {
    let mut row = vec![0u8; plain.row_bytes(cols)];
    let mut out = [[0.0f32; 8]; T];
    for r in 0..GROUP {
        unpack_row(group, cols, r, &mut row);
        for (t, a) in acts.iter().enumerate() {
            out[t][r] = crate::quant::dot_row_generic(plain, &row, a.0, a.1, a.2);
        }
    }
    out
}

/// AVX2 helpers of the kernels that take a group as two halves of 4 rows.
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

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
}

/// What the tests of the decode-only layouts (`k16`, `iq4`, `q5_1`) share.
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
