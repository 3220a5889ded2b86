//! Unpacking one block into integers (int8 values plus its scale and min), shared by
//! dequantization and the plain dot products.

use super::format::{f16_at, scale_min_k4, QuantType, IQ4_LEVELS, QK, QK_K};

/// Q4_0 / Q5_0 / Q8_0: the block's int8 values (offsets removed) and its scale; Q4_1 / Q5_1:
/// the unsigned values and the scale (the min is the block's second f16).
#[inline(always)]
pub(crate) fn unpack_32(t: QuantType, b: &[u8], q: &mut [i8; QK]) -> f32 {
    match t {
        QuantType::Q8_0 => {
            for (o, &v) in q.iter_mut().zip(&b[2..34]) {
                *o = v as i8;
            }
        }
        QuantType::Q4_0 => {
            let qs = &b[2..18];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i8 - 8;
                q[j + 16] = (qs[j] >> 4) as i8 - 8;
            }
        }
        QuantType::Q4_1 => {
            let qs = &b[4..20];
            for j in 0..16 {
                q[j] = (qs[j] & 0xF) as i8;
                q[j + 16] = (qs[j] >> 4) as i8;
            }
        }
        QuantType::Q5_0 | QuantType::Q5_1 => {
            // Q5_1: the same bits after a second f16 (the min), values unsigned.
            let (o, off) = if t == QuantType::Q5_0 {
                (2, 16)
            } else {
                (4, 0)
            };
            let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            let qs = &b[o + 4..o + 20];
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) as u8 & 0x10;
                let h1 = (qh >> (j + 12)) as u8 & 0x10;
                q[j] = ((qs[j] & 0xF) | h0) as i8 - off;
                q[j + 16] = ((qs[j] >> 4) | h1) as i8 - off;
            }
        }
        QuantType::IQ4NL => {
            let qs = &b[2..18];
            for j in 0..16 {
                q[j] = IQ4_LEVELS[(qs[j] & 0xF) as usize];
                q[j + 16] = IQ4_LEVELS[(qs[j] >> 4) as usize];
            }
        }
        _ => unreachable!("unpack_32 on a K-quant"),
    }
    f16_at(b, 0)
}

/// A K-quant super-block unpacked: 256 integer values, and per 32-value sub-block the factors
/// such that value = d_sub[i] * q - m_sub[i] (Q4_K, Q5_K). Q6_K and Q3_K have 16-value
/// sub-blocks with signed scales: value = d * scale16[i] * q; Q2_K has 16-value sub-blocks
/// with 4-bit scales and mins: value = d * scale16[i] * q - dmin * min16[i].
pub(crate) struct KBlock {
    pub(crate) q: [i8; QK_K],
    pub(crate) d: f32,
    pub(crate) dmin: f32,
    pub(crate) scales: [u8; 8],
    pub(crate) mins: [u8; 8],
    pub(crate) scales16: [i8; 16],
    pub(crate) mins16: [u8; 16],
}

/// Q3_K's sixteen 6-bit scales (stored + 32): low nibbles in bytes 0–7 (sub-blocks 0–7 low,
/// 8–15 high), the top two bits in bytes 8–11 (two bits per sub-block, `j % 4`'s byte at
/// shift `2 * (j / 4)`).
pub(crate) fn q3k_scale(j: usize, sc: &[u8]) -> i8 {
    let lo = (sc[j % 8] >> (4 * (j / 8))) & 0xF;
    let hi = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i8 - 32
}

