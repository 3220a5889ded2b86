//! llama.cpp's K-quant searches (`ggml-quants.c`), ported so that our Q2_K … Q6_K blocks are
//! byte-identical to llama-quantize's, with and without an importance matrix; and the same
//! searches as llama.cpp uses them for Q4_0, Q4_1, Q5_0 and Q5_1 given an importance matrix
//! (without one those round as its reference quantizers do, in [`super::quantize`]).
//!
//! Q3_K and Q6_K (signed, no min) search each 16 values' scale with `make_q3_quants` /
//! `make_qx_quants`: 19 scales around the largest value's, each refit by least squares
//! weighted by `x²` (or the importances), plus a coordinate-descent pass for Q3_K.
//! For Q2_K, Q4_K and Q5_K, without an importance matrix each sub-block's (scale, min) comes
//! from `make_qkx2_quants`: a min/max fit,
//! then `nstep` wider or narrower level spacings, each refit by weighted least squares (weights
//! `|x|`, or `rms + |x|`), keeping the one of least weighted error; the super-block's 6-bit (4-bit
//! for Q2_K) scale and min codes are then plain roundings against the largest. With one, the
//! weights are `imatrix · sqrt(σ² + x²)`, the spacing search is finer (`make_qkx3_quants`: 37
//! steps), and the codes themselves are searched (`make_qp_quants`) for least error weighted by
//! each sub-block's total weight. Either way the values are then requantized against the
//! stored (f16-rounded) scales. The arithmetic follows the C statement by statement (f32, the
//! same order), which is what keeps the bytes equal.

// Index loops on purpose: they mirror the C loop by loop, which is what keeps the bytes equal.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::format::QK_K;
use super::iq_quantize::make_qp_quants;
use super::lattice::nearest_int;

/// `make_qkx2_quants` / `make_qkx3_quants` (identical once weights are given): codes in `l`,
/// returns (scale, the positive min).
#[allow(clippy::too_many_arguments)]
fn make_qkx_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    l: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let mut laux = [0u8; 32];
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        l[..n].fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min));
        l[i] = q.clamp(0, nmax) as u8;
        let diff = scale * l[i] as f32 + min - x[i];
        let diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let w = weights[i];
            let q = q as f32;
            sum_l += w * q;
            sum_l2 += w * q * q;
            sum_xl += w * q * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                let diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                l[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

fn f16_round(v: f32) -> (u16, f32) {
    let h = f16::from_f32(v);
    (h.to_bits(), h.to_f32())
}

/// One Q2_K super-block (84 bytes: 16 scale/min nibble pairs, 64 bytes of 2-bit codes, d,
/// dmin); `qw`: the importance matrix's 256 values, or none (`quantize_row_q2_K_ref`).
pub(crate) fn quantize_q2k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut mins = [0f32; 16];
    let (d, dmin, sc) = match qw {
        None => {
            let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
            for j in 0..16 {
                let xs = &x[16 * j..16 * (j + 1)];
                let w: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
                let (s, m) = make_qkx_quants(3, xs, &w, &mut l[16 * j..], -0.5, 0.1, 15, true);
                (scales[j], mins[j]) = (s, m);
                max_scale = max_scale.max_c(s);
                max_min = max_min.max_c(m);
            }
            let mut sc = [0u8; 16];
            let d = if max_scale > 0.0 {
                let iscale = 15.0 / max_scale;
                for j in 0..16 {
                    sc[j] = nearest_int(iscale * scales[j]) as u8;
                }
                f16_round(max_scale / 15.0)
            } else {
                f16_round(0.0)
            };
            let dmin = if max_min > 0.0 {
                let iscale = 15.0 / max_min;
                for j in 0..16 {
                    sc[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
                }
                f16_round(max_min / 15.0)
            } else {
                f16_round(0.0)
            };
            (d, dmin, sc)
        }
        Some(qw) => {
            let sumx2: f32 = x[..QK_K].iter().fold(0.0, |s, v| s + v * v);
            let sigma2 = sumx2 / QK_K as f32;
            let mut sw = [0f32; 16];
            for j in 0..16 {
                let xs = &x[16 * j..16 * (j + 1)];
                let w: [f32; 16] =
                    std::array::from_fn(|i| qw[16 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt());
                sw[j] = w.iter().fold(0.0, |s, v| s + v);
                let (s, m) = make_qkx_quants(3, xs, &w, &mut l[16 * j..], -0.9, 0.05, 36, false);
                (scales[j], mins[j]) = (s, m);
            }
            let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
            let dm = make_qp_quants(15, &scales, &mut ls, &sw);
            let mm = make_qp_quants(15, &mins, &mut lm, &sw);
            (
                f16_round(dm),
                f16_round(mm),
                std::array::from_fn(|j| ls[j] | lm[j] << 4),
            )
        }
    };
    for j in 0..16 {
        let dj = d.1 * (sc[j] & 15) as f32;
        if dj == 0.0 {
            continue;
        }
        let mj = dmin.1 * (sc[j] >> 4) as f32;
        for i in 0..16 {
            l[16 * j + i] = nearest_int((x[16 * j + i] + mj) / dj).clamp(0, 3) as u8;
        }
    }
    let (scales_out, rest) = out.split_at_mut(16);
    scales_out.copy_from_slice(&sc);
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            rest[j / 4 + i] =
                l[j + i] | l[j + i + 32] << 2 | l[j + i + 64] << 4 | l[j + i + 96] << 6;
        }
    }
    rest[64..66].copy_from_slice(&d.0.to_le_bytes());
    rest[66..68].copy_from_slice(&dmin.0.to_le_bytes());
}

