//! Quantization weighted by an importance matrix (`quantize --imatrix`): each value's rounding
//! error counts in proportion to how large the inputs it multiplies are (the column's mean
//! square over a text), so the scales fit the columns that matter. The weight of value i is
//! `imatrix_i · sqrt(σ² + x_i²)` (σ² the block's mean square), as llama.cpp weighs it; per
//! sub-block the scale (and min) are searched over candidates around the min/max fit, each
//! refined by weighted least squares. Q4_K, Q5_K and Q6_K; the other formats ignore weights.

use super::format::{f16_at, pack_scale_min_k4, put_f16, QuantType, QK_K};
use super::quantize::quantize_row;

/// [`quantize_row`] with per-column importances `imatrix` (`x.len()` of them; None: plain).
pub fn quantize_row_weighted(t: QuantType, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let Some(im) =
        imatrix.filter(|_| matches!(t, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K))
    else {
        return quantize_row(t, x, out);
    };
    assert_eq!(im.len(), x.len(), "one importance per column");
    let bb = t.block_bytes();
    for ((xb, ib), ob) in x
        .chunks_exact(QK_K)
        .zip(im.chunks_exact(QK_K))
        .zip(out.chunks_exact_mut(bb))
    {
        let sigma2 = xb.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
        let w: Vec<f32> = xb
            .iter()
            .zip(ib)
            .map(|(&v, &i)| i.max(0.0) * (sigma2 + v * v).sqrt())
            .collect();
        match t {
            QuantType::Q6K => q6k(xb, &w, ob),
            _ => k_scale_min(t, xb, &w, ob),
        }
    }
}

/// Weighted least squares of `x ≈ s·q + b` over the sub-block: (s, b, error).
fn fit_affine(x: &[f32], w: &[f32], q: &[u8]) -> (f32, f32) {
    let (mut sw, mut swq, mut swq2, mut swx, mut swqx) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for ((&xi, &wi), &qi) in x.iter().zip(w).zip(q) {
        let (wi, qi, xi) = (wi as f64, qi as f64, xi as f64);
        sw += wi;
        swq += wi * qi;
        swq2 += wi * qi * qi;
        swx += wi * xi;
        swqx += wi * qi * xi;
    }
    let det = sw * swq2 - swq * swq;
    if sw <= 0.0 || det <= 0.0 {
        return (0.0, 0.0);
    }
    let s = (sw * swqx - swq * swx) / det;
    let b = (swx - s * swq) / sw;
    // The format stores a min ≤ 0 as b (x = s·q - min): a positive offset is refit without it.
    if b > 0.0 {
        return ((swqx / swq2.max(1e-30)) as f32, 0.0);
    }
    (s as f32, b as f32)
}

fn weighted_err(x: &[f32], w: &[f32], s: f32, b: f32, levels: i32) -> (f32, [u8; 32]) {
    let mut q = [0u8; 32];
    let id = if s > 0.0 { 1.0 / s } else { 0.0 };
    let mut e = 0.0;
    for (l, (&xi, &wi)) in x.iter().zip(w).enumerate() {
        let v = (((xi - b) * id).round() as i32).clamp(0, levels);
        q[l] = v as u8;
        let d = s * v as f32 + b - xi;
        e += wi * d * d;
    }
    (e, q)
}

