//! SIMD dot products with run-time CPU detection: AVX-512F, AVX2+FMA on x86-64, NEON on
//! AArch64 (where it is part of the base architecture), else portable scalar code.
//!
//! The `*_multi` forms take one weight row and up to four activation rows: the weight row is
//! loaded and converted to f32 once and used for every activation row, which is what makes
//! batched decode and prefill cheaper than one GEMV per token.

pub mod isa;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

pub use isa::{isa, Isa};
use scalar::dot_scalar;
pub use scalar::{
    accumulate_rows_reference, axpy, bf16_bits_to_f32, exp_shifted_sum_reference, scores_reference,
    silu_mul_reference, tile_scalar, HeadsMajorQueries,
};

pub fn bf16_to_f32(src: &[u16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    if matches!(isa(), Isa::Avx2 | Isa::Avx512) {
        // SAFETY: AVX2 detected at run time (both ISAs include it); `n` bounds both slices.
        unsafe { x86::bf16_to_f32_avx2(&src[..n], &mut dst[..n]) };
        return;
    }
    for (d, &s) in dst[..n].iter_mut().zip(&src[..n]) {
        *d = bf16_bits_to_f32(s);
    }
}

/// `acc[i] = w · xs[i]` for f32 weights and one to four activation rows (one register tile).
pub fn dot_f32_multi(w: &[f32], xs: &[&[f32]], acc: &mut [f32]) {
    fn one<const T: usize>(w: &[f32], xs: &[&[f32]], acc: &mut [f32]) {
        let mut a = [[0.0f32; T]; 1];
        f32::tile::<1, T>([w], std::array::from_fn(|t| &xs[t][..w.len()]), &mut a);
        acc[..T].copy_from_slice(&a[0]);
    }
    match xs.len() {
        1 => one::<1>(w, xs, acc),
        2 => one::<2>(w, xs, acc),
        3 => one::<3>(w, xs, acc),
        4 => one::<4>(w, xs, acc),
        n => panic!("dot_f32_multi takes 1 to 4 rows, got {n}"),
    }
}

/// `acc[i] = w · xs[i]` for f16 weights (raw bits). Scalar: f16 checkpoints are rare for these models.
pub fn dot_f16_multi(w: &[u16], xs: &[&[f32]], acc: &mut [f32]) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = dot_scalar(w.iter().map(|&b| half::f16::from_bits(b).to_f32()), x);
    }
}

/// Register tile: `acc[r][t] = w[r] · x[t]` for `R` weight rows and `T` activation rows, all of
/// length `len`. Each weight vector is loaded and converted once for all `T` tokens; each
/// activation vector once for all `R` rows; the `R×T` accumulators are independent FMA chains.
pub trait TileWeight: Copy + 'static {
    fn tile<const R: usize, const T: usize>(
        w: [&[Self]; R],
        x: [&[f32]; T],
        acc: &mut [[f32; T]; R],
    );
}

impl TileWeight for f32 {
    #[inline]
    fn tile<const R: usize, const T: usize>(
        w: [&[f32]; R],
        x: [&[f32]; T],
        acc: &mut [[f32; T]; R],
    ) {
        #[cfg(target_arch = "x86_64")]
        match isa() {
            // SAFETY: the ISA was detected at run time; slices are checked below.
            Isa::Avx512 => return unsafe { x86::tile_f32_avx512(w, x, acc) },
            Isa::Avx2 => return unsafe { x86::tile_f32_avx2(w, x, acc) },
            _ => {}
        }
        #[cfg(target_arch = "aarch64")]
        if isa() == Isa::Neon {
            // SAFETY: NEON is part of AArch64; slices are checked inside.
            return unsafe { neon::tile_f32(w, x, acc) };
        }
        tile_scalar(w, x, acc, |v| v)
    }
}

impl TileWeight for u16 {
    /// bf16 bits.
    #[inline]
    fn tile<const R: usize, const T: usize>(
        w: [&[u16]; R],
        x: [&[f32]; T],
        acc: &mut [[f32; T]; R],
    ) {
        #[cfg(target_arch = "x86_64")]
        match isa() {
            // SAFETY: the ISA was detected at run time.
            // One token (GEMV, bound by the memory bus): the pair-splitting kernel issues fewer
            // instructions per weight. Several tokens: the widening one, whose activations need
            // no splitting per step (the split took a 4×4 tile from 180 to 150 GFLOP/s).
            Isa::Avx512 if T == 1 => return unsafe { x86::tile_bf16_avx512(w, x, acc) },
            Isa::Avx512 => return unsafe { x86::tile_bf16_widening_avx512(w, x, acc) },
            Isa::Avx2 => return unsafe { x86::tile_bf16_avx2(w, x, acc) },
            _ => {}
        }
        #[cfg(target_arch = "aarch64")]
        if isa() == Isa::Neon {
            // SAFETY: NEON is part of AArch64; slices are checked inside.
            return unsafe { neon::tile_bf16(w, x, acc) };
        }
        tile_scalar(w, x, acc, bf16_bits_to_f32)
    }
}

