//! Quantization of f32 rows into the GGML formats (for `deepseek quantize`).

use super::format::{put_f16, QuantType};

/// Quantizes `x` (a multiple of the block size) into `out` (`row_bytes(x.len())` bytes).
/// The 32-wide formats round as llama.cpp's reference quantizers do, and IQ4_NL/IQ4_XS, the
/// lattice types and the K-quants search as its quantizers do ([`super::iq4_quantize`],
/// [`super::iq_quantize`], [`super::k_search`]): every block byte-identical to llama.cpp's.
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
            QuantType::Q2K => super::k_search::quantize_q2k(xb, None, ob),
            QuantType::Q3K => super::k_search::quantize_q3k(xb, None, ob),
            QuantType::Q4K | QuantType::Q5K => {
                super::k_search::quantize_q4k_q5k(t == QuantType::Q5K, xb, None, ob)
            }
            QuantType::Q6K => super::k_search::quantize_q6k(xb, None, ob),
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
