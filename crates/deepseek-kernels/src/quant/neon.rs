//! AArch64 dot products of GGML weight blocks with 8-bit activations, on `sdot` (the Armv8.2
//! dot-product instruction: 16 signed byte products summed into 4 i32 lanes). Blocks are
//! unpacked to int8 by the shared plain code (`quant::dot_rows_unpacked`, once for all tokens);
//! the integer products, which are most of the work, run here.

#![allow(clippy::missing_safety_doc)]

use std::arch::aarch64::*;

use super::format::QuantType;
use super::unpacked::{dot_rows_unpacked, IntDot};

struct SdotNeon;

/// `acc + Σ a[i]·b[i]` over 16 bytes, 4 at a time per lane.
#[inline(always)]
pub(crate) unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // The intrinsic (`vdotq_s32`) is not stable in every Rust this builds with; the
    // instruction is the same.
    std::arch::asm!(
        ".arch_extension dotprod",
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// 4 little-endian f16 values at `p` widened to f32 (`fcvtl`; the f16 vector types are not
/// stable in Rust).
#[inline(always)]
pub(crate) unsafe fn f16x4_to_f32(p: *const u8) -> float32x4_t {
    let h = vcreate_u16((p as *const u64).read_unaligned());
    let out: float32x4_t;
    std::arch::asm!(
        "fcvtl {o:v}.4s, {h:v}.4h",
        o = out(vreg) out,
        h = in(vreg) h,
        options(pure, nomem, nostack, preserves_flags)
    );
    out
}

impl IntDot for SdotNeon {
    #[inline(always)]
    fn dot32(w: &[i8], a: &[i8]) -> i32 {
        assert!(w.len() >= 32 && a.len() >= 32);
        // SAFETY: lengths checked; only called once `dotprod` was detected (see `dot_rows`).
        unsafe {
            let s = sdot(vdupq_n_s32(0), vld1q_s8(w.as_ptr()), vld1q_s8(a.as_ptr()));
            let s = sdot(
                s,
                vld1q_s8(w.as_ptr().add(16)),
                vld1q_s8(a.as_ptr().add(16)),
            );
            vaddvq_s32(s)
        }
    }
    #[inline(always)]
    fn dot16(w: &[i8], a: &[i8]) -> i32 {
        assert!(w.len() >= 16 && a.len() >= 16);
        // SAFETY: as above.
        unsafe {
            vaddvq_s32(sdot(
                vdupq_n_s32(0),
                vld1q_s8(w.as_ptr()),
                vld1q_s8(a.as_ptr()),
            ))
        }
    }
}

/// One quantized weight row against `T` activation rows. Requires `dotprod`.
#[target_feature(enable = "neon,dotprod")]
pub unsafe fn dot_rows<const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[(&[f32], &[i32], &[i8]); T],
) -> [f32; T] {
    dot_rows_unpacked::<SdotNeon, T>(t, w, acts)
}
