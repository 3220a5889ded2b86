//! Writing IQ1_S and IQ1_M: llama.cpp's `quantize_row_iq1_s_impl` and `quantize_row_iq1_m_impl`
//! (ggml-quants.c), ported step by step so that the blocks match llama-quantize's. With three levels per value (−1, 0, 1, all shifted
//! by ±1/8) the best split of each 32 values into the three is found exhaustively: the values
//! sorted, every pair of boundaries scored through prefix sums of `w·x` and `w`, for both
//! shifts. Groups of 8 that are not grid points take the nearest of their grid neighbours.

// The loops follow ggml-quants.c index by index.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use super::format::{put_f16, QK_K};
use super::iq_tables::IQ1S_GRID;
use super::lattice::{level_indices, nearest_int, Lattice};

const DELTA: f32 = 0.125;
const X_P: [f32; 3] = [-1.0 + DELTA, DELTA, 1.0 + DELTA];
const X_M: [f32; 3] = [-1.0 - DELTA, -DELTA, 1.0 - DELTA];

fn lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(level_indices(&IQ1S_GRID, &[-1, 0, 1]), 2, 43692, 3))
}

/// llama.cpp's `iq1_find_best_neighbour2`: of an off-grid group's neighbours, the one whose
/// levels `xx` at `scale` are nearest `x` in weighted squares (the whole grid if none is).
fn best_neighbour(
    lat: &Lattice,
    entry: i32,
    x: &[f32],
    w: &[f32],
    scale: f32,
    xx: &[f32; 3],
) -> usize {
    let at = (-entry - 1) as usize;
    let n = lat.neighbours[at] as usize;
    let d2 = |p: &[i8]| {
        let mut d2 = 0.0f32;
        for i in 0..8 {
            let q = xx[((p[i] - 1) / 2) as usize];
            let diff = scale * q - x[i];
            d2 += w[i] * diff * diff;
        }
        d2
    };
    let mut best = (f32::MAX, None);
    for &j in &lat.neighbours[at + 1..at + 1 + n] {
        let d = d2(lat.point(j as usize));
        if d < best.0 {
            best = (d, Some(j as usize));
        }
    }
    if let Some(j) = best.1 {
        return j;
    }
    for j in 0..lat.points.len() / 8 {
        let d = d2(lat.point(j));
        if d < best.0 {
            best = (d, Some(j));
        }
    }
    best.1
        .expect("IQ1_S: no grid point scores below f32::MAX (non-finite input)")
}

