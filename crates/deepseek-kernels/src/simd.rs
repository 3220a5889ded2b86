//! SIMD dot products with run-time CPU detection: AVX-512F, AVX2+FMA on x86-64, NEON on
//! AArch64 (where it is part of the base architecture), else portable scalar code.
//!
//! The `*_multi` forms take one weight row and up to four activation rows: the weight row is
//! loaded and converted to f32 once and used for every activation row, which is what makes
//! batched decode and prefill cheaper than one GEMV per token.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    /// AArch64's Advanced SIMD (4 f32 lanes).
    Neon,
}

/// The vector width the float kernels use, from the active [`crate::tier`] (all AVX-512 tiers
/// and AMX use the 512-bit code; `DEEPSEEK_ISA` caps it).
pub fn isa() -> Isa {
    use crate::tier::{self, Tier};
    match tier::active() {
        Tier::Scalar => Isa::Scalar,
        Tier::Avx2 => Isa::Avx2,
        Tier::Avx512 | Tier::Avx512Vnni | Tier::Avx512Bf16 | Tier::Amx => Isa::Avx512,
        Tier::Neon | Tier::NeonDot => Isa::Neon,
    }
}

#[inline]
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

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

fn dot_scalar(w: impl Iterator<Item = f32>, x: &[f32]) -> f32 {
    // Eight partial sums, like the vector code, so rounding behaves alike.
    let mut s = [0.0f32; 8];
    for (i, (wv, &xv)) in w.zip(x).enumerate() {
        s[i & 7] += wv * xv;
    }
    s.iter().sum()
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

pub fn tile_scalar<W: Copy, const R: usize, const T: usize>(
    w: [&[W]; R],
    x: [&[f32]; T],
    acc: &mut [[f32; T]; R],
    conv: impl Fn(W) -> f32,
) {
    for r in 0..R {
        for t in 0..T {
            acc[r][t] = dot_scalar(w[r].iter().map(|&v| conv(v)), x[t]);
        }
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

/// Plain reference of [`silu_mul`]: [`crate::ops::silu`] (libm's `expf`) times `up`.
pub fn silu_mul_reference(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = crate::ops::silu(*g) * u;
    }
}

/// Cephes' `expf`, shared by the vector forms: exp(x) = 2ⁿ · exp(r), n = round(x / ln 2),
/// r = x − n·ln 2 with ln 2 in two parts (`EXP_LN2`), exp(r) = 1 + r + r²·P(r) with P's
/// coefficients from the highest power (`EXP_POLY`).
const EXP_LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Plain reference of [`exp_shifted_sum`] (libm's `expf`).
pub fn exp_shifted_sum_reference(v: &mut [f32], max: f32) -> f32 {
    let mut sum = 0.0;
    for x in v.iter_mut() {
        let d = *x - max;
        *x = if d < -80.0 { 0.0 } else { d.exp() };
        sum += *x;
    }
    sum
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

/// Plain reference of [`accumulate_rows`].
#[allow(clippy::too_many_arguments)]
pub fn accumulate_rows_reference(
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
    for g in 0..groups {
        for c in 0..len {
            let mut s = out[g * len + c] as f64;
            for r in 0..n {
                s += w[g * ws + r] as f64 * rows[r * stride + offset + c] as f64;
            }
            out[g * len + c] = s as f32;
        }
    }
}

/// Queries packed for [`scores_heads_major`]: `qt[c * heads + g] = scale · q[g][c]`, heads
/// padded to a multiple of 8 with zeros.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct HeadsMajorQueries {
    qt: Vec<f32>,
    heads: usize,
    groups: usize,
    key_len: usize,
}

impl HeadsMajorQueries {
    /// Packs `queries` (`groups × key_len`) when this CPU has a heads-major kernel and there are
    /// enough heads to fill its registers (8 or more on AVX2, 16 on AVX-512); `None` otherwise.
    pub fn new(queries: &[f32], key_len: usize, scale: f32) -> Option<Self> {
        let groups = queries.len() / key_len.max(1);
        let lanes = match isa() {
            Isa::Avx2 => 8,
            Isa::Avx512 => 16,
            _ => return None,
        };
        if groups < lanes || key_len == 0 {
            return None;
        }
        let heads = groups.next_multiple_of(lanes);
        let mut qt = vec![0.0f32; key_len * heads];
        for (g, q) in queries.chunks_exact(key_len).enumerate() {
            for (c, &v) in q.iter().enumerate() {
                qt[c * heads + g] = v * scale;
            }
        }
        Some(HeadsMajorQueries {
            qt,
            heads,
            groups,
            key_len,
        })
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

/// Plain reference of [`scores_heads_major`].
#[allow(clippy::too_many_arguments)]
pub fn scores_reference(
    queries: &[f32],
    key_len: usize,
    scale: f32,
    rows: &[f32],
    stride: usize,
    offset: usize,
    n: usize,
    s: &mut [f32],
    ws: usize,
) {
    for (g, qg) in queries.chunks_exact(key_len).enumerate() {
        for i in 0..n {
            let k = &rows[i * stride + offset..][..key_len];
            let d: f64 = qg.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
            s[g * ws + i] = (d * scale as f64) as f32;
        }
    }
}

/// `y += alpha * x`.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += alpha * xv;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{EXP_LN2, EXP_POLY};
    use std::arch::x86_64::*;

    /// 16 rows of 16 dwords transposed: row p of the result holds dword p of every input row.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn transpose16(
        r: &[std::arch::x86_64::__m512i; 16],
    ) -> [std::arch::x86_64::__m512i; 16] {
        use std::arch::x86_64::*;
        // Within each 128-bit lane L, u[4g + m] ends up holding column 4L + m of rows 4g..4g+4;
        // two rounds of lane shuffles then gather each column's four lanes.
        let t: [__m512i; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_epi32(a, b)
            } else {
                _mm512_unpackhi_epi32(a, b)
            }
        });
        let u: [__m512i; 16] = std::array::from_fn(|i| {
            let (g, m) = (i / 4, i % 4);
            let (a, b) = (t[4 * g + m / 2], t[4 * g + 2 + m / 2]);
            if m % 2 == 0 {
                _mm512_unpacklo_epi64(a, b)
            } else {
                _mm512_unpackhi_epi64(a, b)
            }
        });
        // v[m] holds columns m and 8 + m, v[4 + m] columns 4 + m and 12 + m, of rows 0..8 (two
        // lanes each); v[8..] the same for rows 8..16.
        let v: [__m512i; 16] = std::array::from_fn(|i| {
            let (half, j) = (i / 8, i % 8);
            let (a, b) = (u[8 * half + j % 4], u[8 * half + 4 + j % 4]);
            if j < 4 {
                _mm512_shuffle_i32x4::<0x88>(a, b)
            } else {
                _mm512_shuffle_i32x4::<0xdd>(a, b)
            }
        });
        std::array::from_fn(|p| {
            let j = (p / 4) % 2 * 4 + p % 4;
            if p < 8 {
                _mm512_shuffle_i32x4::<0x88>(v[j], v[8 + j])
            } else {
                _mm512_shuffle_i32x4::<0xdd>(v[j], v[8 + j])
            }
        })
    }

    /// See [`super::accumulate_rows`]; slices already checked by the caller.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn accumulate_rows_avx512(
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
        #[target_feature(enable = "avx512f")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const G: usize>(
            w: *const f32,
            ws: usize,
            rows: *const f32,
            stride: usize,
            n: usize,
            m: __mmask16,
            out: *mut f32,
            len: usize,
        ) {
            let mut acc = [_mm512_setzero_ps(); G];
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm512_maskz_loadu_ps(m, out.add(j * len));
            }
            for r in 0..n {
                let v = _mm512_maskz_loadu_ps(m, rows.add(r * stride));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(j * ws + r)), v, *a);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(j * len), m, *a);
            }
        }
        let mut c = 0;
        while c < len {
            let left = len - c;
            let m: __mmask16 = if left >= 16 {
                0xFFFF
            } else {
                ((1u32 << left) - 1) as u16
            };
            let rp = rows.as_ptr().add(offset + c);
            let mut g = 0;
            while g < groups {
                let wp = w.as_ptr().add(g * ws);
                let op = out.as_mut_ptr().add(g * len + c);
                let take = match groups - g {
                    16.. => {
                        tile::<16>(wp, ws, rp, stride, n, m, op, len);
                        16
                    }
                    8.. => {
                        tile::<8>(wp, ws, rp, stride, n, m, op, len);
                        8
                    }
                    4.. => {
                        tile::<4>(wp, ws, rp, stride, n, m, op, len);
                        4
                    }
                    _ => {
                        tile::<1>(wp, ws, rp, stride, n, m, op, len);
                        1
                    }
                };
                g += take;
            }
            c += 16;
        }
    }

    /// See [`super::accumulate_rows`]; slices already checked by the caller. A tile is 16
    /// columns (two registers) × up to 6 groups: 12 accumulators of AVX2's 16 registers, each
    /// row chunk loaded once for the tile's groups and each weight broadcast for two FMAs.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn accumulate_rows_avx2(
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
        /// `MASKED`: the last, partial 16 columns, through `vmaskmovps` (which never touches
        /// the masked-off lanes' memory).
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const G: usize, const MASKED: bool>(
            w: *const f32,
            ws: usize,
            rows: *const f32,
            stride: usize,
            n: usize,
            m: [__m256i; 2],
            out: *mut f32,
            len: usize,
        ) {
            let load = |p: *const f32, h: usize| {
                if MASKED {
                    _mm256_maskload_ps(p, m[h])
                } else {
                    _mm256_loadu_ps(p)
                }
            };
            let mut acc = [[_mm256_setzero_ps(); 2]; G];
            for (j, a) in acc.iter_mut().enumerate() {
                for (h, ah) in a.iter_mut().enumerate() {
                    *ah = load(out.add(j * len + 8 * h), h);
                }
            }
            for r in 0..n {
                let v0 = load(rows.add(r * stride), 0);
                let v1 = load(rows.add(r * stride + 8), 1);
                for (j, a) in acc.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*w.add(j * ws + r));
                    a[0] = _mm256_fmadd_ps(b, v0, a[0]);
                    a[1] = _mm256_fmadd_ps(b, v1, a[1]);
                }
            }
            for (j, a) in acc.iter().enumerate() {
                for (h, ah) in a.iter().enumerate() {
                    let p = out.add(j * len + 8 * h);
                    if MASKED {
                        _mm256_maskstore_ps(p, m[h], *ah);
                    } else {
                        _mm256_storeu_ps(p, *ah);
                    }
                }
            }
        }
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let mut c = 0;
        while c < len {
            let left = (len - c).min(16) as i32;
            let m = [
                _mm256_cmpgt_epi32(_mm256_set1_epi32(left), lane),
                _mm256_cmpgt_epi32(_mm256_set1_epi32(left - 8), lane),
            ];
            let rp = rows.as_ptr().add(offset + c);
            let mut g = 0;
            while g < groups {
                let wp = w.as_ptr().add(g * ws);
                let op = out.as_mut_ptr().add(g * len + c);
                macro_rules! run {
                    ($g:literal) => {{
                        if left == 16 {
                            tile::<$g, false>(wp, ws, rp, stride, n, m, op, len)
                        } else {
                            tile::<$g, true>(wp, ws, rp, stride, n, m, op, len)
                        }
                        $g
                    }};
                }
                g += match groups - g {
                    6.. => run!(6),
                    4.. => run!(4),
                    2.. => run!(2),
                    _ => run!(1),
                };
            }
            c += 16;
        }
    }

    /// See [`super::scores_heads_major`]; bounds checked by the caller. Tiles of up to 6 rows
    /// × 16 heads (12 accumulators): per key column, two query loads and one broadcast per row.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scores_heads_major_avx2(
        q: &super::HeadsMajorQueries,
        rows: &[f32],
        stride: usize,
        offset: usize,
        n: usize,
        s: &mut [f32],
        ws: usize,
    ) {
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn tile<const R: usize, const V: usize>(
            qt: *const f32,
            heads: usize,
            key_len: usize,
            rows: *const f32,
            stride: usize,
            out: &mut [[f32; 16]; 6],
        ) {
            let mut acc = [[_mm256_setzero_ps(); V]; R];
            for c in 0..key_len {
                let qv: [__m256; V] =
                    std::array::from_fn(|v| _mm256_loadu_ps(qt.add(c * heads + 8 * v)));
                for (r, a) in acc.iter_mut().enumerate() {
                    let k = _mm256_broadcast_ss(&*rows.add(r * stride + c));
                    for (av, qv) in a.iter_mut().zip(&qv) {
                        *av = _mm256_fmadd_ps(k, *qv, *av);
                    }
                }
            }
            for (a, o) in acc.iter().zip(out.iter_mut()) {
                for (v, av) in a.iter().enumerate() {
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), *av);
                }
            }
        }
        let mut tmp = [[0.0f32; 16]; 6];
        let mut h = 0;
        while h < q.groups {
            let v = if q.heads - h >= 16 { 2 } else { 1 };
            let qt = q.qt.as_ptr().add(h);
            let mut i = 0;
            while i < n {
                let r = (n - i).min(6);
                let rp = rows.as_ptr().add(i * stride + offset);
                macro_rules! run {
                    ($($r:literal),*) => {
                        match (r, v) {
                            $(($r, 2) => tile::<$r, 2>(qt, q.heads, q.key_len, rp, stride, &mut tmp),
                              ($r, _) => tile::<$r, 1>(qt, q.heads, q.key_len, rp, stride, &mut tmp),)*
                            _ => unreachable!(),
                        }
                    };
                }
                run!(1, 2, 3, 4, 5, 6);
                for (j, t) in tmp.iter().enumerate().take(r) {
                    for (l, &val) in t.iter().enumerate().take((8 * v).min(q.groups - h)) {
                        *s.get_unchecked_mut((h + l) * ws + i + j) = val;
                    }
                }
                i += r;
            }
            h += 8 * v;
        }
    }

    /// [`scores_heads_major_avx2`] on AVX-512: 16 heads per register, up to 12 rows per pass
    /// (12 accumulators; each key value is one broadcast operand of its FMA).
    pub unsafe fn scores_heads_major_avx512(
        q: &super::HeadsMajorQueries,
        rows: &[f32],
        stride: usize,
        offset: usize,
        n: usize,
        s: &mut [f32],
        ws: usize,
    ) {
        #[target_feature(enable = "avx512f")]
        unsafe fn tile<const R: usize>(
            qt: *const f32,
            heads: usize,
            key_len: usize,
            rows: *const f32,
            stride: usize,
            out: &mut [[f32; 16]; 12],
        ) {
            let mut acc = [_mm512_setzero_ps(); R];
            for c in 0..key_len {
                let qv = _mm512_loadu_ps(qt.add(c * heads));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*rows.add(r * stride + c)), qv, *a);
                }
            }
            for (a, o) in acc.iter().zip(out.iter_mut()) {
                _mm512_storeu_ps(o.as_mut_ptr(), *a);
            }
        }
        let mut tmp = [[0.0f32; 16]; 12];
        for h in (0..q.groups).step_by(16) {
            let qt = q.qt.as_ptr().add(h);
            let mut i = 0;
            while i < n {
                let r = (n - i).min(12);
                let rp = rows.as_ptr().add(i * stride + offset);
                macro_rules! run {
                    ($($r:literal),*) => {
                        match r {
                            $($r => tile::<$r>(qt, q.heads, q.key_len, rp, stride, &mut tmp),)*
                            _ => unreachable!(),
                        }
                    };
                }
                run!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
                for (j, t) in tmp.iter().enumerate().take(r) {
                    for (l, &val) in t.iter().enumerate().take(16.min(q.groups - h)) {
                        *s.get_unchecked_mut((h + l) * ws + i + j) = val;
                    }
                }
                i += r;
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_bf16_avx2(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load_bf16_avx512(p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }

    fn conv_f32(v: f32) -> f32 {
        v
    }
    fn conv_bf16(v: u16) -> f32 {
        super::bf16_bits_to_f32(v)
    }

    macro_rules! tile_kernel {
        ($name:ident, $feat:literal, $lanes:expr, $vec:ty, $zero:expr, $load_w:expr, $load_x:expr, $fma:expr, $reduce:expr, $wty:ty, $conv:expr) => {
            #[target_feature(enable = $feat)]
            pub unsafe fn $name<const R: usize, const T: usize>(
                w: [&[$wty]; R],
                x: [&[f32]; T],
                acc: &mut [[f32; T]; R],
            ) {
                let n = w[0].len();
                assert!(w.iter().all(|r| r.len() == n) && x.iter().all(|r| r.len() >= n));
                let main = n - n % $lanes;
                let mut s: [[$vec; T]; R] = [[$zero; T]; R];
                let mut i = 0;
                while i < main {
                    let xv: [$vec; T] = std::array::from_fn(|t| $load_x(x[t].as_ptr().add(i)));
                    for r in 0..R {
                        let wv: $vec = $load_w(w[r].as_ptr().add(i));
                        for t in 0..T {
                            s[r][t] = $fma(wv, xv[t], s[r][t]);
                        }
                    }
                    i += $lanes;
                }
                for r in 0..R {
                    for t in 0..T {
                        let mut v: f32 = $reduce(s[r][t]);
                        for c in main..n {
                            v += $conv(*w[r].get_unchecked(c)) * *x[t].get_unchecked(c);
                        }
                        acc[r][t] = v;
                    }
                }
            }
        };
    }

    tile_kernel!(
        tile_f32_avx2,
        "avx2,fma",
        8,
        __m256,
        _mm256_setzero_ps(),
        |p: *const f32| _mm256_loadu_ps(p),
        |p: *const f32| _mm256_loadu_ps(p),
        |a, b, c| _mm256_fmadd_ps(a, b, c),
        |v| hsum256(v),
        f32,
        conv_f32
    );
    tile_kernel!(
        tile_bf16_avx2,
        "avx2,fma",
        8,
        __m256,
        _mm256_setzero_ps(),
        |p: *const u16| load_bf16_avx2(p),
        |p: *const f32| _mm256_loadu_ps(p),
        |a, b, c| _mm256_fmadd_ps(a, b, c),
        |v| hsum256(v),
        u16,
        conv_bf16
    );
    tile_kernel!(
        tile_f32_avx512,
        "avx512f",
        16,
        __m512,
        _mm512_setzero_ps(),
        |p: *const f32| _mm512_loadu_ps(p),
        |p: *const f32| _mm512_loadu_ps(p),
        |a, b, c| _mm512_fmadd_ps(a, b, c),
        |v| _mm512_reduce_add_ps(v),
        f32,
        conv_f32
    );
    tile_kernel!(
        tile_bf16_widening_avx512,
        "avx512f,avx512bw",
        16,
        __m512,
        _mm512_setzero_ps(),
        |p: *const u16| load_bf16_avx512(p),
        |p: *const f32| _mm512_loadu_ps(p),
        |a, b, c| _mm512_fmadd_ps(a, b, c),
        |v| _mm512_reduce_add_ps(v),
        u16,
        conv_bf16
    );

    /// bf16 weights against f32 activations, 32 columns per step: one 64-byte load holds 16
    /// pairs of weights; the even ones become f32 by a shift, the odd ones by masking off the
    /// low half, and the activations are split into even and odd columns once per step for all
    /// `R` rows. Three vector instructions per 16 weights besides the FMA, against four with a
    /// widening load (`vpmovzxwd` + shift), whose cross-lane widening held a single core's
    /// GEMV to 20 GB/s (`examples/gemv_speed`), under the memory bus's rate. Exact: the
    /// products and sums are the f32 ones of the widened weights.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn tile_bf16_avx512<const R: usize, const T: usize>(
        w: [&[u16]; R],
        x: [&[f32]; T],
        acc: &mut [[f32; T]; R],
    ) {
        let n = w[0].len();
        assert!(w.iter().all(|r| r.len() == n) && x.iter().all(|r| r.len() >= n));
        let main = n - n % 32;
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
        let mut s: [[__m512; T]; R] = [[_mm512_setzero_ps(); T]; R];
        let mut i = 0;
        while i < main {
            let xe: [[__m512; 2]; T] = std::array::from_fn(|t| {
                let p = x[t].as_ptr().add(i);
                let (a, b) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                [
                    _mm512_permutex2var_ps(a, even, b),
                    _mm512_permutex2var_ps(a, odd, b),
                ]
            });
            for r in 0..R {
                let wv = _mm512_loadu_si512(w[r].as_ptr().add(i) as *const _);
                let we = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wv));
                let wo = _mm512_castsi512_ps(_mm512_and_si512(wv, high));
                for t in 0..T {
                    s[r][t] = _mm512_fmadd_ps(we, xe[t][0], s[r][t]);
                    s[r][t] = _mm512_fmadd_ps(wo, xe[t][1], s[r][t]);
                }
            }
            i += 32;
        }
        // At most 31 columns left: the widening kernel takes them.
        let mut rest = [[0.0f32; T]; R];
        if main < n {
            tile_bf16_widening_avx512(
                std::array::from_fn(|r| &w[r][main..]),
                std::array::from_fn(|t| &x[t][main..n]),
                &mut rest,
            );
        }
        for r in 0..R {
            for t in 0..T {
                acc[r][t] = _mm512_reduce_add_ps(s[r][t]) + rest[r][t];
            }
        }
    }

    /// exp(x) = 2ⁿ · exp(r), n = round(x / ln 2), r = x − n·ln 2 (in two parts, |r| ≤ ln2/2),
    /// exp(r) = 1 + r + r²·P(r) with Cephes' `expf` coefficients; 2ⁿ applied by `vscalefps`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum_avx512(v: &mut [f32], max: f32) -> f32 {
        let m = _mm512_set1_ps(max);
        let mut acc = _mm512_setzero_ps();
        let exp16 = |x: __m512| {
            let d = _mm512_sub_ps(x, m);
            let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(d, _mm512_set1_ps(-80.0));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(d, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[0]), d);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[1]), r);
            let mut p = _mm512_set1_ps(EXP_POLY[0]);
            for c in &EXP_POLY[1..] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
            }
            let r2 = _mm512_mul_ps(r, r);
            let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
            _mm512_maskz_scalef_ps(keep, e, n)
        };
        let mut chunks = v.chunks_exact_mut(16);
        for c in &mut chunks {
            let e = exp16(_mm512_loadu_ps(c.as_ptr()));
            _mm512_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm512_add_ps(acc, e);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let k: __mmask16 = (1u32 << rest.len()) as u16 - 1;
            let e = exp16(_mm512_maskz_loadu_ps(k, rest.as_ptr()));
            _mm512_mask_storeu_ps(rest.as_mut_ptr(), k, e);
            acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(k, e));
        }
        _mm512_reduce_add_ps(acc)
    }

    /// bf16 → f32 (the bits shifted up), 8 values per step: the GEMM's panel widening, where
    /// the compiler's SSE2 form was ~12% of a bf16 prefill.
    #[target_feature(enable = "avx2")]
    pub unsafe fn bf16_to_f32_avx2(src: &[u16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let main = n - n % 8;
        let mut i = 0;
        while i < main {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            let f = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
            _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, f);
            i += 8;
        }
        for j in main..n {
            dst[j] = super::bf16_bits_to_f32(src[j]);
        }
    }

    /// The AVX-512 form's polynomial on 8 lanes for `d ≤ 0` (and NaN, which propagates);
    /// 0 below −80. 2ⁿ is built in the exponent bits (n ≥ −116 after the flush).
    #[inline(always)]
    unsafe fn exp8_nonpositive(d: __m256) -> __m256 {
        let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(d, _mm256_set1_ps(-80.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(d, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2[0]), d);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2[1]), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        // A NaN n becomes −126 here (max returns its second operand); e is NaN anyway.
        let ni = _mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-126.0)));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            ni,
            _mm256_set1_epi32(127),
        )));
        _mm256_and_ps(_mm256_mul_ps(e, pow2), keep)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted_sum_avx2(v: &mut [f32], max: f32) -> f32 {
        let m = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            // Padding of −∞ flushes to 0 and adds nothing.
            let mut buf = [f32::NEG_INFINITY; 8];
            buf[..rest.len()].copy_from_slice(rest);
            let e = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), m));
            _mm256_storeu_ps(buf.as_mut_ptr(), e);
            rest.copy_from_slice(&buf[..rest.len()]);
            acc = _mm256_add_ps(acc, e);
        }
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    /// silu(g) = g / (1 + e^−g), taken as g / (1 + e) for g ≥ 0 and g·e / (1 + e) below, with
    /// e = exp(−|g|) ≤ 1 so the polynomial never overflows.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
        let silu8 = |g: __m256, u: __m256| {
            let sign = _mm256_set1_ps(-0.0);
            let e = exp8_nonpositive(_mm256_or_ps(g, sign));
            let neg = _mm256_cmp_ps::<_CMP_LT_OQ>(g, _mm256_setzero_ps());
            let num = _mm256_blendv_ps(g, _mm256_mul_ps(g, e), neg);
            _mm256_mul_ps(_mm256_div_ps(num, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
        };
        let n = gate.len().min(up.len());
        let main = n - n % 8;
        let mut i = 0;
        while i < main {
            let gp = gate.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                gp,
                silu8(_mm256_loadu_ps(gp), _mm256_loadu_ps(up.as_ptr().add(i))),
            );
            i += 8;
        }
        if main < n {
            let (mut g, mut u) = ([0.0f32; 8], [0.0f32; 8]);
            g[..n - main].copy_from_slice(&gate[main..n]);
            u[..n - main].copy_from_slice(&up[main..n]);
            _mm256_storeu_ps(
                g.as_mut_ptr(),
                silu8(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())),
            );
            gate[main..n].copy_from_slice(&g[..n - main]);
        }
    }

    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn axpy_bf16_avx512(alpha: f32, w: &[u16], y: &mut [f32]) {
        let n = w.len().min(y.len());
        let main = n - n % 16;
        let a = _mm512_set1_ps(alpha);
        let mut i = 0;
        while i < main {
            let wv = load_bf16_avx512(w.as_ptr().add(i));
            let yp = y.as_mut_ptr().add(i);
            _mm512_storeu_ps(yp, _mm512_fmadd_ps(a, wv, _mm512_loadu_ps(yp)));
            i += 16;
        }
        for c in main..n {
            y[c] += alpha * super::bf16_bits_to_f32(w[c]);
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod neon {
    //! The same kernels as `x86` on 4-lane NEON registers. Each loop step takes 8 values (two
    //! registers) so every accumulator chain has a second one beside it.
    use super::{EXP_LN2, EXP_POLY};
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
                    let x0: [float32x4_t; T] =
                        std::array::from_fn(|t| vld1q_f32(x[t].as_ptr().add(i)));
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
        super::bf16_bits_to_f32
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
            y[c] += alpha * super::bf16_bits_to_f32(w[c]);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_shifted_sum_matches_libm() {
        // Every lane position and remainder length, values from far below the flush point to
        // the maximum, NaN passed through.
        for n in [1usize, 15, 16, 17, 64, 100] {
            let v: Vec<f32> = (0..n).map(|i| 3.0 - (i as f32 * 0.8713) % 90.0).collect();
            let (mut fast, mut slow) = (v.clone(), v.clone());
            let (a, b) = (
                exp_shifted_sum(&mut fast, 3.0),
                exp_shifted_sum_reference(&mut slow, 3.0),
            );
            for (x, y) in fast.iter().zip(&slow) {
                assert!((x - y).abs() <= 2.5e-7 * y, "{x} vs {y}");
                assert_eq!(*x == 0.0, *y == 0.0);
            }
            assert!((a - b).abs() <= 1e-6 * b, "sum {a} vs {b}");
        }
        let mut v = [0.5, f32::NAN, -100.0];
        exp_shifted_sum(&mut v, 0.5);
        assert_eq!(v[0], 1.0);
        assert!(v[1].is_nan());
        assert_eq!(v[2], 0.0);
    }

    #[test]
    fn bf16_widening_is_exact() {
        for n in [0usize, 1, 7, 8, 9, 100] {
            let src: Vec<u16> = (0..n)
                .map(|i| (i as u16).wrapping_mul(40503) ^ 0x3f80)
                .collect();
            let mut got = vec![f32::NAN; n];
            bf16_to_f32(&src, &mut got);
            for (s, g) in src.iter().zip(&got) {
                assert_eq!(g.to_bits(), bf16_bits_to_f32(*s).to_bits());
            }
        }
    }

    #[test]
    fn silu_mul_matches_libm() {
        for n in [1usize, 7, 8, 9, 100] {
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 1.3713) % 60.0 - 30.0).collect();
            let u: Vec<f32> = (0..n).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
            let (mut fast, mut slow) = (g.clone(), g.clone());
            silu_mul(&mut fast, &u);
            silu_mul_reference(&mut slow, &u);
            for (x, y) in fast.iter().zip(&slow) {
                assert!((x - y).abs() <= 1e-6 * y.abs() + 1e-30, "{x} vs {y}");
            }
        }
        // Far out on both sides, zero, and NaN.
        let mut g = [100.0, -100.0, 0.0, f32::NAN, 1e-20, -1e-20];
        silu_mul(&mut g, &[1.0; 6]);
        assert_eq!(g[0], 100.0);
        assert!(g[1].abs() < 1e-30);
        assert_eq!(g[2], 0.0);
        assert!(g[3].is_nan());
        assert!((g[4] - 0.5e-20).abs() < 1e-27 && (g[5] + 0.5e-20).abs() < 1e-27);
    }

    #[test]
    fn accumulate_rows_matches_reference() {
        for (groups, n, len, stride, offset) in [
            (16, 64, 512, 576, 0),
            (19, 7, 40, 50, 3),
            (3, 1, 5, 9, 2),
            (8, 33, 64, 256, 128),
        ] {
            let ws = n + 3;
            let w: Vec<f32> = (0..groups * ws)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let rows: Vec<f32> = (0..n * stride + offset + len)
                .map(|i| ((i * 11 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let init: Vec<f32> = (0..groups * len).map(|i| (i % 5) as f32 * 0.1).collect();
            let mut got = init.clone();
            accumulate_rows(&w, ws, groups, &rows, stride, offset, n, len, &mut got);
            let mut want = init.clone();
            accumulate_rows_reference(&w, ws, groups, &rows, stride, offset, n, len, &mut want);
            #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
            let mut results = vec![got];
            // The AVX2 kernel too where the dispatcher picks a wider one.
            #[cfg(target_arch = "x86_64")]
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                let mut got = init.clone();
                // SAFETY: features detected just above; slices sized as the dispatcher checks.
                unsafe {
                    x86::accumulate_rows_avx2(
                        &w, ws, groups, &rows, stride, offset, n, len, &mut got,
                    )
                };
                results.push(got);
            }
            for got in results {
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-4, "{groups}x{n}x{len}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn heads_major_scores_match_reference() {
        for (groups, n, key_len, stride, offset) in [
            (16, 64, 576, 576, 0),
            (19, 13, 40, 50, 3),
            (8, 5, 32, 40, 8),
            (128, 7, 24, 24, 0),
        ] {
            let q: Vec<f32> = (0..groups * key_len)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
                .collect();
            let rows: Vec<f32> = (0..n * stride + offset + key_len)
                .map(|i| ((i * 11 % 17) as f32 - 8.0) / 9.0)
                .collect();
            let ws = n + 2;
            let mut want = vec![0.0f32; groups * ws];
            scores_reference(&q, key_len, 0.3, &rows, stride, offset, n, &mut want, ws);
            let Some(packed) = HeadsMajorQueries::new(&q, key_len, 0.3) else {
                continue; // no heads-major kernel on this CPU, or too few heads for it
            };
            let mut got = vec![0.0f32; groups * ws];
            scores_heads_major(&packed, &rows, stride, offset, n, &mut got, ws);
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                    "{groups}x{n}: {a} vs {b}"
                );
            }
        }
    }

    use super::*;

    /// Every ISA path this CPU has, against the scalar code (the dispatcher only ever picks the
    /// widest, so the others are exercised here).
    #[test]
    fn all_isa_tiles_agree_with_scalar() {
        // Whole 32-column steps with short and long tails, and shorter than one step.
        for n in [77, 127, 9] {
            tiles_agree_with_scalar(n);
        }
    }

    fn tiles_agree_with_scalar(n: usize) {
        let w: Vec<Vec<f32>> = (0..4)
            .map(|r| {
                (0..n)
                    .map(|i| ((i * 13 + r * 7) % 17) as f32 / 8.0 - 1.0)
                    .collect()
            })
            .collect();
        let wb: Vec<Vec<u16>> = w
            .iter()
            .map(|r| {
                r.iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect()
            })
            .collect();
        let x: Vec<Vec<f32>> = (0..3)
            .map(|t| {
                (0..n)
                    .map(|i| ((i * 5 + t) % 11) as f32 / 5.0 - 1.0)
                    .collect()
            })
            .collect();
        let wr: [&[f32]; 4] = std::array::from_fn(|r| &w[r][..]);
        let wbr: [&[u16]; 4] = std::array::from_fn(|r| &wb[r][..]);
        let xr: [&[f32]; 3] = std::array::from_fn(|t| &x[t][..]);
        let mut want = [[0.0f32; 3]; 4];
        tile_scalar(wr, xr, &mut want, |v| v);
        let mut want_b = [[0.0f32; 3]; 4];
        tile_scalar(wbr, xr, &mut want_b, bf16_bits_to_f32);
        let close = |a: &[[f32; 3]; 4], b: &[[f32; 3]; 4]| {
            a.iter()
                .flatten()
                .zip(b.iter().flatten())
                .all(|(x, y)| (x - y).abs() < 1e-4)
        };
        #[allow(unused)]
        let check_axpy = |axpy: unsafe fn(f32, &[u16], &mut [f32]), isa: &str| {
            let mut y = vec![0.5f32; n];
            let mut y_ref = y.clone();
            unsafe { axpy(0.25, &wb[0], &mut y) };
            for (yv, &b) in y_ref.iter_mut().zip(&wb[0]) {
                *yv += 0.25 * bf16_bits_to_f32(b);
            }
            let ok = y.iter().zip(&y_ref).all(|(a, b)| (a - b).abs() < 1e-6);
            assert!(ok, "{isa} axpy_bf16");
        };
        #[cfg(target_arch = "x86_64")]
        {
            let mut got = [[0.0f32; 3]; 4];
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                unsafe { x86::tile_f32_avx2(wr, xr, &mut got) };
                assert!(close(&got, &want), "avx2 f32");
                unsafe { x86::tile_bf16_avx2(wbr, xr, &mut got) };
                assert!(close(&got, &want_b), "avx2 bf16");
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
                unsafe { x86::tile_f32_avx512(wr, xr, &mut got) };
                assert!(close(&got, &want), "avx512 f32");
                unsafe { x86::tile_bf16_avx512(wbr, xr, &mut got) };
                assert!(close(&got, &want_b), "avx512 bf16");
                unsafe { x86::tile_bf16_widening_avx512(wbr, xr, &mut got) };
                assert!(close(&got, &want_b), "avx512 bf16 (widening)");
                check_axpy(x86::axpy_bf16_avx512, "avx512");
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            let mut got = [[0.0f32; 3]; 4];
            unsafe { neon::tile_f32(wr, xr, &mut got) };
            assert!(close(&got, &want), "neon f32");
            unsafe { neon::tile_bf16(wbr, xr, &mut got) };
            assert!(close(&got, &want_b), "neon bf16");
            check_axpy(neon::axpy_bf16, "neon");
        }
        let mut acc = [0.0f32; 3];
        dot_f32_multi(&w[0], &xr, &mut acc);
        assert!(acc.iter().zip(&want[0]).all(|(a, b)| (a - b).abs() < 1e-4));
    }
}
