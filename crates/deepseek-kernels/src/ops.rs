//! Element-wise and row-wise operations: RMSNorm, SiLU-gated products, softmax, RoPE.

/// `out = x / rms(x) * weight`, per row of `dim` values. Sums in f32 as PyTorch does for f32.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (xr, or) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for ((o, &v), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

/// In-place RMSNorm of every row.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for xr in x.chunks_exact_mut(dim) {
        let ss: f32 = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for (v, &w) in xr.iter_mut().zip(weight) {
            *v = w * (*v * inv);
        }
    }
}

#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// SwiGLU combine: `gate[i] = silu(gate[i]) * up[i]` (vectorized where the CPU allows).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    crate::simd::silu_mul(gate, up)
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut s = 0.0;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        s += *v;
    }
    for v in x.iter_mut() {
        *v /= s;
    }
}

#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `a += b`.
pub fn add_inplace(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// How RoPE pairs dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs (2i, 2i+1): DeepSeek's q_pe/k_pe weights as published. Equivalent to the reference's
    /// de-interleave → rotate-half → keep de-interleaved, except that the result stays interleaved;
    /// [`rope_deinterleave`] is applied afterwards so the layout matches the reference.
    Interleaved,
    /// Pairs (i, i + d/2): Llama's rotate-half.
    Half,
}

/// Rotates one head vector `x` (length `d`) by angles whose cos/sin are `cos[i]`, `sin[i]`
/// (i < d/2). For [`RopeStyle::Interleaved`] the output is laid out as the reference lays it out:
/// first the even-pair results, then the odd ones (DeepSeek's `apply_rotary_pos_emb` permutes
/// `[x0, x1, x2, x3..]` to `[x0, x2, .., x1, x3, ..]` before rotate-half).
pub fn rope(x: &mut [f32], cos: &[f32], sin: &[f32], style: RopeStyle) {
    let half = x.len() / 2;
    match style {
        RopeStyle::Half => {
            for i in 0..half {
                let (a, b) = (x[i], x[i + half]);
                x[i] = a * cos[i] - b * sin[i];
                x[i + half] = b * cos[i] + a * sin[i];
            }
        }
        RopeStyle::Interleaved => {
            let mut tmp = [0.0f32; 512];
            let tmp = &mut tmp[..x.len()];
            for i in 0..half {
                let (a, b) = (x[2 * i], x[2 * i + 1]);
                tmp[i] = a * cos[i] - b * sin[i];
                tmp[i + half] = b * cos[i] + a * sin[i];
            }
            x.copy_from_slice(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleaved_rope_matches_deinterleave_then_rotate_half() {
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let cos = [0.9, 0.5, -0.2, 0.1];
        let sin = [0.1, 0.8, 0.7, -0.99];
        let mut a = x.clone();
        rope(&mut a, &cos, &sin, RopeStyle::Interleaved);
        // Reference: permute to [evens | odds], then rotate-half.
        let mut b: Vec<f32> = (0..4)
            .map(|i| x[2 * i])
            .chain((0..4).map(|i| x[2 * i + 1]))
            .collect();
        rope(&mut b, &cos, &sin, RopeStyle::Half);
        assert_eq!(a, b);
    }

    #[test]
    fn rms_norm_unit() {
        let x = [3.0f32, 4.0];
        let mut o = [0.0; 2];
        rms_norm(&x, &[1.0, 2.0], 0.0, &mut o);
        let r = (12.5f32).sqrt();
        assert!((o[0] - 3.0 / r).abs() < 1e-6 && (o[1] - 8.0 / r).abs() < 1e-6);
    }
}
