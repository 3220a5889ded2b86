//! Writing the lattice i-quants IQ2_XXS and IQ3_XXS: llama.cpp's search
//! (`quantize_row_iq2_xxs_impl`, `quantize_row_iq3_xxs_impl` in ggml-quants.c), ported step by
//! step so that the files match llama-quantize's.
//!
//! Per 32 values: signs come out first (the eighth of each 8 made even by flipping the least
//! important value's), then a scale is searched: for each candidate, every group of 8 (IQ2) or
//! 4 (IQ3) magnitudes rounds to odd levels `2l + 1`; a group that is not a grid point takes the
//! best of its precomputed nearest grid points ([`Lattice`]), and the candidate with the least
//! importance-weighted error wins. The super-block keeps the largest scale in f16 and 4 bits
//! per 32 values.

// The loops follow ggml-quants.c index by index, so that the arithmetic (and its rounding)
// is the same.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use super::format::{put_f16, QuantType, QK_K};
use super::iq_tables::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID};
use super::lattice::{level_indices, nearest_int, Lattice};

fn iq2xxs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(level_indices(&IQ2XXS_GRID, &[8, 25, 43]), 2, 43692, 2))
}

fn iq2xs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(level_indices(&IQ2XS_GRID, &[8, 25, 43]), 2, 43692, 2))
}

fn iq2s_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| Lattice::new(level_indices(&IQ2S_GRID, &[8, 25, 43]), 2, 43692, 1))
}

fn iq3s_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    let levels = [1, 3, 5, 7, 9, 11, 13, 15];
    L.get_or_init(|| Lattice::new(level_indices(&IQ3S_GRID, &levels), 3, 4096, 3))
}

fn iq3xxs_lattice() -> &'static Lattice {
    static L: OnceLock<Lattice> = OnceLock::new();
    L.get_or_init(|| {
        let levels = [4, 12, 20, 28, 36, 44, 52, 62];
        Lattice::new(level_indices(&IQ3XXS_GRID, &levels), 3, 4096, 2)
    })
}