/// `v = exp(v - max)` for every value (0 where `v - max < -80`, which would be denormal and
/// costs ~100× in later arithmetic), returning their sum: the softmax step of attention. The
/// vector forms (AVX-512, AVX2, NEON) use Cephes' polynomial (`EXP_POLY`), within 2.5e-7
/// relative of libm's `expf` (tested).
pub fn exp_shifted_sum(v: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    match isa() {
        // SAFETY: AVX-512 detected at run time.
        Isa::Avx512 => return unsafe { x86::exp_shifted_sum_avx512(v, max) },
        // SAFETY: AVX2 and FMA detected at run time.
        Isa::Avx2 => return unsafe { x86::exp_shifted_sum_avx2(v, max) },
        _ => {}
    }
    #[cfg(target_arch = "aarch64")]
    if isa() == Isa::Neon {
        // SAFETY: NEON is part of AArch64.
        return unsafe { neon::exp_shifted_sum(v, max) };
    }
    exp_shifted_sum_reference(v, max)
}

/// `gate[i] = silu(gate[i]) · up[i]` (SwiGLU's combine), with the polynomial `exp` of
/// [`exp_shifted_sum`] on AVX2 (within ~1e-6 relative of [`silu_mul_reference`], tested).
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(gate.len(), up.len(), "silu_mul: gate and up lengths differ");
    #[cfg(target_arch = "x86_64")]
    if matches!(isa(), Isa::Avx2 | Isa::Avx512) {
        // SAFETY: AVX2 and FMA detected at run time (both ISAs include them).
        unsafe { x86::silu_mul_avx2(gate, up) };
        return;
    }
    silu_mul_reference(gate, up)
}

/// `y += alpha · w` for a bf16 row `w` (the transposed-matmul inner step).
pub fn axpy_bf16(alpha: f32, w: &[u16], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        // SAFETY: AVX-512 detected at run time.
        return unsafe { x86::axpy_bf16_avx512(alpha, w, y) };
    }
    #[cfg(target_arch = "aarch64")]
    if isa() == Isa::Neon {
        // SAFETY: NEON is part of AArch64.
        return unsafe { neon::axpy_bf16(alpha, w, y) };
    }
    for (yv, &b) in y.iter_mut().zip(w) {
        *yv += alpha * bf16_bits_to_f32(b);
    }
}

/// `out[g·len..][..len] += Σ_r w[g·ws + r] · rows[r·stride + offset..][..len]` for every group
/// `g < groups` and row `r < n`: the value pass of attention (each row loaded once for all
/// groups; each group's output chunk stays in a register across the rows).
#[allow(clippy::too_many_arguments)]
pub fn accumulate_rows(
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
    if groups == 0 || n == 0 || len == 0 {
        return;
    }
    assert!(out.len() >= groups * len, "accumulate_rows: out too short");
    assert!(
        w.len() >= (groups - 1) * ws + n,
        "accumulate_rows: weights too short"
    );
    assert!(
        rows.len() >= (n - 1) * stride + offset + len,
        "accumulate_rows: rows too short"
    );
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx512 {
        // SAFETY: AVX-512F is present; every access is inside the slices checked above.
        unsafe {
            x86::accumulate_rows_avx512(w, ws, groups, rows, stride, offset, n, len, out);
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa() == Isa::Avx2 {
        // SAFETY: AVX2 and FMA are present; every access is inside the slices checked above.
        unsafe {
            x86::accumulate_rows_avx2(w, ws, groups, rows, stride, offset, n, len, out);
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa() == Isa::Neon {
        // SAFETY: NEON is part of AArch64; every access is inside the slices checked above.
        unsafe {
            neon::accumulate_rows(w, ws, groups, rows, stride, offset, n, len, out);
        }
        return;
    }
    for g in 0..groups {
        for r in 0..n {
            axpy(
                w[g * ws + r],
                &rows[r * stride + offset..][..len],
                &mut out[g * len..(g + 1) * len],
            );
        }
    }
}

/// `s[g · ws + i] = scale · q[g] · rows[i · stride + offset..][..key_len]` for the `n` rows and
/// every head: the score pass of attention with many heads per key row (MLA decode: all heads
/// share the latent rows). Heads run along the vector lanes, so each key value is broadcast
/// once for 8 or 16 heads and no horizontal sums are needed (on AVX2 the dot-product tiles
/// spill its 16 registers; on AVX-512 their horizontal sums cost a fifth of their FMAs).
pub fn scores_heads_major(
    q: &HeadsMajorQueries,
    rows: &[f32],
    stride: usize,
    offset: usize,
    n: usize,
    s: &mut [f32],
    ws: usize,
) {
    if n == 0 {
        return;
    }
    assert!(
        rows.len() >= (n - 1) * stride + offset + q.key_len,
        "scores: rows too short"
    );
    assert!(
        ws >= n && s.len() >= (q.groups - 1) * ws + n,
        "scores: output too short"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `HeadsMajorQueries::new` checked the ISA (and padded the heads to its lanes);
    // bounds above.
    unsafe {
        match isa() {
            Isa::Avx512 => x86::scores_heads_major_avx512(q, rows, stride, offset, n, s, ws),
            _ => x86::scores_heads_major_avx2(q, rows, stride, offset, n, s, ws),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("HeadsMajorQueries are only made on x86-64")
}
