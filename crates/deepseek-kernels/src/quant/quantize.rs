//! Quantization of f32 rows into the GGML formats (for `deepseek quantize`).

use super::format::{f16_at, pack_scale_min_k4, put_f16, QuantType, QK_K};

/// Quantizes `x` (a multiple of the block size) into `out` (`row_bytes(x.len())` bytes).
/// The 32-wide formats round as llama.cpp's reference quantizers do (byte-identical to them),
/// IQ4_NL/IQ4_XS and the lattice types search as its quantizers do ([`super::iq4_quantize`],
/// [`super::iq_quantize`]); the K-quants use a simpler min/max search than llama.cpp's, in the
/// same format.
pub fn quantize_row(t: QuantType, x: &[f32], out: &mut [u8]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(
        x.len() % be,
        0,
        "{} needs rows that are a multiple of {be}",
        t.name()
    );
    assert_eq!(out.len(), x.len() / be * bb);
    for (xb, ob) in x.chunks_exact(be).zip(out.chunks_exact_mut(bb)) {
        match t {
            QuantType::Q8_0 => {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                for (o, &v) in ob[2..].iter_mut().zip(xb) {
                    *o = (v * id).round() as i8 as u8;
                }
            }
            QuantType::Q4_0 | QuantType::Q5_0 => {
                // The value of largest magnitude maps to -8 (-16), keeping its sign.
                let (nmax, levels) = if t == QuantType::Q4_0 {
                    (-8.0, 15)
                } else {
                    (-16.0, 31)
                };
                let max = xb
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / nmax;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                let off = -nmax + 0.5;
                let q = |v: f32| ((v * id + off) as i32).min(levels) as u8;
                if t == QuantType::Q4_0 {
                    for j in 0..16 {
                        ob[2 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                    }
                } else {
                    let mut qh = 0u32;
                    for j in 0..16 {
                        let (a, b) = (q(xb[j]), q(xb[j + 16]));
                        ob[6 + j] = (a & 0xF) | ((b & 0xF) << 4);
                        qh |= (((a & 0x10) >> 4) as u32) << j;
                        qh |= (((b & 0x10) >> 4) as u32) << (j + 16);
                    }
                    ob[2..6].copy_from_slice(&qh.to_le_bytes());
                }
            }
            QuantType::Q4_1 => {
                let min = xb.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = xb.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                put_f16(ob, 2, min);
                let q = |v: f32| (((v - min) * id + 0.5) as i32).min(15) as u8;
                for j in 0..16 {
                    ob[4 + j] = q(xb[j]) | (q(xb[j + 16]) << 4);
                }
            }
            QuantType::Q5_1 => {
                let min = xb.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = xb.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / 31.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                put_f16(ob, 0, d);
                put_f16(ob, 2, min);
                let q = |v: f32| (((v - min) * id + 0.5) as i32).min(31) as u8;
                let mut qh = 0u32;
                for j in 0..16 {
                    let (a, b) = (q(xb[j]), q(xb[j + 16]));
                    ob[8 + j] = (a & 0xF) | ((b & 0xF) << 4);
                    qh |= ((a >> 4) as u32) << j | ((b >> 4) as u32) << (j + 16);
                }
                ob[4..8].copy_from_slice(&qh.to_le_bytes());
            }
            QuantType::Q2K => quantize_q2k(xb, ob),
            QuantType::Q3K => quantize_q3k(xb, ob),
            QuantType::Q4K | QuantType::Q5K => quantize_k_minmax(t, xb, ob),
            QuantType::Q6K => quantize_q6k(xb, ob),
            // llama.cpp's search, weighted by x² without an importance matrix.
            QuantType::IQ4NL | QuantType::IQ4XS => {
                super::iq4_quantize::quantize_row_iq4(t, xb, None, ob)
            }
            // Weighted by x² without an importance matrix, as llama.cpp does.
            QuantType::IQ3XXS | QuantType::IQ2S | QuantType::IQ3S | QuantType::IQ1M => {
                super::iq_quantize::quantize_row_lattice(t, xb, None, ob)
            }
            t => unreachable!(
                "{} is not written without an importance matrix (QuantType::can_quantize, \
                 iq_quantize::needs_imatrix)",
                t.name()
            ),
        }
    }
}

/// Q2_K: per 16-value sub-block an affine (scale, min) fit by min/max over 0..3, the scales
/// and mins quantized to 4 bits against the super-block's `d` and `dmin`.
pub(crate) fn quantize_q2k(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    let mut mn = [0.0f32; 16];
    for j in 0..16 {
        let s = &x[j * 16..(j + 1) * 16];
        let lo = s.iter().fold(0.0f32, |m, &v| m.min(v));
        let hi = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        sc[j] = (hi - lo) / 3.0;
        mn[j] = -lo;
    }
    pack_q2k(x, &sc, &mn, out);
}

/// Q2_K from its 16 sub-block scales and (positive) mins: both coded to 4 bits against the
/// super-block's f16 `d` and `dmin`, each value rounded to the nearest of its 4 levels.
pub(crate) fn pack_q2k(x: &[f32], sc: &[f32; 16], mn: &[f32; 16], out: &mut [u8]) {
    put_f16(out, 80, sc.iter().fold(0.0f32, |m, &v| m.max(v)) / 15.0);
    put_f16(out, 82, mn.iter().fold(0.0f32, |m, &v| m.max(v)) / 15.0);
    let (d, dmin) = (f16_at(out, 80), f16_at(out, 82));
    let code = |v: f32, unit: f32| {
        if unit > 0.0 {
            ((v / unit).round() as i32).clamp(0, 15) as u8
        } else {
            0
        }
    };
    let mut q = [0u8; QK_K];
    for j in 0..16 {
        let (ls, lm) = (code(sc[j], d), code(mn[j], dmin));
        out[j] = ls | (lm << 4);
        let (dj, mj) = (d * ls as f32, dmin * lm as f32);
        let id = if dj > 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..16 {
            q[j * 16 + l] = (((x[j * 16 + l] + mj) * id).round() as i32).clamp(0, 3) as u8;
        }
    }
    let qs = &mut out[16..80];
    qs.fill(0);
    for (i, &v) in q.iter().enumerate() {
        let (n, j, l) = (i / 128, (i / 32) % 4, i % 32);
        qs[n * 32 + l] |= v << (2 * j);
    }
}

/// Q3_K: per 16-value sub-block a signed scale (the value of largest magnitude maps to -4 or
/// to +3, whichever fits the sub-block with the smaller squared error: with only 8 levels the
/// lost level on one side matters), the 16 scales quantized to 6 bits (-32..31) against the
/// super-block's `d`.
pub(crate) fn quantize_q3k(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    for (j, s) in sc.iter_mut().enumerate() {
        let sub = &x[j * 16..(j + 1) * 16];
        let max = sub
            .iter()
            .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let err = |scale: f32| -> f32 {
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            sub.iter()
                .map(|&v| {
                    let q = (v * inv).round().clamp(-4.0, 3.0);
                    (v - q * scale).powi(2)
                })
                .sum()
        };
        let (a, b) = (max / -4.0, max / 3.0);
        *s = if err(b) < err(a) { b } else { a };
    }
    pack_q3k(x, &sc, out);
}

/// Q3_K from its 16 signed sub-block scales: coded to 6 bits against the super-block's f16
/// `d`, each value rounded to the nearest of its 8 levels.
pub(crate) fn pack_q3k(x: &[f32], sc: &[f32; 16], out: &mut [u8]) {
    let max_sc = sc
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    put_f16(out, 108, max_sc / -32.0);
    let d = f16_at(out, 108);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (hm, rest) = out.split_at_mut(32);
    let (qs, scales) = rest.split_at_mut(64);
    hm.fill(0);
    qs.fill(0);
    scales[..12].fill(0);
    for j in 0..16 {
        let ls = ((sc[j] * id).round() as i32).clamp(-32, 31);
        let stored = (ls + 32) as u8;
        scales[j % 8] |= (stored & 0xF) << (4 * (j / 8));
        scales[8 + j % 4] |= (stored >> 4) << (2 * (j / 4));
        let dj = d * ls as f32;
        let idj = if dj != 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..16 {
            let i = j * 16 + l;
            let u = ((x[i] * idj).round() as i32).clamp(-4, 3) + 4; // 0..7
            let (n, b, pos) = (i / 128, (i / 32) % 4, i % 32);
            qs[n * 32 + pos] |= ((u & 3) as u8) << (2 * b);
            hm[pos] |= ((u >> 2) as u8) << (i / 32);
        }
    }
}

/// Q4_K / Q5_K: per 32-value sub-block an affine (scale, min) fit by min/max, then the eight
/// scales and mins quantized to 6 bits against the super-block's `d` and `dmin`.
pub(crate) fn quantize_k_minmax(t: QuantType, x: &[f32], out: &mut [u8]) {
    let levels = if t == QuantType::Q4K { 15.0 } else { 31.0 };
    let mut sc = [0.0f32; 8];
    let mut mn = [0.0f32; 8];
    for j in 0..8 {
        let s = &x[j * 32..(j + 1) * 32];
        let lo = s.iter().fold(0.0f32, |m, &v| m.min(v)); // min ≤ 0: stored as a positive min
        let hi = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        sc[j] = (hi - lo) / levels;
        mn[j] = -lo;
    }
    pack_k_minmax(t, x, &sc, &mn, out);
}

/// Q4_K / Q5_K from the eight sub-block scales and (positive) mins: both coded to 6 bits
/// against the super-block's f16 `d` and `dmin`, each value rounded to its nearest level.
pub(crate) fn pack_k_minmax(t: QuantType, x: &[f32], sc: &[f32; 8], mn: &[f32; 8], out: &mut [u8]) {
    let levels = if t == QuantType::Q4K { 15.0 } else { 31.0 };
    let max_sc = sc.iter().fold(0.0f32, |m, &v| m.max(v));
    let max_mn = mn.iter().fold(0.0f32, |m, &v| m.max(v));
    let d = max_sc / 63.0;
    let dmin = max_mn / 63.0;
    put_f16(out, 0, d);
    put_f16(out, 2, dmin);
    // Use the f16-rounded super scales so the 6-bit codes match what is decoded.
    let (d, dmin) = (f16_at(out, 0), f16_at(out, 2));
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = if d > 0.0 {
            ((sc[j] / d).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
        lm[j] = if dmin > 0.0 {
            ((mn[j] / dmin).round() as i32).clamp(0, 63) as u8
        } else {
            0
        };
    }
    out[4..16].copy_from_slice(&pack_scale_min_k4(&ls, &lm));
    let mut q = [0u8; QK_K];
    for j in 0..8 {
        let (dj, mj) = (d * ls[j] as f32, dmin * lm[j] as f32);
        let id = if dj > 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..32 {
            let v = ((x[j * 32 + l] + mj) * id).round() as i32;
            q[j * 32 + l] = v.clamp(0, levels as i32) as u8;
        }
    }
    pack_k_quants(t, &q, out);
}

/// Q4_K / Q5_K: the 256 codes `q` into the block after its scales.
pub(crate) fn pack_k_quants(t: QuantType, q: &[u8; QK_K], out: &mut [u8]) {
    if t == QuantType::Q4K {
        let qs = &mut out[16..144];
        for c in 0..4 {
            for l in 0..32 {
                qs[c * 32 + l] = q[c * 64 + l] | (q[c * 64 + 32 + l] << 4);
            }
        }
    } else {
        let (qh, qs) = out[16..176].split_at_mut(32);
        qh.fill(0);
        for c in 0..4 {
            for l in 0..32 {
                let (a, b) = (q[c * 64 + l], q[c * 64 + 32 + l]);
                qs[c * 32 + l] = (a & 0xF) | ((b & 0xF) << 4);
                qh[l] |= ((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1));
            }
        }
    }
}

/// Q6_K: per 16-value sub-block a signed scale (largest magnitude maps to -32), the 16 scales
/// quantized to int8 against the super-block's `d`.
pub(crate) fn quantize_q6k(x: &[f32], out: &mut [u8]) {
    let mut sc = [0.0f32; 16];
    for (j, s) in sc.iter_mut().enumerate() {
        let max =
            x[j * 16..(j + 1) * 16]
                .iter()
                .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        *s = max / -32.0;
    }
    pack_q6k_scaled(x, &sc, out);
}

/// Q6_K from its 16 signed sub-block scales: coded to int8 against the super-block's f16 `d`,
/// each value rounded to the nearest of its 64 levels.
pub(crate) fn pack_q6k_scaled(x: &[f32], sc: &[f32; 16], out: &mut [u8]) {
    let max_sc = sc
        .iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max_sc / -128.0;
    out[208..210].copy_from_slice(&half::f16::from_f32(d).to_bits().to_le_bytes());
    let d = f16_at(out, 208);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut ls = [0i8; 16];
    for j in 0..16 {
        ls[j] = ((sc[j] * id).round() as i32).clamp(-128, 127) as i8;
    }
    let mut q = [0u8; QK_K];
    for j in 0..16 {
        let dj = d * ls[j] as f32;
        let idj = if dj != 0.0 { 1.0 / dj } else { 0.0 };
        for l in 0..16 {
            let v = (x[j * 16 + l] * idj).round() as i32;
            q[j * 16 + l] = (v.clamp(-32, 31) + 32) as u8;
        }
    }
    pack_q6k(&q, &ls, out);
}

/// Q6_K: the 256 codes `q` (0..64) and the 16 sub-block scales into the block (before `d`).
pub(crate) fn pack_q6k(q: &[u8; QK_K], ls: &[i8; 16], out: &mut [u8]) {
    let (ql, rest) = out.split_at_mut(128);
    let (qh, scales) = rest.split_at_mut(64);
    for (o, &s) in scales[..16].iter_mut().zip(ls) {
        *o = s as u8;
    }
    for n in 0..2 {
        let (ql, qh, q) = (&mut ql[n * 64..], &mut qh[n * 32..], &q[n * 128..]);
        for l in 0..32 {
            let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
            ql[l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}