/// Q4_K / Q5_K: per 32-value sub-block a scale and a min, searched; then both quantized to 6
/// bits against the super-block's f16 scales as the plain quantizer does.
fn k_scale_min(t: QuantType, x: &[f32], w: &[f32], out: &mut [u8]) {
    let levels = if t == QuantType::Q4K { 15 } else { 31 };
    let mut sc = [0.0f32; 8];
    let mut mn = [0.0f32; 8];
    for j in 0..8 {
        let (xs, ws) = (&x[j * 32..(j + 1) * 32], &w[j * 32..(j + 1) * 32]);
        let lo = xs.iter().fold(0.0f32, |m, &v| m.min(v));
        let hi = xs.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut best = (f32::INFINITY, (hi - lo) / levels as f32, lo);
        if hi > lo {
            // Candidate steps around the min/max one, each refit by least squares.
            for k in -9..=9 {
                let iscale = (levels as f32 + 0.1 * k as f32) / (hi - lo);
                let (_, q) = weighted_err(xs, ws, 1.0 / iscale, lo, levels);
                let (s, b) = fit_affine(xs, ws, &q);
                if s <= 0.0 {
                    continue;
                }
                let (e, _) = weighted_err(xs, ws, s, b, levels);
                if e < best.0 {
                    best = (e, s, b);
                }
            }
        }
        sc[j] = best.1.max(0.0);
        mn[j] = -best.2.min(0.0);
    }
    let max_sc = sc.iter().fold(0.0f32, |m, &v| m.max(v));
    let max_mn = mn.iter().fold(0.0f32, |m, &v| m.max(v));
    put_f16(out, 0, max_sc / 63.0);
    put_f16(out, 2, max_mn / 63.0);
    let (d, dmin) = (f16_at(out, 0), f16_at(out, 2));
    let code = |v: f32, unit: f32| {
        if unit > 0.0 {
            ((v / unit).round() as i32).clamp(0, 63) as u8
        } else {
            0
        }
    };
    let ls: [u8; 8] = std::array::from_fn(|j| code(sc[j], d));
    let lm: [u8; 8] = std::array::from_fn(|j| code(mn[j], dmin));
    out[4..16].copy_from_slice(&pack_scale_min_k4(&ls, &lm));
    let mut q = [0u8; QK_K];
    for j in 0..8 {
        let (s, b) = (d * ls[j] as f32, -dmin * lm[j] as f32);
        let (_, qj) = weighted_err(
            &x[j * 32..(j + 1) * 32],
            &w[j * 32..(j + 1) * 32],
            s,
            b,
            levels,
        );
        q[j * 32..(j + 1) * 32].copy_from_slice(&qj);
    }
    super::quantize::pack_k_quants(t, &q, out);
}

/// Q6_K: per 16-value sub-block a signed scale, searched around the largest magnitude's,
/// each refit by least squares; then quantized to int8 against the super-block's scale.
fn q6k(x: &[f32], w: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    let quant = |xs: &[f32], s: f32| -> [i32; 16] {
        let id = if s != 0.0 { 1.0 / s } else { 0.0 };
        std::array::from_fn(|l| ((xs[l] * id).round() as i32).clamp(-32, 31))
    };
    let err = |xs: &[f32], ws: &[f32], s: f32, q: &[i32; 16]| -> f32 {
        (0..16)
            .map(|l| ws[l] * (s * q[l] as f32 - xs[l]).powi(2))
            .sum()
    };
    for (j, scj) in sc.iter_mut().enumerate() {
        let (xs, ws) = (&x[j * 16..(j + 1) * 16], &w[j * 16..(j + 1) * 16]);
        let max = xs
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let mut best = (f32::INFINITY, max / -32.0);
        if max != 0.0 {
            for k in -9..=9 {
                let q = quant(xs, max / (-32.0 + 0.1 * k as f32));
                let (num, den) = (0..16).fold((0.0f32, 0.0f32), |(a, b), l| {
                    (
                        a + ws[l] * q[l] as f32 * xs[l],
                        b + ws[l] * (q[l] * q[l]) as f32,
                    )
                });
                if den <= 0.0 {
                    continue;
                }
                let s = num / den;
                let e = err(xs, ws, s, &quant(xs, s));
                if e < best.0 {
                    best = (e, s);
                }
            }
        }
        *scj = best.1;
    }
    let max_sc = sc
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    out[208..210].copy_from_slice(&half::f16::from_f32(max_sc / -128.0).to_bits().to_le_bytes());
    let d = f16_at(out, 208);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let ls: [i8; 16] =
        std::array::from_fn(|j| ((sc[j] * id).round() as i32).clamp(-128, 127) as i8);
    let mut q = [0u8; QK_K];
    for j in 0..16 {
        let qj = quant(&x[j * 16..(j + 1) * 16], d * ls[j] as f32);
        for l in 0..16 {
            q[j * 16 + l] = (qj[l] + 32) as u8;
        }
    }
    super::quantize::pack_q6k(&q, &ls, out);
}
