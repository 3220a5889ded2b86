//! The plain integer dot product of a quantized weight row with int8 activations: each weight
//! block unpacked to int8 once for all activation rows, then an integer dot product per block
//! (`IntDot`, which the NEON code implements with `sdot`).

use super::format::{f16_at, QuantType, QK};
use super::unpack::{unpack_32, unpack_k, KBlock};

#[inline(always)]
pub(crate) fn idot<const N: usize>(a: &[i8], b: &[i8]) -> i32 {
    let (a, b) = (&a[..N], &b[..N]);
    let mut s = 0i32;
    for i in 0..N {
        s += a[i] as i32 * b[i] as i32;
    }
    s
}

/// Dot product of one quantized weight row with one activation row (plain code).
#[inline(always)]
pub(crate) fn dot_row_generic(t: QuantType, w: &[u8], ad: &[f32], asum: &[i32], aq: &[i8]) -> f32 {
    dot_rows_unpacked::<ScalarDot, 1>(t, w, &[(ad, asum, aq)])[0]
}

/// Sixteen ones: a dot product with them sums 16 activations (Q2_K's mins).
pub(crate) const ONES: [i8; 16] = [1; 16];

/// Integer dot products of the unpacked weight values with the int8 activations.
pub(crate) trait IntDot {
    fn dot32(w: &[i8], a: &[i8]) -> i32;
    fn dot16(w: &[i8], a: &[i8]) -> i32;
}

pub(crate) struct ScalarDot;

impl IntDot for ScalarDot {
    #[inline(always)]
    fn dot32(w: &[i8], a: &[i8]) -> i32 {
        idot::<32>(w, a)
    }
    #[inline(always)]
    fn dot16(w: &[i8], a: &[i8]) -> i32 {
        idot::<16>(w, a)
    }
}

/// One quantized weight row against `T` activation rows: each block is unpacked to integers
/// once for all `T`, then `D` does the integer dot products.
#[inline(always)]
pub(crate) fn dot_rows_unpacked<D: IntDot, const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[(&[f32], &[i32], &[i8]); T],
) -> [f32; T] {
    let bb = t.block_bytes();
    let mut acc = [0.0f32; T];
    match t {
        QuantType::Q4K | QuantType::Q5K => {
            let mut k = KBlock::new();
            for (sb, b) in w.chunks_exact(bb).enumerate() {
                unpack_k(t, b, &mut k);
                for (acc, &(ad, asum, aq)) in acc.iter_mut().zip(acts) {
                    let mut s_sc = 0.0f32;
                    let mut s_min = 0.0f32;
                    for j in 0..8 {
                        let ab = sb * 8 + j;
                        let i = D::dot32(&k.q[j * 32..j * 32 + 32], &aq[ab * 32..ab * 32 + 32]);
                        s_sc += ad[ab] * (k.scales[j] as i32 * i) as f32;
                        s_min += ad[ab] * (k.mins[j] as i32 * asum[ab]) as f32;
                    }
                    *acc += k.d * s_sc - k.dmin * s_min;
                }
            }
        }
        t if matches!(
            t,
            QuantType::Q6K | QuantType::Q3K | QuantType::Q2K | QuantType::IQ4XS
        ) || t.is_lattice() =>
        {
            let mut k = KBlock::new();
            for (sb, b) in w.chunks_exact(bb).enumerate() {
                unpack_k(t, b, &mut k);
                for (acc, &(ad, _, aq)) in acc.iter_mut().zip(acts) {
                    if t == QuantType::Q2K {
                        // The mins meet the activations' sums over 16 values.
                        let mut m = 0.0f32;
                        for j in 0..8 {
                            let ab = sb * 8 + j;
                            let s0 = D::dot16(&ONES, &aq[ab * 32..ab * 32 + 16]);
                            let s1 = D::dot16(&ONES, &aq[ab * 32 + 16..ab * 32 + 32]);
                            let i = k.mins16[2 * j] as i32 * s0 + k.mins16[2 * j + 1] as i32 * s1;
                            m += ad[ab] * i as f32;
                        }
                        *acc -= k.dmin * m;
                    }
                    let mut s = 0.0f32;
                    for j in 0..8 {
                        let ab = sb * 8 + j;
                        let lo = D::dot16(&k.q[j * 32..j * 32 + 16], &aq[ab * 32..ab * 32 + 16]);
                        let hi = D::dot16(
                            &k.q[j * 32 + 16..j * 32 + 32],
                            &aq[ab * 32 + 16..ab * 32 + 32],
                        );
                        let i = k.scales16[2 * j] as i32 * lo + k.scales16[2 * j + 1] as i32 * hi;
                        s += ad[ab] * i as f32;
                    }
                    *acc += k.d * s;
                }
            }
        }
        _ => {
            let mut q = [0i8; QK];
            for (ab, b) in w.chunks_exact(bb).enumerate() {
                let d = unpack_32(t, b, &mut q);
                for (acc, &(ad, asum, aq)) in acc.iter_mut().zip(acts) {
                    let i = D::dot32(&q, &aq[ab * 32..ab * 32 + 32]);
                    *acc += d * ad[ab] * i as f32;
                    if matches!(t, QuantType::Q4_1 | QuantType::Q5_1) {
                        *acc += f16_at(b, 2) * ad[ab] * asum[ab] as f32;
                    }
                }
            }
        }
    }
    acc
}
