//! Activations quantized per 32 values (an f32 scale, the int8 values and their sum), the
//! other operand of every quantized dot product.

use super::format::{QK, QK_K};

/// Quantizes one scale block `xs` (a multiple of 32 values) to int8 with one scale, writing
/// each 32 values' sum to `sums`; returns the scale. The rounding is half away from zero,
/// done without a libm call (|y| ≤ 127).
pub fn quantize_block_reference(xs: &[f32], qs: &mut [i8], sums: &mut [i32]) -> f32 {
    let amax = xs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for ((xb, qb), sum) in xs.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(sums) {
        *sum = 0;
        for (q, &v) in qb.iter_mut().zip(xb) {
            let y = v * id;
            *q = (y + 0.5f32.copysign(y)) as i8;
            *sum += *q as i32;
        }
    }
    d
}

/// `n` rows of activations quantized to int8: a scale per 32 values (or the same scale for all
/// 8 blocks of a 256-value super-block, see [`QuantizedActivations::per_super_block`]), the
/// int8 values, and each 32-value block's sum (each 16-value block's, see
/// [`QuantizedActivations::per_super_block_sums16`]).
pub struct QuantizedActivations {
    pub cols: usize,
    /// Values per scale: 32, or 256 for [`QuantizedActivations::per_super_block`].
    pub scale_block: usize,
    /// Values per entry of `sums`: 32, or 16.
    pub sum_block: usize,
    pub d: Vec<f32>,
    pub sums: Vec<i32>,
    pub qs: Vec<i8>,
}

impl QuantizedActivations {
    /// Quantizes `x` (`[n, cols]`, `cols` a multiple of 32), one scale per 32 values.
    pub fn new(x: &[f32], cols: usize) -> Self {
        Self::with_scale_block(x, cols, QK)
    }

    /// Quantizes `x` (`[n, cols]`, `cols` a multiple of 256) with one scale per 256 values,
    /// as llama.cpp's Q8_K, still stored once per 32-value block. K-quant kernels can then sum
    /// a whole super-block in integers (the AVX2 Q4_Kx8 kernel requires this form); the
    /// rounding is coarser where a block's values are much smaller than its super-block's.
    pub fn per_super_block(x: &[f32], cols: usize) -> Self {
        Self::with_scale_block(x, cols, QK_K)
    }

    /// [`QuantizedActivations::per_super_block`] with a sum per 16 values instead of per 32:
    /// the K-quants whose scales cover 16 values (Q6_K, Q3_K, Q2_K) take their offsets and
    /// mins against these sums in their repacked kernels.
    pub fn per_super_block_sums16(x: &[f32], cols: usize) -> Self {
        let mut a = Self::per_super_block(x, cols);
        a.sum_block = 16;
        a.sums =
            a.qs.chunks_exact(16)
                .map(|c| c.iter().map(|&v| v as i32).sum())
                .collect();
        a
    }

    fn with_scale_block(x: &[f32], cols: usize, block: usize) -> Self {
        assert!(
            cols.is_multiple_of(block),
            "activation width {cols} must be a multiple of {block}"
        );
        let nb = x.len() / QK;
        let mut a = QuantizedActivations {
            cols,
            scale_block: block,
            sum_block: QK,
            d: vec![0.0; nb],
            sums: vec![0; nb],
            qs: vec![0; x.len()],
        };
        let per = block / QK;
        // Through `simd::isa`, so `DEEPSEEK_ISA=scalar` takes the reference (bit-identical).
        #[cfg(target_arch = "x86_64")]
        let avx2 = matches!(
            crate::simd::isa(),
            crate::simd::Isa::Avx2 | crate::simd::Isa::Avx512
        );
        for (s, (xs, qs)) in x
            .chunks_exact(block)
            .zip(a.qs.chunks_exact_mut(block))
            .enumerate()
        {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 detected at run time (both ISAs include it); `xs` and `qs` are
                // `block` long.
                let d = unsafe {
                    super::x86::quantize_activations_avx2(xs, qs, &mut a.sums[s * per..][..per])
                };
                a.d[s * per..][..per].fill(d);
                continue;
            }
            let d = quantize_block_reference(xs, qs, &mut a.sums[s * per..][..per]);
            a.d[s * per..][..per].fill(d);
        }
        a
    }

    /// Row `t` as (scales, sums, values).
    pub fn row(&self, t: usize) -> (&[f32], &[i32], &[i8]) {
        let (nb, ns) = (self.cols / QK, self.cols / self.sum_block);
        (
            &self.d[t * nb..(t + 1) * nb],
            &self.sums[t * ns..(t + 1) * ns],
            &self.qs[t * self.cols..(t + 1) * self.cols],
        )
    }
}