#[inline(always)]
pub(crate) fn unpack_k(t: QuantType, b: &[u8], k: &mut KBlock) {
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            k.d = f16_at(b, 0);
            k.dmin = f16_at(b, 2);
            let sc = &b[4..16];
            for j in 0..8 {
                let (s, m) = scale_min_k4(j, sc);
                k.scales[j] = s;
                k.mins[j] = m;
            }
            if t == QuantType::Q4K {
                let qs = &b[16..144];
                for c in 0..4 {
                    for l in 0..32 {
                        k.q[c * 64 + l] = (qs[c * 32 + l] & 0xF) as i8;
                        k.q[c * 64 + 32 + l] = (qs[c * 32 + l] >> 4) as i8;
                    }
                }
            } else {
                let qh = &b[16..48];
                let qs = &b[48..176];
                for c in 0..4 {
                    for l in 0..32 {
                        let h = qh[l] >> (2 * c);
                        k.q[c * 64 + l] = ((qs[c * 32 + l] & 0xF) | ((h & 1) << 4)) as i8;
                        k.q[c * 64 + 32 + l] = ((qs[c * 32 + l] >> 4) | ((h & 2) << 3)) as i8;
                    }
                }
            }
        }
        QuantType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            k.d = f16_at(b, 208);
            for (o, &s) in k.scales16.iter_mut().zip(sc) {
                *o = s as i8;
            }
            for n in 0..2 {
                let (ql, qh) = (&ql[n * 64..], &qh[n * 32..]);
                let y = &mut k.q[n * 128..];
                for l in 0..32 {
                    y[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                    y[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                    y[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                    y[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                }
            }
        }
        QuantType::Q2K => {
            // 16 scale bytes (low nibble scale, high nibble min), 64 bytes of 2-bit values:
            // value i = 128n + 32j + l is bits 2j of byte 32n + l.
            let (sc, qs) = (&b[0..16], &b[16..80]);
            k.d = f16_at(b, 80);
            k.dmin = f16_at(b, 82);
            for ((s, m), &v) in k.scales16.iter_mut().zip(&mut k.mins16).zip(sc) {
                *s = (v & 0xF) as i8;
                *m = v >> 4;
            }
            for (i, q) in k.q.iter_mut().enumerate() {
                let (n, j, l) = (i / 128, (i / 32) % 4, i % 32);
                *q = ((qs[n * 32 + l] >> (2 * j)) & 3) as i8;
            }
        }
        QuantType::Q3K => {
            // As Q2_K's values, minus 4 where bit i/32 of hmask[i % 32] is clear.
            let (hm, qs, sc) = (&b[0..32], &b[32..96], &b[96..108]);
            k.d = f16_at(b, 108);
            for j in 0..16 {
                k.scales16[j] = q3k_scale(j, sc);
            }
            for (i, q) in k.q.iter_mut().enumerate() {
                let (n, j, l) = (i / 128, (i / 32) % 4, i % 32);
                let low = ((qs[n * 32 + l] >> (2 * j)) & 3) as i8;
                let high = (hm[l] >> (i / 32)) & 1;
                *q = low - if high == 0 { 4 } else { 0 };
            }
        }
        QuantType::IQ4XS => {
            // Per 32 values a 6-bit scale (low 4 bits in scales_l, top 2 in scales_h), stored
            // + 32; the two 16-value halves of `scales16` get the same one.
            k.d = f16_at(b, 0);
            let sh = u16::from_le_bytes([b[2], b[3]]);
            let (sl, qs) = (&b[4..8], &b[8..136]);
            for ib in 0..8 {
                let ls =
                    ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((sh >> (2 * ib)) & 3) as u8) << 4);
                k.scales16[2 * ib] = ls as i8 - 32;
                k.scales16[2 * ib + 1] = ls as i8 - 32;
                for j in 0..16 {
                    let v = qs[ib * 16 + j];
                    k.q[ib * 32 + j] = IQ4_LEVELS[(v & 0xF) as usize];
                    k.q[ib * 32 + 16 + j] = IQ4_LEVELS[(v >> 4) as usize];
                }
            }
        }
        t if t.is_lattice() => super::iq::unpack(t, b, &mut k.d, &mut k.scales16, &mut k.q),
        _ => unreachable!("unpack_k on a 32-wide format"),
    }
}

impl KBlock {
    pub(crate) fn new() -> Self {
        KBlock {
            q: [0; QK_K],
            d: 0.0,
            dmin: 0.0,
            scales: [0; 8],
            mins: [0; 8],
            scales16: [0; 16],
            mins16: [0; 16],
        }
    }
}