/// The indices of `xb` in ascending order of value (a stable sort, as glibc's qsort of these
/// pairs is).
fn ascending<const N: usize>(xb: &[f32]) -> [usize; N] {
    let mut idx: [usize; N] = std::array::from_fn(|j| j);
    idx.sort_by(|&a, &b| {
        xb[a]
            .partial_cmp(&xb[b])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx
}

/// Level indices from a split of the sorted values: the first `i1` get 0, up to `i2` 1, the
/// rest 2.
fn split_levels<const N: usize>(idx: &[usize; N], i1: usize, i2: usize) -> [i8; N] {
    let mut l = [0i8; N];
    for (j, &i) in idx.iter().enumerate() {
        l[i] = if j < i1 {
            0
        } else if j < i2 {
            1
        } else {
            2
        };
    }
    l
}

/// One super-block of IQ1_S (importances required).
pub(crate) fn quantize_iq1s_block(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let lat = lattice();
    const BS: usize = 32;
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let mut scales = [0.0f32; 8];
    let mut shifts = [1i8; 8];
    let mut max_scale = 0.0f32;
    out.fill(0);
    let mut qh = [0u16; 8];
    for ib in 0..8 {
        let xb = &x[BS * ib..BS * ib + BS];
        let w: [f32; BS] =
            std::array::from_fn(|i| qw[BS * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt());
        let max = xb.iter().fold(xb[0].abs(), |m, v| m.max(v.abs()));
        if max < 1e-12 {
            continue;
        }
        let idx = ascending::<BS>(xb);
        let (mut sumx, mut sumw) = ([0.0f32; BS + 1], [0.0f32; BS + 1]);
        for j in 0..BS {
            let i = idx[j];
            sumx[j + 1] = sumx[j] + w[i] * xb[i];
            sumw[j + 1] = sumw[j] + w[i];
        }
        let (mut best_score, mut scale) = (-f32::MAX, max);
        let (mut besti1, mut besti2, mut best_shift) = (None, None, 0i8);
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                for (shift, xs) in [(1i8, &X_P), (-1, &X_M)] {
                    let sumqx = (sumx[i1] - sumx[0]) * xs[0]
                        + (sumx[i2] - sumx[i1]) * xs[1]
                        + (sumx[BS] - sumx[i2]) * xs[2];
                    let sumq2 = (sumw[i1] - sumw[0]) * xs[0] * xs[0]
                        + (sumw[i2] - sumw[i1]) * xs[1] * xs[1]
                        + (sumw[BS] - sumw[i2]) * xs[2] * xs[2];
                    if sumq2 > 0.0 && sumqx * sumqx > best_score * sumq2 {
                        scale = sumqx / sumq2;
                        best_score = scale * sumqx;
                        (besti1, besti2, best_shift) = (Some(i1), Some(i2), shift);
                    }
                }
            }
        }
        let (Some(i1), Some(i2)) = (besti1, besti2) else {
            continue;
        };
        let mut l = split_levels(&idx, i1, i2);
        if scale < 0.0 {
            l = l.map(|v| 2 - v);
            scale = -scale;
            best_shift = -best_shift;
        }
        let xx = if best_shift == 1 { &X_P } else { &X_M };
        let mut index = [0usize; 4];
        let mut all_on_grid = true;
        for k in 0..4 {
            let e = lat.lookup(&l[8 * k..8 * k + 8]);
            index[k] = if e >= 0 {
                e as usize
            } else {
                all_on_grid = false;
                best_neighbour(
                    lat,
                    e,
                    &xb[8 * k..8 * k + 8],
                    &w[8 * k..8 * k + 8],
                    scale,
                    xx,
                )
            };
        }
        if !all_on_grid {
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for k in 0..4 {
                let p = lat.point(index[k]);
                for j in 0..8 {
                    let (wj, q) = (w[8 * k + j], xx[((p[j] - 1) / 2) as usize]);
                    sumqx += wj * q * xb[8 * k + j];
                    sumq2 += wj * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        for k in 0..4 {
            out[2 + 4 * ib + k] = (index[k] & 255) as u8;
            qh[ib] |= ((index[k] >> 8) as u16) << (3 * k);
        }
        scales[ib] = scale;
        shifts[ib] = best_shift;
        max_scale = max_scale.max(scale);
    }
    if max_scale > 0.0 {
        let d = max_scale / 15.0;
        // llama.cpp's fudge factor.
        put_f16(out, 0, d * 1.125);
        let id = 1.0 / d;
        for ib in 0..8 {
            let mut l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7) as u16;
            if shifts[ib] == -1 {
                l |= 8;
            }
            qh[ib] |= l << 12;
        }
    }
    for (o, h) in out[34..50].chunks_exact_mut(2).zip(qh) {
        o.copy_from_slice(&h.to_le_bytes());
    }
}

/// One super-block of IQ1_M: per 16 values a 3-bit scale, per 8 an 11-bit grid index and the
/// shift's sign; the split searched as for IQ1_S, with the two halves' shifts chosen apart, and
/// the super-block scale refit over all 256 values at the end. Without importances the weights
/// are `x²`.
pub(crate) fn quantize_iq1m_block(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = lattice();
    const BS: usize = 16;
    const MASKS: [u8; 4] = [0x00, 0x80, 0x08, 0x88];
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let weights = |ib: usize| -> [f32; BS] {
        let xb = &x[BS * ib..BS * ib + BS];
        std::array::from_fn(|i| match qw {
            Some(q) => q[BS * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt(),
            None => xb[i] * xb[i],
        })
    };
    // The shift of group k (0 or 1) under split choice `best_k` (0..4).
    let xx_of = |best_k: usize, k: usize| {
        let plus = if k == 0 {
            best_k < 2
        } else {
            best_k.is_multiple_of(2)
        };
        if plus {
            &X_P
        } else {
            &X_M
        }
    };
    let mut scales = [0.0f32; 16];
    let mut shifts = [0usize; 16];
    let mut max_scale = 0.0f32;
    out.fill(0);
    let (qs, rest) = out.split_at_mut(32);
    let (qh, sc_bytes) = rest.split_at_mut(16);
    for ib in 0..16 {
        let xb = &x[BS * ib..BS * ib + BS];
        let w = weights(ib);
        let max = xb.iter().fold(xb[0].abs(), |m, v| m.max(v.abs()));
        if max < 1e-7 {
            continue;
        }
        let idx = ascending::<BS>(xb);
        let (mut px, mut pw) = ([[0.0f32; BS + 1]; 2], [[0.0f32; BS + 1]; 2]);
        for j in 0..BS {
            let i = idx[j];
            let h = usize::from(i >= BS / 2);
            px[h][j + 1] = px[h][j] + w[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + w[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        let (txs, tws) = ([px[0][BS], px[1][BS]], [pw[0][BS], pw[1][BS]]);
        let (p2, m2) = (X_P[2], X_M[2]);
        let cp1 = X_P[0] * X_P[0] - X_P[1] * X_P[1];
        let cp2 = X_P[1] * X_P[1] - X_P[2] * X_P[2];
        let cm1 = X_M[0] * X_M[0] - X_M[1] * X_M[1];
        let cm2 = X_M[1] * X_M[1] - X_M[2] * X_M[2];
        let (mut best_score, mut scale) = (-f32::MAX, max);
        let mut best = None;
        for i1 in 0..=BS {
            for i2 in i1..=BS {
                let (mut qx_p, mut qx_m, mut q2_p, mut q2_m) =
                    ([0.0f32; 2], [0.0; 2], [0.0; 2], [0.0; 2]);
                for h in 0..2 {
                    let sx = px[h][i1] + px[h][i2];
                    qx_p[h] = txs[h] * p2 - sx;
                    qx_m[h] = txs[h] * m2 - sx;
                    q2_p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2_m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                let sumqx = [
                    qx_p[0] + qx_p[1],
                    qx_p[0] + qx_m[1],
                    qx_m[0] + qx_p[1],
                    qx_m[0] + qx_m[1],
                ];
                let sumq2 = [
                    q2_p[0] + q2_p[1],
                    q2_p[0] + q2_m[1],
                    q2_m[0] + q2_p[1],
                    q2_m[0] + q2_m[1],
                ];
                for k in 0..4 {
                    if sumq2[k] > 0.0 && sumqx[k] * sumqx[k] > best_score * sumq2[k] {
                        scale = sumqx[k] / sumq2[k];
                        best_score = scale * sumqx[k];
                        best = Some((i1, i2, k));
                    }
                }
            }
        }
        let Some((i1, i2, mut best_k)) = best else {
            continue;
        };
        let mut l = split_levels(&idx, i1, i2);
        if scale < 0.0 {
            l = l.map(|v| 2 - v);
            scale = -scale;
            best_k = 3 - best_k;
        }
        let mut index = [0usize; 2];
        let mut all_on_grid = true;
        for k in 0..2 {
            let e = lat.lookup(&l[8 * k..8 * k + 8]);
            index[k] = if e >= 0 {
                e as usize
            } else {
                all_on_grid = false;
                let xx = xx_of(best_k, k);
                best_neighbour(
                    lat,
                    e,
                    &xb[8 * k..8 * k + 8],
                    &w[8 * k..8 * k + 8],
                    scale,
                    xx,
                )
            };
        }
        if !all_on_grid {
            let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
            for k in 0..2 {
                let (xx, p) = (xx_of(best_k, k), lat.point(index[k]));
                for j in 0..8 {
                    let (wj, q) = (w[8 * k + j], xx[((p[j] - 1) / 2) as usize]);
                    sumqx += wj * q * xb[8 * k + j];
                    sumq2 += wj * q * q;
                }
            }
            if sumqx > 0.0 && sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        qs[2 * ib] = (index[0] & 255) as u8;
        qs[2 * ib + 1] = (index[1] & 255) as u8;
        qh[ib] = ((index[0] >> 8) | ((index[1] >> 8) << 4)) as u8;
        scales[ib] = scale;
        shifts[ib] = best_k;
        max_scale = max_scale.max(scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let mut sc = [0u16; 4];
    let mut d = max_scale / 15.0;
    let id = 1.0 / d;
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for ib in 0..16 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 7);
        sc[ib / 4] |= (l as u16) << (3 * (ib % 4));
        qh[ib] |= MASKS[shifts[ib]];
        let (xb, w) = (&x[BS * ib..BS * ib + BS], weights(ib));
        for k in 0..2 {
            let xx = xx_of(shifts[ib], k);
            let g = qs[2 * ib + k] as usize + (((qh[ib] as usize) << (8 - 4 * k)) & 0x700);
            let p = lat.point(g);
            for j in 0..8 {
                let q = xx[((p[j] - 1) / 2) as usize] * (2 * l + 1) as f32;
                sumqx += w[8 * k + j] * q * xb[8 * k + j];
                sumq2 += w[8 * k + j] * q * q;
            }
        }
    }
    if sumq2 > 0.0 {
        d = sumqx / sumq2;
    }
    // llama.cpp's fudge factor; the f16 goes into the scale words' top nibbles.
    let bits = half::f16::from_f32(d * 1.1125).to_bits();
    sc[0] |= (bits & 0x000f) << 12;
    sc[1] |= (bits & 0x00f0) << 8;
    sc[2] |= (bits & 0x0f00) << 4;
    sc[3] |= bits & 0xf000;
    for (o, s) in sc_bytes.chunks_exact_mut(2).zip(sc) {
        o.copy_from_slice(&s.to_le_bytes());
    }
}
