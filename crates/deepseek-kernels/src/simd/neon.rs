//! The AArch64 NEON forms of the SIMD kernels.

//! The same kernels as `x86` on 4-lane NEON registers. Each loop step takes 8 values (two
//! registers) so every accumulator chain has a second one beside it.
use super::scalar::{EXP_LN2, EXP_POLY};
use std::arch::aarch64::*;

/// 4 bf16 values (raw bits) widened to f32: the bits shifted into the high half.
#[inline(always)]
unsafe fn load_bf16(p: *const u16) -> float32x4_t {
    vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p)))
}

macro_rules! tile_kernel {
    ($name:ident, $wty:ty, $load_w:expr, $conv:expr) => {
        pub unsafe fn $name<const R: usize, const T: usize>(
            w: [&[$wty]; R],
            x: [&[f32]; T],
            acc: &mut [[f32; T]; R],
        ) {
            let n = w[0].len();
            assert!(w.iter().all(|r| r.len() == n) && x.iter().all(|r| r.len() >= n));
            let main = n - n % 8;
            let mut s0 = [[vdupq_n_f32(0.0); T]; R];
            let mut s1 = [[vdupq_n_f32(0.0); T]; R];
            let mut i = 0;
            while i < main {
                let x0: [float32x4_t; T] = std::array::from_fn(|t| vld1q_f32(x[t].as_ptr().add(i)));
                let x1: [float32x4_t; T] =
                    std::array::from_fn(|t| vld1q_f32(x[t].as_ptr().add(i + 4)));
                for r in 0..R {
                    let w0 = $load_w(w[r].as_ptr().add(i));
                    let w1 = $load_w(w[r].as_ptr().add(i + 4));
                    for t in 0..T {
                        s0[r][t] = vfmaq_f32(s0[r][t], w0, x0[t]);
                        s1[r][t] = vfmaq_f32(s1[r][t], w1, x1[t]);
                    }
                }
                i += 8;
            }
            for r in 0..R {
                for t in 0..T {
                    let mut v = vaddvq_f32(vaddq_f32(s0[r][t], s1[r][t]));
                    for c in main..n {
                        v += $conv(*w[r].get_unchecked(c)) * *x[t].get_unchecked(c);
                    }
                    acc[r][t] = v;
                }
            }
        }
    };
}

tile_kernel!(tile_f32, f32, |p: *const f32| vld1q_f32(p), |v: f32| v);
tile_kernel!(
    tile_bf16,
    u16,
    |p: *const u16| load_bf16(p),
    super::scalar::bf16_bits_to_f32
);

/// See [`super::accumulate_rows`]; slices already checked by the caller. Up to 8 groups'
/// 4-column chunks stay in registers while the rows stream past.
#[allow(clippy::too_many_arguments)]
pub unsafe fn accumulate_rows(
    w: &[f32],
    ws: usize,
    groups: usize,
    rows: &[f32],
    stride: usize,
    offset: usize,
    n: usize,
    len: usize,
    out: &mut [f32],
) {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const G: usize>(
        w: *const f32,
        ws: usize,
        rows: *const f32,
        stride: usize,
        n: usize,
        out: *mut f32,
        len: usize,
    ) {
        let mut acc: [float32x4_t; G] = std::array::from_fn(|j| vld1q_f32(out.add(j * len)));
        for r in 0..n {
            let v = vld1q_f32(rows.add(r * stride));
            for (j, a) in acc.iter_mut().enumerate() {
                *a = vfmaq_n_f32(*a, v, *w.add(j * ws + r));
            }
        }
        for (j, a) in acc.iter().enumerate() {
            vst1q_f32(out.add(j * len), *a);
        }
    }
    let main = len - len % 4;
    let mut c = 0;
    while c < main {
        let rp = rows.as_ptr().add(offset + c);
        let mut g = 0;
        while g < groups {
            let wp = w.as_ptr().add(g * ws);
            let op = out.as_mut_ptr().add(g * len + c);
            g += match groups - g {
                8.. => {
                    tile::<8>(wp, ws, rp, stride, n, op, len);
                    8
                }
                4.. => {
                    tile::<4>(wp, ws, rp, stride, n, op, len);
                    4
                }
                _ => {
                    tile::<1>(wp, ws, rp, stride, n, op, len);
                    1
                }
            };
        }
        c += 4;
    }
    // The last len % 4 columns.
    for g in 0..groups {
        for r in 0..n {
            let a = w[g * ws + r];
            for col in main..len {
                out[g * len + col] += a * rows[r * stride + offset + col];
            }
        }
    }
}

/// The AVX-512 form's Cephes polynomial; 2ⁿ is built in the exponent bits (n ≥ −127 here,
/// values below the −80 flush point are zeroed first).
pub unsafe fn exp_shifted_sum(v: &mut [f32], max: f32) -> f32 {
    let m = vdupq_n_f32(max);
    let exp4 = |x: float32x4_t| {
        let d = vsubq_f32(x, m);
        // NaN fails the comparison and is kept (it propagates, as libm's does).
        let flush = vcltq_f32(d, vdupq_n_f32(-80.0));
        let n = vrndnq_f32(vmulq_f32(d, vdupq_n_f32(std::f32::consts::LOG2_E)));
        let r = vfmsq_f32(d, n, vdupq_n_f32(EXP_LN2[0]));
        let r = vfmsq_f32(r, n, vdupq_n_f32(EXP_LN2[1]));
        let mut p = vdupq_n_f32(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = vfmaq_f32(vdupq_n_f32(*c), p, r);
        }
        let r2 = vmulq_f32(r, r);
        let e = vaddq_f32(vfmaq_f32(r, p, r2), vdupq_n_f32(1.0));
        // 2ⁿ: (n + 127) << 23 as f32 bits; n ∈ [−116, 0] after the flush, so no overflow.
        let ni = vcvtq_s32_f32(vmaxq_f32(n, vdupq_n_f32(-126.0)));
        let pow2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(ni, vdupq_n_s32(127))));
        let y = vmulq_f32(e, pow2);
        vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), flush))
    };
    let mut acc = vdupq_n_f32(0.0);
    let mut chunks = v.chunks_exact_mut(4);
    for c in &mut chunks {
        let e = exp4(vld1q_f32(c.as_ptr()));
        vst1q_f32(c.as_mut_ptr(), e);
        acc = vaddq_f32(acc, e);
    }
    let mut sum = vaddvq_f32(acc);
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut buf = [0.0f32; 4];
        buf[..rest.len()].copy_from_slice(rest);
        let mut e = [0.0f32; 4];
        vst1q_f32(e.as_mut_ptr(), exp4(vld1q_f32(buf.as_ptr())));
        rest.copy_from_slice(&e[..rest.len()]);
        sum += rest.iter().sum::<f32>();
    }
    sum
}

pub unsafe fn axpy_bf16(alpha: f32, w: &[u16], y: &mut [f32]) {
    let n = w.len().min(y.len());
    let main = n - n % 4;
    let mut i = 0;
    while i < main {
        let yp = y.as_mut_ptr().add(i);
        vst1q_f32(
            yp,
            vfmaq_n_f32(vld1q_f32(yp), load_bf16(w.as_ptr().add(i)), alpha),
        );
        i += 4;
    }
    for c in main..n {
        y[c] += alpha * super::scalar::bf16_bits_to_f32(w[c]);
    }
}