/// ggml's `make_qp_quants`: a non-negative scale for `x ≥ 0` with levels 0..=nmax, searched
/// around `nmax / max` then refined value by value. Also the K-quants' scale and min codes.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], l: &mut [u8], w: &[f32]) -> f32 {
    let max = x.iter().fold(0.0f32, |m, &v| m.max(v));
    if max < 1e-15 {
        l.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (o, &v) in l.iter_mut().zip(x) {
        *o = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0.0f32;
    for i in 0..x.len() {
        let diff = x[i] - scale * l[i] as f32;
        best_mse += w[i] * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0.0f32;
        for i in 0..x.len() {
            let q = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * q as f32;
            mse += w[i] * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..x.len() {
        let q = nearest_int(iscale * x[i]).min(nmax);
        l[i] = q as u8;
        sumlx += w[i] * x[i] * q as f32;
        suml2 += w[i] * q as f32 * q as f32;
    }
    for _ in 0..5 {
        let mut changed = 0;
        for i in 0..x.len() {
            let li = l[i] as f32;
            let mut slx = sumlx - w[i] * x[i] * li;
            let mut sl2 = suml2 - w[i] * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != l[i] as i32 {
                    slx += w[i] * x[i] * new_l as f32;
                    sl2 += w[i] * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l as u8;
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
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Magnitudes of 32 values and their 7-bit sign patterns per 8: where a group has an odd
/// count of negatives, the value of least `w · x²` is taken with the wrong sign.
fn signs_and_magnitudes(xb: &[f32], w: &[f32], xval: &mut [f32]) -> [u8; 4] {
    std::array::from_fn(|k| {
        if 8 * k >= xb.len() {
            return 0;
        }
        let (mut flips, mut s) = (0, 0u8);
        for i in 0..8 {
            let v = xb[8 * k + i];
            if v >= 0.0 {
                xval[8 * k + i] = v;
            } else {
                xval[8 * k + i] = -v;
                flips += 1;
                s |= 1 << i;
            }
        }
        if flips % 2 == 1 {
            let key = |i: usize| w[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
            let mut imin = 0;
            for i in 1..8 {
                if key(i) < key(imin) {
                    imin = i;
                }
            }
            xval[8 * k + imin] = -xval[8 * k + imin];
            s ^= 1 << imin;
        }
        s & 127
    })
}

/// Σ w·x·q and Σ w·q² for odd levels `q = 2l + 1`.
fn fit_sums(xval: &[f32], w: &[f32], l: &[i8]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for i in 0..xval.len() {
        let q = (2 * l[i] + 1) as f32;
        sumqx += w[i] * xval[i] * q;
        sumq2 += w[i] * q * q;
    }
    (sumqx, sumq2)
}

/// Rounds group `k` of `xval` at inverse scale `id` to level indices (0..kmax), replaced by
/// its best neighbour at `scale` if off the grid. Returns whether it was on it.
#[allow(clippy::too_many_arguments)]
fn round_group(
    lat: &Lattice,
    xval: &[f32],
    waux: &[f32],
    id: f32,
    scale: f32,
    kmax: i32,
    k: usize,
    l: &mut [i8],
) -> bool {
    let g = k * lat.dim..(k + 1) * lat.dim;
    for i in g.clone() {
        l[i] = nearest_int(0.5 * (id * xval[i] - 1.0)).clamp(0, kmax - 1) as i8;
    }
    let e = lat.lookup(&l[g.clone()]);
    if e < 0 {
        lat.best_neighbour(e, &xval[g.clone()], &waux[g.clone()], scale, &mut l[g]);
    }
    e >= 0
}

/// [`round_group`] for every group of `xval`.
fn round_groups(
    lat: &Lattice,
    xval: &[f32],
    waux: &[f32],
    id: f32,
    scale: f32,
    kmax: i32,
    l: &mut [i8],
) {
    for k in 0..xval.len() / lat.dim {
        round_group(lat, xval, waux, id, scale, kmax, k, l);
    }
}

/// The scale search IQ2_XS, IQ2_S and IQ3_S share: for `is` in `-steps..=steps`, candidate
/// inverse scale `(2·kmax − 1 + is·step) / max`, every group rounded (off-grid ones to their best
/// neighbour) and refit; then the winner's off-grid groups (or, with `reround_all`, all groups)
/// rounded again at its scale and refit. `on_grid0` is what the groups count as before any
/// candidate wins. Returns the scale; `l` holds the level indices.
#[allow(clippy::too_many_arguments)]
fn search_scale(
    lat: &Lattice,
    kmax: i32,
    (steps, step): (i32, f32),
    on_grid0: bool,
    reround_all: bool,
    xval: &[f32],
    w: &[f32],
    waux: &[f32],
    l: &mut [i8],
) -> f32 {
    let n = xval.len();
    let max = xval.iter().fold(xval[0], |m, &v| m.max(v));
    let round = |id: f32, scale: f32, k: usize, l: &mut [i8]| {
        round_group(lat, xval, waux, id, scale, kmax, k, l)
    };
    let groups = n / lat.dim;
    let mut best = 0.0f32;
    let mut scale = max / (2 * kmax - 1) as f32;
    let mut on_grid = [on_grid0; 8];
    let mut laux = [0i8; 32];
    for is in -steps..=steps {
        let id = ((2 * kmax - 1) as f32 + is as f32 * step) / max;
        let mut on = [true; 8];
        for (k, o) in on.iter_mut().enumerate().take(groups) {
            *o = round(id, 1.0 / id, k, &mut laux[..n]);
        }
        let (sumqx, sumq2) = fit_sums(xval, w, &laux[..n]);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            l.copy_from_slice(&laux[..n]);
            on_grid = on;
        }
    }
    if on_grid[..groups].contains(&false) && scale > 0.0 {
        let id = 1.0 / scale;
        for k in 0..groups {
            if reround_all || !on_grid[k] {
                round(id, scale, k, l);
            }
        }
        let (sumqx, sumq2) = fit_sums(xval, w, l);
        if sumq2 > 0.0 {
            scale = sumqx / sumq2;
        }
    }
    scale
}

/// Magnitudes of `xb` and one sign byte per 8 values (bit `i` set for a negative value).
fn explicit_signs(xb: &[f32], xval: &mut [f32]) -> [u8; 4] {
    let mut signs = [0u8; 4];
    for (i, (&v, o)) in xb.iter().zip(xval.iter_mut()).enumerate() {
        *o = v.abs();
        if v < 0.0 {
            signs[i / 8] |= 1 << (i % 8);
        }
    }
    signs
}

/// The 4-bit odd-scale code of each sub-block scale against `max_scale / 31`.
fn scale_codes<const N: usize>(scales: &[f32; N], d: f32) -> [u8; N] {
    let id = 1.0 / d;
    scales.map(|s| nearest_int(0.5 * (id * s - 1.0)).clamp(0, 15) as u8)
}

/// One super-block of IQ2_XS (importances required, as llama.cpp requires them): per 16
/// values a scale, per 8 a 9-bit grid index and 7 sign bits.
fn quantize_iq2xs_block(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let lat = iq2xs_lattice();
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let mut q2 = [0u16; 32];
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    for ib in 0..16 {
        let xb = &x[16 * ib..16 * ib + 16];
        let w: [f32; 16] =
            std::array::from_fn(|i| qw[16 * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt());
        let waux = w.map(f32::sqrt);
        let mut xval = [0.0f32; 16];
        let signs = signs_and_magnitudes(xb, &w, &mut xval);
        let max = xval.iter().fold(xval[0], |m, &v| m.max(v));
        if max < 1e-15 {
            continue;
        }
        let mut l = [0i8; 16];
        let mut scale = search_scale(
            lat,
            3,
            (9, 0.1),
            true,
            false,
            &xval[..16],
            &w[..16],
            &waux[..16],
            &mut l,
        );
        let mut signs = [signs[0], signs[1]];
        if scale < 0.0 {
            scale = -scale;
            signs = signs.map(|s| !s & 127);
        }
        for k in 0..2 {
            let idx = lat.lookup(&l[8 * k..8 * k + 8]);
            assert!(idx >= 0, "IQ2_XS: a group left the grid");
            q2[2 * ib + k] = idx as u16 | (signs[k] as u16) << 9;
        }
        scales[ib] = scale;
        max_scale = max_scale.max(scale);
    }
    out.fill(0);
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    put_f16(out, 0, d);
    for (o, q) in out[2..66].chunks_exact_mut(2).zip(q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
    let codes = scale_codes(&scales, d);
    for ib in 0..8 {
        out[66 + ib] = codes[2 * ib] | codes[2 * ib + 1] << 4;
    }
}

/// One super-block of IQ2_S: per 16 values a scale, per 8 a 10-bit grid index and a sign byte.
fn quantize_iq2s_block(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq2s_lattice();
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let mut scales = [0.0f32; 16];
    let mut max_scale = 0.0f32;
    out.fill(0);
    for ib in 0..16 {
        let xb = &x[16 * ib..16 * ib + 16];
        let w: [f32; 16] = std::array::from_fn(|i| match qw {
            Some(q) => q[16 * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt(),
            None => 0.25 * sigma2 + xb[i] * xb[i],
        });
        let waux = w.map(f32::sqrt);
        let mut xval = [0.0f32; 16];
        let s4 = explicit_signs(xb, &mut xval);
        let max = xval.iter().fold(xval[0], |m, &v| m.max(v));
        if max < 1e-8 {
            continue;
        }
        let mut l = [0i8; 16];
        let mut scale = search_scale(lat, 3, (9, 0.1), true, false, &xval, &w, &waux, &mut l);
        let mut signs = [s4[0], s4[1]];
        if scale < 0.0 {
            scale = -scale;
            signs = signs.map(|s| !s);
        }
        for k in 0..2 {
            let idx = lat.lookup(&l[8 * k..8 * k + 8]);
            assert!(idx >= 0, "IQ2_S: a group left the grid");
            let i8 = 2 * ib + k;
            out[2 + i8] = (idx & 255) as u8;
            out[66 + i8 / 4] |= ((idx >> 8) as u8) << (2 * (i8 % 4));
            out[34 + i8] = signs[k];
        }
        scales[ib] = scale;
        max_scale = max_scale.max(scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    // llama.cpp's fudge factor.
    put_f16(out, 0, d * 0.9875);
    let codes = scale_codes(&scales, d);
    for ib in 0..8 {
        out[74 + ib] = codes[2 * ib] | codes[2 * ib + 1] << 4;
    }
}

/// One super-block of IQ3_S: per 32 values a scale, per 4 a 9-bit grid index, a sign bit per
/// value.
fn quantize_iq3s_block(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq3s_lattice();
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    out.fill(0);
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let w: [f32; 32] = std::array::from_fn(|i| match qw {
            Some(q) => q[32 * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt(),
            None => xb[i] * xb[i],
        });
        let waux = w.map(f32::sqrt);
        let mut xval = [0.0f32; 32];
        let mut signs = explicit_signs(xb, &mut xval);
        let max = xval.iter().fold(xval[0], |m, &v| m.max(v));
        if max == 0.0 {
            continue;
        }
        let mut l = [0i8; 32];
        let mut scale = search_scale(lat, 8, (9, 0.2), false, true, &xval, &w, &waux, &mut l);
        if scale < 0.0 {
            scale = -scale;
            signs = signs.map(|s| !s);
        }
        for k in 0..8 {
            let idx = lat.lookup(&l[4 * k..4 * k + 4]);
            assert!(idx >= 0, "IQ3_S: a group left the grid");
            out[2 + 8 * ib + k] = (idx & 255) as u8;
            out[66 + ib] |= ((idx >> 8) as u8) << k;
        }
        out[74 + 4 * ib..78 + 4 * ib].copy_from_slice(&signs);
        scales[ib] = scale;
        max_scale = max_scale.max(scale);
    }
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    // llama.cpp's fudge factor.
    put_f16(out, 0, d * 1.033);
    let codes = scale_codes(&scales, d);
    for ib in 0..4 {
        out[106 + ib] = codes[2 * ib] | codes[2 * ib + 1] << 4;
    }
}

/// One super-block of IQ2_XXS (`imatrix` required, as llama.cpp requires it).
fn quantize_iq2xxs_block(x: &[f32], qw: &[f32], out: &mut [u8]) {
    let lat = iq2xxs_lattice();
    const KMAX: i32 = 3;
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let mut q2 = [0u32; 16];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let w: [f32; 32] =
            std::array::from_fn(|i| qw[32 * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt());
        let waux = w.map(f32::sqrt);
        let mut xval = [0.0f32; 32];
        let mut signs = signs_and_magnitudes(xb, &w, &mut xval);
        let max = xval.iter().fold(xval[0], |m, &v| m.max(v));
        let mut l = [0i8; 32];
        if max < 1e-15 {
            continue;
        }
        let mut lq = [0u8; 32];
        let mut scale = make_qp_quants(KMAX + 1, &xval, &mut lq, &w);
        let eff_max = scale * KMAX as f32;
        if eff_max <= 0.0 {
            continue;
        }
        let mut best = 0.0f32;
        let mut laux = [0i8; 32];
        for is in -6..=6 {
            let id = (2.0 * KMAX as f32 - 1.0 + is as f32 * 0.1) / eff_max;
            round_groups(lat, &xval, &waux, id, 1.0 / id, KMAX, &mut laux);
            let (sumqx, sumq2) = fit_sums(&xval, &w, &laux);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                l = laux;
            }
        }
        if scale > 0.0 {
            round_groups(lat, &xval, &waux, 1.0 / scale, scale, KMAX, &mut l);
            let (sumqx, sumq2) = fit_sums(&xval, &w, &l);
            if sumq2 > 0.0 {
                scale = sumqx / sumq2;
            }
        }
        if scale < 0.0 {
            scale = -scale;
            signs = signs.map(|s| !s & 127);
        }
        for k in 0..4 {
            let idx = lat.lookup(&l[8 * k..8 * k + 8]);
            assert!(idx >= 0, "IQ2_XXS: a group left the grid");
            q2[2 * ib] |= (idx as u32) << (8 * k);
            q2[2 * ib + 1] |= (signs[k] as u32) << (7 * k);
        }
        scales[ib] = scale;
        max_scale = max_scale.max(scale);
    }
    out.fill(0);
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    put_f16(out, 0, d);
    let id = 1.0 / d;
    for ib in 0..8 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
        q2[2 * ib + 1] |= (l as u32) << 28;
    }
    for (o, q) in out[2..].chunks_exact_mut(4).zip(q2) {
        o.copy_from_slice(&q.to_le_bytes());
    }
}

/// One super-block of IQ3_XXS; without an importance matrix the weights are `x²`.
fn quantize_iq3xxs_block(x: &[f32], qw: Option<&[f32]>, out: &mut [u8]) {
    let lat = iq3xxs_lattice();
    const KMAX: i32 = 8;
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / QK_K as f32;
    let mut q3 = [0u8; 64];
    let mut scales_signs = [0u32; 8];
    let mut scales = [0.0f32; 8];
    let mut max_scale = 0.0f32;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let w: [f32; 32] = std::array::from_fn(|i| match qw {
            Some(q) => q[32 * ib + i] * (sigma2 + xb[i] * xb[i]).sqrt(),
            None => xb[i] * xb[i],
        });
        let waux = w.map(f32::sqrt);
        let mut xval = [0.0f32; 32];
        let mut signs = signs_and_magnitudes(xb, &w, &mut xval);
        let max = xval.iter().fold(xval[0], |m, &v| m.max(v));
        let mut l = [0i8; 32];
        if max < 1e-8 {
            continue;
        }
        let mut scale = search_scale(lat, KMAX, (15, 0.2), true, false, &xval, &w, &waux, &mut l);
        if scale < 0.0 {
            scale = -scale;
            signs = signs.map(|s| !s & 127);
        }
        for k in 0..8 {
            let idx = lat.lookup(&l[4 * k..4 * k + 4]);
            assert!(idx >= 0, "IQ3_XXS: a group left the grid");
            q3[8 * ib + k] = idx as u8;
        }
        scales_signs[ib] = signs[0] as u32
            | (signs[1] as u32) << 7
            | (signs[2] as u32) << 14
            | (signs[3] as u32) << 21;
        scales[ib] = scale;
        max_scale = max_scale.max(scale);
    }
    out.fill(0);
    if max_scale == 0.0 {
        return;
    }
    let d = max_scale / 31.0;
    // llama.cpp's "small improvement via this fudge factor".
    put_f16(out, 0, d * 1.0125);
    let id = 1.0 / d;
    out[2..66].copy_from_slice(&q3);
    for ib in 0..8 {
        let l = nearest_int(0.5 * (id * scales[ib] - 1.0)).clamp(0, 15);
        let v = scales_signs[ib] | (l as u32) << 28;
        out[66 + 4 * ib..70 + 4 * ib].copy_from_slice(&v.to_le_bytes());
    }
}

/// Whether `t` is a lattice type this engine writes.
pub fn writes_lattice(t: QuantType) -> bool {
    QuantType::LATTICE_WRITTEN.contains(&t)
}

/// Whether writing `t` needs an importance matrix (llama.cpp refuses IQ2_XXS, IQ2_XS and
/// IQ1_S without one).
pub fn needs_imatrix(t: QuantType) -> bool {
    matches!(t, QuantType::IQ2XXS | QuantType::IQ2XS | QuantType::IQ1S)
}

/// Quantizes a row to a lattice type this engine writes, with per-column importances.
///
/// # Panics
/// If `t` is not one of them, or IQ2_XXS/IQ2_XS/IQ1_S is asked for without importances.
pub fn quantize_row_lattice(t: QuantType, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    assert!(x.len().is_multiple_of(QK_K) && out.len() == t.row_bytes(x.len()));
    let bb = t.block_bytes();
    for (i, (xb, ob)) in x
        .chunks_exact(QK_K)
        .zip(out.chunks_exact_mut(bb))
        .enumerate()
    {
        let qw = imatrix.map(|m| &m[i * QK_K..(i + 1) * QK_K]);
        match t {
            QuantType::IQ2XXS => {
                quantize_iq2xxs_block(xb, qw.expect("IQ2_XXS needs an importance matrix"), ob)
            }
            QuantType::IQ3XXS => quantize_iq3xxs_block(xb, qw, ob),
            QuantType::IQ2XS => {
                quantize_iq2xs_block(xb, qw.expect("IQ2_XS needs an importance matrix"), ob)
            }
            QuantType::IQ2S => quantize_iq2s_block(xb, qw, ob),
            QuantType::IQ3S => quantize_iq3s_block(xb, qw, ob),
            QuantType::IQ1M => super::iq1_quantize::quantize_iq1m_block(xb, qw, ob),
            QuantType::IQ1S => super::iq1_quantize::quantize_iq1s_block(
                xb,
                qw.expect("IQ1_S needs an importance matrix"),
                ob,
            ),
            t => panic!("{} is not written by quantize_row_lattice", t.name()),
        }
    }
}
