//! llama.cpp's lattice i-quants (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S)
//! unpacked into what every K-quant unpacks to: int8 values, an int8 scale per 16 values and a
//! float super-block scale, `value = d · scale16[i / 16] · q[i]`.
//!
//! Each group of 8 values (4 for the IQ3 types) is a point of a fixed grid ([`super::iq_tables`])
//! chosen by a few bits, its signs stored apart (7 bits through [`KSIGNS`], the eighth making
//! the count even, or 8 explicit bits). The scales are odd integers: `d · (0.5 + s) / 4` is
//! `d/8 · (2s + 1)`, and IQ1's `±1/8` shift becomes `8·g ± 1` with `d/8`, so the values stay
//! integers and the products are exact, as llama.cpp's float ones are to the bit.

use super::format::{f16_at, QuantType, QK_K};
use super::iq_tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS,
};

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `q[..n] = grid point × signs` (bit `j` of `signs` negates value `j`).
#[inline(always)]
fn signed(q: &mut [i8], point: &[i8], signs: u8) {
    for (j, (o, &v)) in q.iter_mut().zip(point).enumerate() {
        *o = if signs >> j & 1 == 1 { -v } else { v };
    }
}

/// The same odd scale `2s + 1` for both 16-value halves of 32-value sub-block `ib`.
fn scale32(scales16: &mut [i8; 16], ib: usize, s: u32) {
    scales16[2 * ib] = (2 * s + 1) as i8;
    scales16[2 * ib + 1] = (2 * s + 1) as i8;
}

