//! The portable forms of the SIMD kernels: the scalar code that runs where no vector unit
//! does, the plain references the vector forms are tested against, and what they share (the
//! bf16 widening, the exp polynomial, the heads-major query layout).

use super::isa::{isa, Isa};

#[inline]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

pub(crate) fn dot_scalar(w: impl Iterator<Item = f32>, x: &[f32]) -> f32 {
    // Eight partial sums, like the vector code, so rounding behaves alike.
    let mut s = [0.0f32; 8];
    for (i, (wv, &xv)) in w.zip(x).enumerate() {
        s[i & 7] += wv * xv;
    }
    s.iter().sum()
}

pub fn tile_scalar<W: Copy, const R: usize, const T: usize>(
    w: [&[W]; R],
    x: [&[f32]; T],
    acc: &mut [[f32; T]; R],
    conv: impl Fn(W) -> f32,
) {
    for r in 0..R {
        for t in 0..T {
            acc[r][t] = dot_scalar(w[r].iter().map(|&v| conv(v)), x[t]);
        }
    }
}

/// Plain reference of [`super::silu_mul`]: `silu(g) = g / (1 + e^-g)` (libm's `expf`) times `up`.
pub fn silu_mul_reference(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Cephes' `expf`, shared by the vector forms: exp(x) = 2ⁿ · exp(r), n = round(x / ln 2),
/// r = x − n·ln 2 with ln 2 in two parts (`EXP_LN2`), exp(r) = 1 + r + r²·P(r) with P's
/// coefficients from the highest power (`EXP_POLY`).
pub(crate) const EXP_LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Plain reference of [`exp_shifted_sum`] (libm's `expf`).
pub fn exp_shifted_sum_reference(v: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for x in v.iter_mut() {
        let d = *x - max;
        *x = if d < -80.0 { 0.0 } else { d.exp() };
        sum += *x;
    }
    sum
}

/// Plain reference of [`accumulate_rows`].
#[allow(clippy::too_many_arguments)]
pub fn accumulate_rows_reference(
    w: &[f32],
    ws: usize,
    groups: usize,
    rows: &[f32],
    stride: usize,
    offset: usize,
    n: usize,
    len: usize,
    out: &mut [f32],
) {
    for g in 0..groups {
        for c in 0..len {
            let mut s = out[g * len + c] as f64;
            for r in 0..n {
                s += w[g * ws + r] as f64 * rows[r * stride + offset + c] as f64;
            }
            out[g * len + c] = s as f32;
        }
    }
}

/// Queries packed for [`scores_heads_major`]: `qt[c * heads + g] = scale · q[g][c]`, heads
/// padded to a multiple of 8 with zeros.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct HeadsMajorQueries {
    pub(crate) qt: Vec<f32>,
    pub(crate) heads: usize,
    pub(crate) groups: usize,
    pub(crate) key_len: usize,
}

impl HeadsMajorQueries {
    /// Packs `queries` (`groups × key_len`) when this CPU has a heads-major kernel and there are
    /// enough heads to fill its registers (8 or more on AVX2, 16 on AVX-512); `None` otherwise.
    pub fn new(queries: &[f32], key_len: usize, scale: f32) -> Option<Self> {
        let groups = queries.len() / key_len.max(1);
        let lanes = match isa() {
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
            _ => return None,
        };
        if groups < lanes || key_len == 0 {
            return None;
        }
        let heads = groups.next_multiple_of(lanes);
        let mut qt = vec![0.0f32; key_len * heads];
        for (g, q) in queries.chunks_exact(key_len).enumerate() {
            for (c, &v) in q.iter().enumerate() {
                qt[c * heads + g] = v * scale;
            }
        }
        Some(HeadsMajorQueries {
            qt,
            heads,
            groups,
            key_len,
        })
    }
}

/// Plain reference of [`scores_heads_major`].
#[allow(clippy::too_many_arguments)]
pub fn scores_reference(
    queries: &[f32],
    key_len: usize,
    scale: f32,
    rows: &[f32],
    stride: usize,
    offset: usize,
    n: usize,
    s: &mut [f32],
    ws: usize,
) {
    for (g, qg) in queries.chunks_exact(key_len).enumerate() {
        for i in 0..n {
            let k = &rows[i * stride + offset..][..key_len];
            let d: f64 = qg.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
            s[g * ws + i] = (d * scale as f64) as f32;
        }
    }
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}
