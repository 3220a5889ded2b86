//! Dequantization of GGML rows to f32, and the lossless rewrites of Q4_0/Q5_0 blocks that let
//! them use other formats' kernels.

use super::format::{f16_at, QuantType, QK, QK_K};
#[cfg(target_arch = "x86_64")]
use super::isa::{byte_dot_isa, ByteDotIsa};
use super::unpack::{unpack_32, unpack_k, KBlock};

/// Q4_0 or Q5_0 blocks rewritten as Q8_0 blocks with the same values (same f16 scale; the
/// offset-removed values, -8..7 or -16..15, as bytes).
pub fn to_q8_0(t: QuantType, bytes: &[u8]) -> Vec<u8> {
    assert!(matches!(
        t,
        QuantType::Q4_0 | QuantType::Q5_0 | QuantType::Q8_0
    ));
    let bb = t.block_bytes();
    let mut out = Vec::with_capacity(bytes.len() / bb * 34);
    let mut q = [0i8; QK];
    for b in bytes.chunks_exact(bb) {
        unpack_32(t, b, &mut q);
        out.extend_from_slice(&b[0..2]);
        out.extend(q.iter().map(|&v| v as u8));
    }
    out
}

/// Q4_0 blocks as Q5_0 blocks of the same values, exactly: the same scale, `q + 8` for each
/// 4-bit `q` (its low four bits `q ^ 8`, its fifth bit bit 3 of `q`). 22 bytes per 32 values
/// instead of Q8_0's 34, for the Q5_0 kernels.
pub fn q4_0_to_q5_0(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() / 18 * 22);
    for b in bytes.chunks_exact(18) {
        let mut qh = 0u32;
        for (j, &v) in b[2..18].iter().enumerate() {
            qh |= (((v >> 3) & 1) as u32) << j;
            qh |= (((v >> 7) & 1) as u32) << (j + 16);
        }
        out.extend_from_slice(&b[0..2]);
        out.extend_from_slice(&qh.to_le_bytes());
        out.extend(b[2..18].iter().map(|&v| v ^ 0x88));
    }
    out
}

/// Dequantizes a row of blocks into `out` (`out.len()` values).
pub fn dequantize_row(t: QuantType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(out.len() % be, 0);
    assert!(bytes.len() >= out.len() / be * bb);
    #[cfg(target_arch = "x86_64")]
    if matches!(byte_dot_isa(), ByteDotIsa::Avx2 | ByteDotIsa::Vnni) {
        // SAFETY: AVX2, FMA and F16C were detected (`byte_dot_isa`); lengths checked above.
        unsafe {
            match t.is_lattice() {
                true => super::x86_iq::dequantize_row_avx2(t, bytes, out),
                false => super::x86::dequantize_row_avx2(t, bytes, out),
            }
        }
        return;
    }
    dequantize_row_plain(t, bytes, out)
}

/// [`dequantize_row`] in plain code (the reference the SIMD form is tested against).
pub fn dequantize_row_plain(t: QuantType, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (t.block_elems(), t.block_bytes());
    assert_eq!(out.len() % be, 0);
    assert!(bytes.len() >= out.len() / be * bb);
    match t {
        t if t.block_elems() == QK_K => {
            let mut k = KBlock::new();
            for (o, b) in out.chunks_exact_mut(QK_K).zip(bytes.chunks_exact(bb)) {
                unpack_k(t, b, &mut k);
                if matches!(t, QuantType::Q6K | QuantType::Q3K | QuantType::IQ4XS) || t.is_lattice()
                {
                    for (i, v) in o.iter_mut().enumerate() {
                        *v = k.d * k.scales16[i / 16] as f32 * k.q[i] as f32;
                    }
                } else if t == QuantType::Q2K {
                    for (i, v) in o.iter_mut().enumerate() {
                        let j = i / 16;
                        *v = k.d * k.scales16[j] as f32 * k.q[i] as f32
                            - k.dmin * k.mins16[j] as f32;
                    }
                } else {
                    for (i, v) in o.iter_mut().enumerate() {
                        let j = i / 32;
                        *v = k.d * k.scales[j] as f32 * k.q[i] as f32 - k.dmin * k.mins[j] as f32;
                    }
                }
            }
        }
        _ => {
            let mut q = [0i8; QK];
            for (o, b) in out.chunks_exact_mut(QK).zip(bytes.chunks_exact(bb)) {
                let d = unpack_32(t, b, &mut q);
                let m = if matches!(t, QuantType::Q4_1 | QuantType::Q5_1) {
                    f16_at(b, 2)
                } else {
                    0.0
                };
                for (v, &qi) in o.iter_mut().zip(&q) {
                    *v = d * qi as f32 + m;
                }
            }
        }
    }
}