/// `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One Q4_K (144 bytes) or Q5_K (176 bytes) super-block; `qw` as for [`quantize_q2k`].
pub(crate) fn quantize_q4k_q5k(five: bool, x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let nmax = if five { 31 } else { 15 };
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let (d, dmin) = match qw {
        None => {
            let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
            let (rmin, nstep) = if five { (-0.5, 15) } else { (-1.0, 20) };
            for j in 0..8 {
                let xs = &x[32 * j..32 * (j + 1)];
                let sum_x2 = xs.iter().fold(0.0f32, |s, v| s + v * v);
                let av_x = (sum_x2 / 32.0).sqrt();
                let w: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
                let (s, m) =
                    make_qkx_quants(nmax, xs, &w, &mut l[32 * j..], rmin, 0.1, nstep, false);
                (scales[j], mins[j]) = (s, m);
                max_scale = max_scale.max_c(s);
                max_min = max_min.max_c(m);
            }
            let inv_scale = if max_scale > 0.0 {
                63.0 / max_scale
            } else {
                0.0
            };
            let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
            for j in 0..8 {
                ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
            }
            (f16_round(max_scale / 63.0), f16_round(max_min / 63.0))
        }
        Some(qw) => {
            let sum_x2 = x[..QK_K].iter().fold(0.0f32, |s, v| s + v * v);
            let sigma2 = 2.0 * sum_x2 / QK_K as f32;
            let mut sw = [0f32; 8];
            for j in 0..8 {
                let xs = &x[32 * j..32 * (j + 1)];
                let w: [f32; 32] =
                    std::array::from_fn(|i| qw[32 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt());
                sw[j] = w.iter().fold(0.0, |s, v| s + v);
                let (s, m) = make_qkx_quants(nmax, xs, &w, &mut l[32 * j..], -0.9, 0.05, 36, false);
                (scales[j], mins[j]) = (s, m);
            }
            let d = make_qp_quants(63, &scales, &mut ls, &sw);
            let m = make_qp_quants(63, &mins, &mut lm, &sw);
            for j in 0..8 {
                ls[j] = ls[j].min(63);
                lm[j] = lm[j].min(63);
            }
            (f16_round(d), f16_round(m))
        }
    };
    let mut sc = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            sc[j] = ls[j];
            sc[j + 4] = lm[j];
        } else {
            sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            sc[j - 4] |= (ls[j] >> 4) << 6;
            sc[j] |= (lm[j] >> 4) << 6;
        }
    }
    for j in 0..8 {
        let (s, m) = scale_min_k4(j, &sc);
        let dj = d.1 * s as f32;
        if dj == 0.0 {
            continue;
        }
        let dm = dmin.1 * m as f32;
        for i in 0..32 {
            l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    out[0..2].copy_from_slice(&d.0.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.0.to_le_bytes());
    out[4..16].copy_from_slice(&sc);
    if five {
        let (qh, ql) = out[16..176].split_at_mut(32);
        qh.fill(0);
        let (mut m1, mut m2) = (1u8, 2u8);
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let (mut l1, mut l2) = (l[n + j], l[n + j + 32]);
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * c + j] = l1 | l2 << 4;
            }
            m1 <<= 2;
            m2 <<= 2;
        }
    } else {
        for (c, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                out[16 + 32 * c + j] = l[n + j] | l[n + j + 32] << 4;
            }
        }
    }
}

/// C's `if (v > max) max = v` (NaN-blind, unlike `f32::max`).
trait MaxC {
    fn max_c(self, v: f32) -> f32;
}

