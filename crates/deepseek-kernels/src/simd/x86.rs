//! The x86-64 forms (AVX2 + FMA, AVX-512) of the SIMD kernels.

use super::scalar::{EXP_LN2, EXP_POLY};
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
    q: &super::scalar::HeadsMajorQueries,
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
    q: &super::scalar::HeadsMajorQueries,
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
    super::scalar::bf16_bits_to_f32(v)
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
        dst[j] = super::scalar::bf16_bits_to_f32(src[j]);
    }
}

/// The AVX-512 form's polynomial on 8 lanes for `d ≤ 0` (and NaN, which propagates);
/// 0 below −80. 2ⁿ is built in the exponent bits (n ≥ −116 after the flush).
#[inline(always)]
unsafe fn exp8_nonpositive(d: __m256) -> __m256 {
    let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(d, _mm256_set1_ps(-80.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        d,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
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
        y[c] += alpha * super::scalar::bf16_bits_to_f32(w[c]);
    }
}
