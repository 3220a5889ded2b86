//! Writing IQ4_NL and IQ4_XS: llama.cpp's `quantize_row_iq4_nl_impl` (ggml-quants.c), ported
//! step by step so that the blocks match llama-quantize's. Per 32 values a scale is searched
//! over 15 candidates around `max / -127`, each refit by weighted least squares with the values
//! on their nearest non-linear level; the weights are `imatrix · sqrt(σ² + x²)` with an
//! importance matrix, `x²` without. IQ4_XS then stores the eight scales in 6 bits against the
//! super-block's `d` and rounds the values again to the stored scales.

use super::format::{put_f16, QuantType, IQ4_LEVELS, QK, QK_K};
use super::lattice::nearest_int;

/// Candidate steps either side of `max / -127` (llama.cpp's `ntry`).
const NTRY: i32 = 7;

/// ggml's `best_index_int8`: the index of the level nearest `x` (the upper one on a tie).
fn best_index(x: f32) -> usize {
    let v = &IQ4_LEVELS;
    if x <= v[0] as f32 {
        return 0;
    }
    if x >= v[15] as f32 {
        return 15;
    }
    let (mut ml, mut mu) = (0, 15);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < v[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (v[mu - 1] as f32) < v[mu] as f32 - x {
        mu - 1
    } else {
        mu
    }
}

/// One IQ4_NL block (`QK` values) or IQ4_XS super-block (`QK_K`), `qw` the importances.
fn quantize_iq4(t: QuantType, x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let n = x.len();
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() * (2.0 / n as f32);
    let blocks = n / QK;
    let mut scales = [0.0f32; QK_K / QK];
    let mut l = [0u8; QK_K];
    let (mut max_scale, mut amax_scale) = (0.0f32, 0.0f32);
    let levels = IQ4_LEVELS.map(|v| v as f32);
    for ib in 0..blocks {
        let xb = &x[ib * QK..(ib + 1) * QK];
        let w: [f32; QK] = std::array::from_fn(|j| match qw {
            Some(q) => q[ib * QK + j] * (sigma2 + xb[j] * xb[j]).sqrt(),
            None => xb[j] * xb[j],
        });
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in xb {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax < 1e-15 {
            scales[ib] = 0.0;
            continue;
        }
        let mut d = -max / levels[0];
        let mut id = 1.0 / d;
        let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
        for j in 0..QK {
            let li = best_index(id * xb[j]);
            l[ib * QK + j] = li as u8;
            let q = levels[li];
            sumqx += w[j] * q * xb[j];
            sumq2 += w[j] * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -NTRY..=NTRY {
            id = (itry as f32 + levels[0]) / max;
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for j in 0..QK {
                let q = levels[best_index(id * xb[j])];
                sumqx += w[j] * q * xb[j];
                sumq2 += w[j] * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let qs_at = if t == QuantType::IQ4XS { 8 } else { 2 };
    out.fill(0);
    if t == QuantType::IQ4XS {
        let d = -max_scale / 32.0;
        put_f16(out, 0, d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sh = 0u16;
        for ib in 0..blocks {
            let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * ls as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for j in 0..QK {
                l[ib * QK + j] = best_index(idl * x[ib * QK + j]) as u8;
            }
            let stored = (ls + 32) as u8;
            out[4 + ib / 2] |= (stored & 0xF) << (4 * (ib % 2));
            sh |= ((stored >> 4) as u16) << (2 * ib);
        }
        out[2..4].copy_from_slice(&sh.to_le_bytes());
    } else {
        put_f16(out, 0, scales[0]);
        let id = if scales[0] != 0.0 {
            1.0 / scales[0]
        } else {
            0.0
        };
        for j in 0..QK {
            l[j] = best_index(id * x[j]) as u8;
        }
    }
    for i in 0..blocks {
        for j in 0..16 {
            out[qs_at + 16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// Quantizes a row to IQ4_NL or IQ4_XS, weighted by `imatrix` where given.
pub fn quantize_row_iq4(t: QuantType, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert!(matches!(t, QuantType::IQ4NL | QuantType::IQ4XS));
    assert!(x.len().is_multiple_of(be) && out.len() == x.len() / be * bb);
    for (i, (xb, ob)) in x.chunks_exact(be).zip(out.chunks_exact_mut(bb)).enumerate() {
        quantize_iq4(t, xb, imatrix.map(|m| &m[i * be..(i + 1) * be]), ob);
    }
}
