//! The repacked layouts, one enum: which plain GGML format a layout holds and the kernels that
//! serve it.

use super::group::ActRow;
use super::iq4::Iq4;
use super::k16::K16;
use super::k4::{
    dot_group_q4k, dot_group_q5k, q4k_group_bytes, q5k_group_bytes, unpack_q4_k_row,
    unpack_q5_k_row,
};
use super::q5_0::{dot_group_q5_0, q5_0_group_bytes, unpack_q5_0_row};
use super::q8_0::{dot_group, group_bytes, unpack_q8_0_row};
use crate::quant::QuantType;

/// A repacked layout: which plain GGML format it holds, in groups of 8 rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Q8_0x8,
    Q4Kx8,
    Q5_0x8,
    /// Q6_K, Q3_K, Q2_K (scales per 16 values): see [`crate::repack::k16`].
    K16x8(K16),
    /// Q5_K: Q4_Kx8 with the fifth bits after it, see [`Q5K_SUPER_BYTES`].
    Q5Kx8,
    /// IQ4_NL, IQ4_XS: see [`crate::repack::iq4`].
    IQ4x8(Iq4),
    /// Q5_1: see [`crate::repack::q5_1`].
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
            Layout::Q5_1x8 => crate::repack::q5_1::group_bytes(cols),
        }
    }

    /// Row `r` back in the plain format's blocks.
    pub fn unpack_row(self, data: &[u8], cols: usize, r: usize, out: &mut [u8]) {
        match self {
            Layout::Q8_0x8 => unpack_q8_0_row(data, cols, r, out),
            Layout::Q4Kx8 => unpack_q4_k_row(data, cols, r, out),
            Layout::Q5_0x8 => unpack_q5_0_row(data, cols, r, out),
            Layout::K16x8(k) => crate::repack::k16::unpack_row(k, data, cols, r, out),
            Layout::Q5Kx8 => unpack_q5_k_row(data, cols, r, out),
            Layout::IQ4x8(k) => crate::repack::iq4::unpack_row(k, data, cols, r, out),
            Layout::Q5_1x8 => crate::repack::q5_1::unpack_row(data, cols, r, out),
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
            Layout::K16x8(k) => crate::repack::k16::dot_group::<T>(k, group, cols, acts),
            Layout::Q5Kx8 => dot_group_q5k::<T>(group, cols, acts),
            Layout::IQ4x8(k) => crate::repack::iq4::dot_group::<T>(k, group, cols, acts),
            Layout::Q5_1x8 => crate::repack::q5_1::dot_group::<T>(group, cols, acts),
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
        Layout::Q8_0x8 => super::q8_0::repack_q8_0(&plain, rows, cols),
        Layout::Q5_0x8 => super::q5_0::repack_q5_0(&plain, rows, cols),
        Layout::Q4Kx8 => super::k4::repack_q4_k(&plain, rows, cols),
        Layout::K16x8(_) | Layout::Q5Kx8 | Layout::IQ4x8(_) | Layout::Q5_1x8 => {
            unreachable!("no panel kernels for {layout:?}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, quantize_row, QuantizedActivations, QK};
    #[cfg(target_arch = "x86_64")]
    use crate::repack::k4::x86_q4k_avx2;
    use crate::repack::k4::{repack_q4_k, repack_q5_k};
    use crate::repack::q5_0::repack_q5_0;
    #[cfg(target_arch = "x86_64")]
    use crate::repack::q5_0::x86_q5_0_avx2;
    #[cfg(target_arch = "x86_64")]
    use crate::repack::q5_0::{decode_q5_0_group, decode_q5_0_group_plain, Q5_0_DECODED_BLOCK};
    use crate::repack::{group::dot_group_unpacked, GROUP};

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
                dot_group_unpacked::<T>(
                    layout.plain(),
                    |g, c, r, o| layout.unpack_row(g, c, r, o),
                    group,
                    cols,
                    &acts,
                ),
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