impl MaxC for f32 {
    fn max_c(self, v: f32) -> f32 {
        if v > self {
            v
        } else {
            self
        }
    }
}

/// The value of largest magnitude (the first of equals), or none when all are (nearly) zero:
/// where the signed searches start.
fn signed_max(x: &[f32]) -> Option<f32> {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    (amax >= 1e-15).then_some(max)
}

/// `make_qx_quants` with `rmse_type` 1: signed codes `l` in `0..2·nmax` (offset by `nmax`) and
/// their scale, searched over 19 reciprocal scales, weights `qw` or else `x²`.
fn make_qx_quants(nmax: i32, x: &[f32], l: &mut [i8], qw: Option<&[f32]>) -> f32 {
    let n = x.len();
    let Some(max) = signed_max(x) else {
        l[..n].fill(0);
        return 0.0;
    };
    let weight = |i: usize| qw.map_or(x[i] * x[i], |w| w[i]);
    let code = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = code(iscale, x[i]);
        l[i] = (q + nmax) as i8;
        let w = weight(i);
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for i in 0..n {
            let q = code(iscale, x[i]);
            let w = weight(i);
            sumlx += w * x[i] * q as f32;
            suml2 += w * q as f32 * q as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                l[i] = (nmax + code(iscale, x[i])) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants` with `do_rmse`: codes in `0..2·nmax` and their scale, the least-squares
/// fit (weights `x²`) improved value by value for up to five passes.
fn make_q3_quants(nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
    let n = x.len();
    let Some(max) = signed_max(x) else {
        l[..n].fill(0);
        return 0.0;
    };
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let q = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        l[i] = q as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * q as f32;
        suml2 += w * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..n {
            let w = x[i] * x[i];
            let li = l[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        changed += 1;
                    }
                }
            }
        }
        if changed == 0 {
            break;
        }
    }
    for v in &mut l[..n] {
        *v += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// One Q3_K super-block (110 bytes: high-bit mask, 2-bit codes, 6-bit scales, d).
pub(crate) fn quantize_q3k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut sc = [0u8; 12];
    let pack = |sc: &mut [u8; 12], j: usize, v: i32| {
        if j < 8 {
            sc[j] = (v & 0xF) as u8;
        } else {
            sc[j - 8] |= ((v & 0xF) << 4) as u8;
        }
        sc[j % 4 + 8] |= ((v >> 4) << (2 * (j / 4))) as u8;
    };
    let d = match qw {
        None => {
            let (mut max_scale, mut amax) = (0.0f32, 0.0f32);
            for j in 0..16 {
                scales[j] = make_q3_quants(4, &x[16 * j..16 * (j + 1)], &mut l[16 * j..]);
                if scales[j].abs() > amax {
                    amax = scales[j].abs();
                    max_scale = scales[j];
                }
            }
            if max_scale != 0.0 {
                let iscale = -32.0 / max_scale;
                for j in 0..16 {
                    let v = nearest_int(iscale * scales[j]) as i8 as i32;
                    pack(&mut sc, j, v.clamp(-32, 31) + 32);
                }
                f16_round(1.0 / iscale)
            } else {
                f16_round(0.0)
            }
        }
        Some(qw) => {
            let sumx2 = x[..QK_K].iter().fold(0.0f32, |s, v| s + v * v);
            let sigma2 = 2.0 * sumx2 / QK_K as f32;
            let mut sw = [0f32; 16];
            for j in 0..16 {
                let xs = &x[16 * j..16 * (j + 1)];
                let w: [f32; 16] =
                    std::array::from_fn(|i| qw[16 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt());
                sw[j] = w.iter().fold(0.0, |s, v| s + v);
                scales[j] = make_qx_quants(4, xs, &mut l[16 * j..], Some(&w));
            }
            let mut ls = [0i8; 16];
            let d = make_qx_quants(32, &scales, &mut ls, Some(&sw));
            for j in 0..16 {
                pack(&mut sc, j, ls[j] as i32);
            }
            f16_round(d)
        }
    };
    for j in 0..16 {
        let low = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
        let s = (low | ((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) as i32 - 32;
        let dj = d.1 * s as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-4, 3) + 4) as i8;
        }
    }
    let (hmask, rest) = out.split_at_mut(32);
    hmask.fill(0);
    for j in 0..QK_K {
        if l[j] > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            l[j] -= 4;
        }
    }
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k] as u8;
            rest[j / 4 + i] = q(0) | q(1) << 2 | q(2) << 4 | q(3) << 6;
        }
    }
    rest[64..76].copy_from_slice(&sc);
    rest[76..78].copy_from_slice(&d.0.to_le_bytes());
}

/// One Q6_K super-block (210 bytes: low nibbles, high bits, 16 int8 scales, d). With an
/// importance matrix its values weigh the fit directly (llama.cpp's choice for Q6_K).
pub(crate) fn quantize_q6k(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0.0f32, 0.0f32);
    for j in 0..16 {
        let w = qw.map(|w| &w[16 * j..16 * (j + 1)]);
        scales[j] = make_qx_quants(32, &x[16 * j..16 * (j + 1)], &mut l[16 * j..], w);
        if scales[j].abs() > max_abs {
            max_abs = scales[j].abs();
            max_scale = scales[j];
        }
    }
    out[..210].fill(0);
    if max_abs < 1e-15 {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16_round(1.0 / iscale);
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = nearest_int(iscale * scales[j]).min(127) as i8;
    }
    for j in 0..16 {
        let dj = d.1 * sc[j] as f32;
        if dj == 0.0 {
            continue;
        }
        for i in 0..16 {
            l[16 * j + i] = (nearest_int(x[16 * j + i] / dj).clamp(-32, 31) + 32) as i8;
        }
    }
    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    for (c, j) in (0..QK_K).step_by(128).enumerate() {
        for i in 0..32 {
            let q = |k: usize| l[j + i + 32 * k] as u8;
            ql[64 * c + i] = q(0) & 0xF | (q(2) & 0xF) << 4;
            ql[64 * c + i + 32] = q(1) & 0xF | (q(3) & 0xF) << 4;
            qh[32 * c + i] = q(0) >> 4 | (q(1) >> 4) << 2 | (q(2) >> 4) << 4 | (q(3) >> 4) << 6;
        }
    }
    for (o, &s) in rest[..16].iter_mut().zip(&sc) {
        *o = s as u8;
    }
    rest[16..18].copy_from_slice(&d.0.to_le_bytes());
}

/// A Q4_0, Q4_1, Q5_0 or Q5_1 row weighted by `qw` (llama.cpp's `quantize_row_q*_impl`): per
/// 32 values `make_qx_quants` (signed) or `make_qkx3_quants` (with a min), weights
/// `qw · sqrt(σ² + x²)` with σ² the whole row's mean square.
pub(crate) fn quantize_row_32_weighted(
    t: super::format::QuantType,
    x: &[f32],
    qw: &[f32],
    out: &mut [u8],
) {
    use super::format::QuantType::*;
    let sum_x2 = x.iter().fold(0.0f32, |s, v| s + v * v);
    let sigma2 = sum_x2 / x.len() as f32;
    let bb = t.block_bytes();
    for ((xb, wb), ob) in x
        .chunks_exact(32)
        .zip(qw.chunks_exact(32))
        .zip(out.chunks_exact_mut(bb))
    {
        let w: [f32; 32] = std::array::from_fn(|j| wb[j] * (sigma2 + xb[j] * xb[j]).sqrt());
        let mut l = [0u8; 32];
        let (d, m) = match t {
            Q4_0 | Q5_0 => {
                let mut li = [0i8; 32];
                let d = make_qx_quants(if t == Q4_0 { 8 } else { 16 }, xb, &mut li, Some(&w));
                l = li.map(|v| v as u8);
                (d, None)
            }
            Q4_1 | Q5_1 => {
                let nmax = if t == Q4_1 { 15 } else { 31 };
                let (d, the_min) = make_qkx_quants(nmax, xb, &w, &mut l, -0.9, 0.05, 36, false);
                (d, Some(-the_min))
            }
            t => unreachable!(
                "{} is not a 32-value format with a weighted search",
                t.name()
            ),
        };
        ob[0..2].copy_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
        let mut at = 2;
        if let Some(m) = m {
            ob[2..4].copy_from_slice(&f16::from_f32(m).to_bits().to_le_bytes());
            at = 4;
        }
        if matches!(t, Q5_0 | Q5_1) {
            let mut qh = 0u32;
            for j in 0..16 {
                qh |= ((l[j] as u32 & 0x10) >> 4) << j;
                qh |= ((l[j + 16] as u32 & 0x10) >> 4) << (j + 16);
            }
            ob[at..at + 4].copy_from_slice(&qh.to_le_bytes());
            at += 4;
        }
        for j in 0..16 {
            ob[at + j] = (l[j] & 0x0F) | (l[j + 16] & 0x0F) << 4;
        }
    }
}
