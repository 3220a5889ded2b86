//! Quantization weighted by an importance matrix (`quantize --imatrix`): each value's rounding
//! error counts in proportion to how large the inputs it multiplies are (the column's mean
//! square over a text), so the scales fit the columns that matter. The weight of value i is
//! `imatrix_i · sqrt(σ² + x_i²)` (σ² the super-block's mean square), as llama.cpp weighs it.
//! Per sub-block the scale (and min) are searched over candidates around the plain fit, each
//! refit by weighted least squares; the codes then round to the nearest level as without
//! weights (for fixed scales that is optimal value by value). The K-quants here; the i-quants
//! in their own files; the 32-wide formats ignore the weights.

use super::format::{QuantType, QK_K};
use super::quantize::{pack_k_minmax, pack_q2k, pack_q3k, pack_q6k_scaled, quantize_row};

/// Candidate steps either side of the plain fit, a tenth of a level apart.
const STEPS: i32 = 9;

/// [`quantize_row`] with per-column importances `imatrix` (`x.len()` of them; None: plain).
/// The lattice and IQ4 types go to [`super::iq_quantize`] and [`super::iq4_quantize`], whose
/// searches are llama.cpp's.
pub fn quantize_row_weighted(t: QuantType, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    use QuantType::*;
    if super::iq_quantize::writes_lattice(t) {
        return super::iq_quantize::quantize_row_lattice(t, x, imatrix, out);
    }
    if matches!(t, IQ4NL | IQ4XS) {
        return super::iq4_quantize::quantize_row_iq4(t, x, imatrix, out);
    }
    let Some(im) = imatrix.filter(|_| matches!(t, Q2K | Q3K | Q4K | Q5K | Q6K)) else {
        return quantize_row(t, x, out);
    };
    assert_eq!(im.len(), x.len(), "one importance per column");
    let bb = t.block_bytes();
    let blocks = x.chunks_exact(QK_K).zip(im.chunks_exact(QK_K));
    for ((xb, ib), ob) in blocks.zip(out.chunks_exact_mut(bb)) {
        let sigma2 = xb.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
        let w: Vec<f32> = xb
            .iter()
            .zip(ib)
            .map(|(&v, &i)| i.max(0.0) * (sigma2 + v * v).sqrt())
            .collect();
        let sub = |len: usize, j: usize| (&xb[j * len..(j + 1) * len], &w[j * len..(j + 1) * len]);
        match t {
            Q2K => {
                let fits: [(f32, f32); 16] = std::array::from_fn(|j| {
                    let (xs, ws) = sub(16, j);
                    fit_scale_min(xs, ws, 3)
                });
                pack_q2k(xb, &fits.map(|f| f.0), &fits.map(|f| -f.1), ob);
            }
            Q4K | Q5K => {
                let levels = if t == Q4K { 15 } else { 31 };
                let fits: [(f32, f32); 8] = std::array::from_fn(|j| {
                    let (xs, ws) = sub(32, j);
                    fit_scale_min(xs, ws, levels)
                });
                pack_k_minmax(t, xb, &fits.map(|f| f.0), &fits.map(|f| -f.1), ob);
            }
            Q3K => {
                let sc: [f32; 16] = std::array::from_fn(|j| {
                    let (xs, ws) = sub(16, j);
                    fit_signed_scale(xs, ws, -4, 3)
                });
                pack_q3k(xb, &sc, ob);
            }
            Q6K => {
                let sc: [f32; 16] = std::array::from_fn(|j| {
                    let (xs, ws) = sub(16, j);
                    fit_signed_scale(xs, ws, -32, 31)
                });
                pack_q6k_scaled(xb, &sc, ob);
            }
            _ => unreachable!("filtered above"),
        }
    }
}

/// `x ≈ s·q + b`, q in 0..=levels, b ≤ 0 (the formats store -b as a positive min): (s, b)
/// of least weighted error among the candidates.
fn fit_scale_min(x: &[f32], w: &[f32], levels: i32) -> (f32, f32) {
    let lo = x.iter().fold(0.0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut best = (f32::INFINITY, (hi - lo) / levels as f32, lo);
    if hi <= lo {
        return (best.1.max(0.0), best.2);
    }
    for k in -STEPS..=STEPS {
        let step = (hi - lo) / (levels as f32 + 0.1 * k as f32);
        let q = codes_affine(x, step, lo, levels);
        let (s, b) = least_squares_affine(x, w, &q);
        if s <= 0.0 {
            continue;
        }
        let e = err_affine(x, w, s, b, levels);
        if e < best.0 {
            best = (e, s, b);
        }
    }
    (best.1.max(0.0), best.2.min(0.0))
}

fn codes_affine(x: &[f32], s: f32, b: f32, levels: i32) -> Vec<i32> {
    let id = if s > 0.0 { 1.0 / s } else { 0.0 };
    x.iter()
        .map(|&v| (((v - b) * id).round() as i32).clamp(0, levels))
        .collect()
}

fn err_affine(x: &[f32], w: &[f32], s: f32, b: f32, levels: i32) -> f32 {
    let q = codes_affine(x, s, b, levels);
    (0..x.len())
        .map(|l| w[l] * (s * q[l] as f32 + b - x[l]).powi(2))
        .sum()
}

/// Weighted least squares of `x ≈ s·q + b` for fixed codes `q`, with b ≤ 0.
fn least_squares_affine(x: &[f32], w: &[f32], q: &[i32]) -> (f32, f32) {
    let (mut sw, mut swq, mut swq2, mut swx, mut swqx) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
    for l in 0..x.len() {
        let (wi, qi, xi) = (w[l] as f64, q[l] as f64, x[l] as f64);
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
    if b > 0.0 {
        // A positive offset cannot be stored: refit the scale alone.
        return ((swqx / swq2.max(1e-30)) as f32, 0.0);
    }
    (s as f32, b as f32)
}

/// `x ≈ s·q`, q in qmin..=qmax: the signed scale of least weighted error among candidates that
/// put the value of largest magnitude near either end, each refit by least squares.
fn fit_signed_scale(x: &[f32], w: &[f32], qmin: i32, qmax: i32) -> f32 {
    let max = x
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if max == 0.0 {
        return 0.0;
    }
    let codes = |s: f32| -> Vec<i32> {
        let id = 1.0 / s;
        x.iter()
            .map(|&v| ((v * id).round() as i32).clamp(qmin, qmax))
            .collect()
    };
    let err = |s: f32| -> f32 {
        let q = codes(s);
        (0..x.len())
            .map(|l| w[l] * (s * q[l] as f32 - x[l]).powi(2))
            .sum()
    };
    let mut best = (err(max / qmin as f32), max / qmin as f32);
    for end in [qmin, qmax] {
        for k in -STEPS..=STEPS {
            let denom = end as f32 + 0.1 * k as f32;
            if denom.abs() < 0.5 {
                continue;
            }
            let q = codes(max / denom);
            let (num, den) = (0..x.len()).fold((0.0f32, 0.0f32), |(a, b), l| {
                (
                    a + w[l] * q[l] as f32 * x[l],
                    b + w[l] * (q[l] * q[l]) as f32,
                )
            });
            if den <= 0.0 || num == 0.0 {
                continue;
            }
            let s = num / den;
            let e = err(s);
            if e < best.0 {
                best = (e, s);
            }
        }
    }
    best.1
}