/// Unpacks one super-block `b` of lattice type `t`.
pub(crate) fn unpack(
    t: QuantType,
    b: &[u8],
    d: &mut f32,
    scales16: &mut [i8; 16],
    q: &mut [i8; QK_K],
) {
    match t {
        QuantType::IQ2XXS => {
            // Per 32 values: 4 index bytes, then 4 × 7 sign bits and a 4-bit scale.
            *d = f16_at(b, 0) / 8.0;
            for ib in 0..8 {
                let o = 2 + 8 * ib;
                let aux = u32_at(b, o + 4);
                scale32(scales16, ib, aux >> 28);
                for l in 0..4 {
                    let point = &IQ2XXS_GRID[b[o + l] as usize];
                    let signs = KSIGNS[(aux >> (7 * l) & 127) as usize];
                    signed(&mut q[32 * ib + 8 * l..][..8], point, signs);
                }
            }
        }
        QuantType::IQ2XS => {
            // Per 8 values a u16: 9-bit index, 7-bit sign pattern; a nibble scale per 16.
            *d = f16_at(b, 0) / 8.0;
            for g in 0..32 {
                let v = u16_at(b, 2 + 2 * g);
                let signs = KSIGNS[(v >> 9) as usize];
                signed(&mut q[8 * g..][..8], &IQ2XS_GRID[(v & 511) as usize], signs);
            }
            for (i, s) in scales16.iter_mut().enumerate() {
                *s = (2 * (b[66 + i / 2] >> (4 * (i % 2)) & 15) + 1) as i8;
            }
        }
        QuantType::IQ2S => {
            // Index low bytes, then a sign byte per 8 values, 2 high index bits per 8 values,
            // a nibble scale per 16.
            *d = f16_at(b, 0) / 8.0;
            let (qs, signs, qh, sc) = (&b[2..34], &b[34..66], &b[66..74], &b[74..82]);
            for g in 0..32 {
                let idx = qs[g] as usize | ((qh[g / 4] >> (2 * (g % 4)) & 3) as usize) << 8;
                signed(&mut q[8 * g..][..8], &IQ2S_GRID[idx], signs[g]);
            }
            for (i, s) in scales16.iter_mut().enumerate() {
                *s = (2 * (sc[i / 2] >> (4 * (i % 2)) & 15) + 1) as i8;
            }
        }
        QuantType::IQ3XXS => {
            // 64 index bytes (4 values each), then per 32 values a u32 of 4 × 7 sign bits and
            // a 4-bit scale: d · (0.5 + s) / 2 = d/4 · (2s + 1).
            *d = f16_at(b, 0) / 4.0;
            for ib in 0..8 {
                let aux = u32_at(b, 66 + 4 * ib);
                scale32(scales16, ib, aux >> 28);
                for l in 0..4 {
                    let signs = KSIGNS[(aux >> (7 * l) & 127) as usize];
                    let mut point = [0i8; 8];
                    point[..4].copy_from_slice(&IQ3XXS_GRID[b[2 + 8 * ib + 2 * l] as usize]);
                    point[4..].copy_from_slice(&IQ3XXS_GRID[b[2 + 8 * ib + 2 * l + 1] as usize]);
                    signed(&mut q[32 * ib + 8 * l..][..8], &point, signs);
                }
            }
        }
        QuantType::IQ3S => {
            // 64 index low bytes (4 values each), a high bit each, a sign byte per 8 values,
            // a nibble scale per 32: d · (1 + 2s).
            *d = f16_at(b, 0);
            let (qs, qh, signs, sc) = (&b[2..66], &b[66..74], &b[74..106], &b[106..110]);
            for ib in 0..8 {
                scale32(scales16, ib, (sc[ib / 2] >> (4 * (ib % 2)) & 15) as u32);
            }
            for g in 0..32 {
                let mut point = [0i8; 8];
                for h in 0..2 {
                    let i = 2 * g + h;
                    let idx = qs[i] as usize | ((qh[i / 8] >> (i % 8) & 1) as usize) << 8;
                    point[4 * h..4 * h + 4].copy_from_slice(&IQ3S_GRID[idx]);
                }
                signed(&mut q[8 * g..][..8], &point, signs[g]);
            }
        }
        QuantType::IQ1S => {
            // Per 32 values: 4 index low bytes and a u16 of 4 × 3 high bits, a 3-bit scale and
            // the shift's sign. d · (2s + 1) · (g ± 1/8) = d/8 · (2s + 1) · (8g ± 1).
            *d = f16_at(b, 0) / 8.0;
            for ib in 0..8 {
                let h = u16_at(b, 34 + 2 * ib);
                scale32(scales16, ib, (h >> 12 & 7) as u32);
                let shift: i8 = if h & 0x8000 != 0 { -1 } else { 1 };
                for l in 0..4 {
                    let idx = b[2 + 4 * ib + l] as usize | ((h >> (3 * l) & 7) as usize) << 8;
                    for (o, &g) in q[32 * ib + 8 * l..][..8].iter_mut().zip(&IQ1S_GRID[idx]) {
                        *o = 8 * g + shift;
                    }
                }
            }
        }
        QuantType::IQ1M => {
            // 32 index low bytes, a nibble per 8 values (3 high index bits, the shift's sign),
            // four u16 of 4 × 3-bit scales (one per 16 values) whose top nibbles hold the f16 d.
            let (qs, qh) = (&b[0..32], &b[32..48]);
            let sc = [u16_at(b, 48), u16_at(b, 50), u16_at(b, 52), u16_at(b, 54)];
            let bits =
                (sc[0] >> 12) | (sc[1] >> 8 & 0xF0) | (sc[2] >> 4 & 0xF00) | (sc[3] & 0xF000);
            *d = half::f16::from_bits(bits).to_f32() / 8.0;
            for (i, s) in scales16.iter_mut().enumerate() {
                *s = (2 * (sc[i / 4] >> (3 * (i % 4)) & 7) + 1) as i8;
            }
            for g in 0..32 {
                let nib = qh[g / 2] >> (4 * (g % 2)) & 15;
                let idx = qs[g] as usize | ((nib & 7) as usize) << 8;
                let shift: i8 = if nib & 8 != 0 { -1 } else { 1 };
                for (o, &v) in q[8 * g..][..8].iter_mut().zip(&IQ1S_GRID[idx]) {
                    *o = 8 * v + shift;
                }
            }
        }
        _ => unreachable!("{} is not a lattice i-quant", t.name()),
    }
}
