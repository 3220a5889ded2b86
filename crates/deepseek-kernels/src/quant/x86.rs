//! Hand-written x86 dot products of GGML weight blocks with 8-bit activations.
//!
//! Each 32-value weight block is unpacked into one 256-bit register of bytes and multiplied with
//! up to four tokens' activations while it is in registers (batched decode and prefill read the
//! weights once). The int8 products go through `vpdpbusd` (AVX-512 VNNI) or
//! `vpmaddubsw`+`vpmaddwd` (AVX2); both take unsigned × signed bytes, so signed weights use the
//! usual trick |w| · (a · sign w). Scales are applied in f32 per 32-value block because the
//! activations carry one scale per 32 values.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::format::{QuantType, QK_K};

/// Unsigned × signed byte dot product, accumulated into 8 i32 lanes.
pub trait ByteDot {
    unsafe fn dot(acc: __m256i, w_u8: __m256i, a_i8: __m256i) -> __m256i;
}

pub struct Vnni;
pub struct Avx2;

impl ByteDot for Vnni {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, w, a)
    }
}

impl ByteDot for Avx2 {
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        // |w| ≤ 127 or ≤ 63 here, so the pairwise i16 sums cannot saturate.
        let p16 = _mm256_maddubs_epi16(w, a);
        _mm256_add_epi32(acc, _mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
    }
}

/// An f16 scale via F16C (the `half` crate's portable conversion costs more than a block's dot).
#[inline(always)]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline(always)]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Signed weights: |w| · (a with w's sign).
#[inline(always)]
unsafe fn dot_signed<B: ByteDot>(w: __m256i, a: __m256i) -> __m256i {
    B::dot(
        _mm256_setzero_si256(),
        _mm256_sign_epi8(w, w),
        _mm256_sign_epi8(a, w),
    )
}

/// 16 packed bytes → 32 values: low nibbles then high nibbles.
#[inline(always)]
unsafe fn nibbles_16(p: *const u8) -> __m256i {
    let x = _mm_loadu_si128(p as *const __m128i);
    let both = _mm256_set_m128i(_mm_srli_epi16(x, 4), x);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// IQ4's 4-bit indices (one per byte) → their int8 levels, by a byte shuffle of the table.
#[inline(always)]
unsafe fn iq4_levels(idx: __m256i) -> __m256i {
    let t = _mm_loadu_si128(super::format::IQ4_LEVELS.as_ptr() as *const __m128i);
    _mm256_shuffle_epi8(_mm256_set_m128i(t, t), idx)
}

/// 32 bits → 32 bytes holding 0x10 where the bit is set (Q5_0's fifth bits).
#[inline(always)]
unsafe fn bits_to_0x10(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes byte i/8 of the word; then test bit i%8.
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(v, shuf);
    let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Two high bits of Q6_K at bit offset `s`, moved to bits 4–5.
#[inline(always)]
unsafe fn q6_high(qh: __m256i, s: i32, three: __m256i) -> __m256i {
    let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
    _mm256_slli_epi16(_mm256_and_si256(v, three), 4)
}

/// Half `n` (0 or 1) of a Q6_K super-block at `b`: its four 32-value chunks as signed bytes
/// (chunk `i` holds values 128n + 32i ..).
#[inline(always)]
unsafe fn q6k_half(b: *const u8, n: usize) -> [__m256i; 4] {
    let (low4, three, off) = (
        _mm256_set1_epi8(0x0F),
        _mm256_set1_epi8(3),
        _mm256_set1_epi8(32),
    );
    let ql = b.add(n * 64);
    let qh = _mm256_loadu_si256(b.add(128 + n * 32) as *const __m256i);
    let l0 = _mm256_loadu_si256(ql as *const __m256i);
    let l1 = _mm256_loadu_si256(ql.add(32) as *const __m256i);
    let h = |s: i32| q6_high(qh, s, three);
    [
        _mm256_or_si256(_mm256_and_si256(l0, low4), h(0)),
        _mm256_or_si256(_mm256_and_si256(l1, low4), h(2)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), low4), h(4)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), low4), h(6)),
    ]
    .map(|q| _mm256_sub_epi8(q, off))
}

/// Chunk `c` (0..8) of a Q2_K/Q3_K super-block as bytes: `q` the 32 bytes of 2-bit values of
/// its half, `hm` Q3_K's hmask (its bit `c` is the third bit; the value then less 4, signed)
/// or `None` for Q2_K (unsigned 0..3).
#[inline(always)]
unsafe fn q23k_chunk(q: __m256i, hm: Option<__m256i>, c: usize) -> __m256i {
    let sh = _mm_cvtsi32_si128(2 * (c % 4) as i32);
    let low = _mm256_and_si256(_mm256_srl_epi16(q, sh), _mm256_set1_epi8(3));
    match hm {
        Some(hm) => {
            let h = _mm256_srl_epi16(hm, _mm_cvtsi32_si128(c as i32));
            let h = _mm256_slli_epi16(_mm256_and_si256(h, _mm256_set1_epi8(1)), 2);
            _mm256_sub_epi8(_mm256_or_si256(low, h), _mm256_set1_epi8(4))
        }
        None => low,
    }
}

/// Q3_K's sixteen 6-bit scales, unpacked four at a time in u32 lanes as ggml does (the same
/// values as `quant::q3k_scale`, which the tests compare against).
#[inline(always)]
unsafe fn q3k_scales(sc: *const u8, out: &mut [i8; 16]) {
    let word = |i: usize| (sc.add(4 * i) as *const u32).read_unaligned();
    let (a0, a1, hi) = (word(0), word(1), word(2));
    let (m4, m2) = (0x0F0F_0F0Fu32, 0x0303_0303u32);
    let words = [
        (a0 & m4) | ((hi & m2) << 4),
        (a1 & m4) | (((hi >> 2) & m2) << 4),
        ((a0 >> 4) & m4) | (((hi >> 4) & m2) << 4),
        ((a1 >> 4) & m4) | (((hi >> 6) & m2) << 4),
    ];
    for (o, w) in out.chunks_exact_mut(4).zip(words) {
        for (o, b) in o.iter_mut().zip(w.to_le_bytes()) {
            *o = b as i8 - 32;
        }
    }
}

/// One activation row: per-32 scales, per-32 sums, int8 values.
pub type ActRow<'a> = (&'a [f32], &'a [i32], &'a [i8]);

#[inline(always)]
pub(super) unsafe fn load_a(a: &ActRow, block: usize) -> __m256i {
    _mm256_loadu_si256(a.2.as_ptr().add(block * 32) as *const __m256i)
}

/// The `KIND` (see [`dot32`]) block at `b` as 32 bytes: signed values, or unsigned ones for
/// Q4_1 and Q5_1 (whose min is their second f16).
#[inline(always)]
unsafe fn unpack32<const KIND: u8>(b: *const u8) -> __m256i {
    match KIND {
        0 => _mm256_loadu_si256(b.add(2) as *const __m256i),
        1 => _mm256_sub_epi8(nibbles_16(b.add(2)), _mm256_set1_epi8(8)),
        2 => nibbles_16(b.add(4)),
        4 => {
            let qh = (b.add(4) as *const u32).read_unaligned();
            _mm256_or_si256(nibbles_16(b.add(8)), bits_to_0x10(qh))
        }
        5 => iq4_levels(nibbles_16(b.add(2))),
        _ => {
            let qh = (b.add(2) as *const u32).read_unaligned();
            let q = _mm256_or_si256(nibbles_16(b.add(6)), bits_to_0x10(qh));
            _mm256_sub_epi8(q, _mm256_set1_epi8(16))
        }
    }
}

/// IQ4_XS's signed scale of 32-value block `ib` of the super-block at `b` (low 4 bits in
/// scales_l, top 2 in scales_h, stored + 32).
#[inline(always)]
unsafe fn iq4xs_scale(b: *const u8, ib: usize) -> i32 {
    let sh = (b.add(2) as *const u16).read_unaligned();
    let sl = (*b.add(4 + ib / 2) >> (4 * (ib % 2))) & 0xF;
    (sl | ((((sh >> (2 * ib)) & 3) as u8) << 4)) as i32 - 32
}

/// The 32-wide formats, `KIND` 0..6 = Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL (a constant, so each
/// format gets its own loop), two blocks per iteration. Q4_1 and Q5_1 are unsigned with a min.
#[inline(always)]
unsafe fn dot32<B: ByteDot, const T: usize, const KIND: u8>(
    base: *const u8,
    nblocks: usize,
    acts: &[ActRow; T],
    acc: &mut [[__m256; 2]; T],
    extra: &mut [f32; T],
) {
    let bb = [34, 18, 20, 22, 24, 18][KIND as usize];
    let with_min = KIND == 2 || KIND == 4;
    let unpack = |b: *const u8| unpack32::<KIND>(b);
    let mut ib = 0;
    while ib < nblocks {
        let pair = if ib + 1 < nblocks { 2 } else { 1 };
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add((ib + 16) * bb) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add((ib + 16) * bb + 64) as *const i8);
        for h in 0..pair {
            let b = base.add((ib + h) * bb);
            let d = f16(b);
            let wv = unpack(b);
            for (k, a) in acts.iter().enumerate() {
                let av = load_a(a, ib + h);
                let p = if with_min {
                    B::dot(_mm256_setzero_si256(), wv, av)
                } else {
                    dot_signed::<B>(wv, av)
                };
                let f = _mm256_set1_ps(d * *a.0.get_unchecked(ib + h));
                let ch = &mut acc[k][h];
                *ch = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, *ch);
                if with_min {
                    extra[k] += f16(b.add(2)) * a.0[ib + h] * a.1[ib + h] as f32;
                }
            }
        }
        ib += 2;
    }
}

/// `Σ w·a` for one weight row against `T` activation rows.
#[inline(always)]
pub unsafe fn dot_rows<B: ByteDot, const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    // Two independent accumulator chains per token (indexed by constants, so they stay in
    // registers): one chain's FMAs would wait on each other every 32 values.
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let mut extra = [0.0f32; T];
    let bb = t.block_bytes();
    let nblocks = w.len() / bb;
    let base = w.as_ptr();
    match t {
        QuantType::Q8_0 => dot32::<B, T, 0>(base, nblocks, acts, &mut acc, &mut extra),
        QuantType::Q4_0 => dot32::<B, T, 1>(base, nblocks, acts, &mut acc, &mut extra),
        QuantType::Q4_1 => dot32::<B, T, 2>(base, nblocks, acts, &mut acc, &mut extra),
        QuantType::Q5_0 => dot32::<B, T, 3>(base, nblocks, acts, &mut acc, &mut extra),
        QuantType::Q5_1 => dot32::<B, T, 4>(base, nblocks, acts, &mut acc, &mut extra),
        QuantType::IQ4NL => dot32::<B, T, 5>(base, nblocks, acts, &mut acc, &mut extra),
        QuantType::IQ4XS => {
            for sb in 0..nblocks {
                let b = base.add(sb * bb);
                let d = f16(b);
                for ib in 0..8 {
                    let ls = iq4xs_scale(b, ib);
                    let wv = iq4_levels(nibbles_16(b.add(8 + 16 * ib)));
                    for (k, a) in acts.iter().enumerate() {
                        let ab = sb * (QK_K / 32) + ib;
                        // |level| ≤ 127: the sign trick's pairwise i16 sums stay in range.
                        let p = dot_signed::<B>(wv, load_a(a, ab));
                        let f = _mm256_set1_ps(d * ls as f32 * a.0[ab]);
                        let ch = &mut acc[k][ib & 1];
                        *ch = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), f, *ch);
                    }
                }
            }
        }
        QuantType::Q2K | QuantType::Q3K => {
            // 2-bit values: value 128n + 32j + l is bits 2j of byte 32n + l; Q3_K adds bit
            // (4n + j) of hmask[l] as a third bit, then subtracts 4. Each 32-value chunk has two
            // 16-value scales: the byte products' low 128 bits are the first 16 values, so one
            // `vpmaddwd` with the pair of scales (as i16) applies both, and the activation
            // block's scale is the chunk's only float factor.
            let one = _mm256_set1_epi8(1);
            let q3 = t == QuantType::Q3K;
            let pair = |s0: i8, s1: i8| {
                _mm256_set_m128i(_mm_set1_epi16(s1 as i16), _mm_set1_epi16(s0 as i16))
            };
            for sb in 0..nblocks {
                let b = base.add(sb * bb);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb + 64) as *const i8);
                let mut scales = [0i8; 16];
                let mut mins = [0i8; 16];
                let (qs, d, dmin, hm) = if q3 {
                    q3k_scales(b.add(96), &mut scales);
                    let hm = _mm256_loadu_si256(b as *const __m256i);
                    (b.add(32), f16(b.add(108)), 0.0, hm)
                } else {
                    for j in 0..16 {
                        let v = *b.add(j);
                        scales[j] = (v & 0xF) as i8;
                        mins[j] = (v >> 4) as i8;
                    }
                    (
                        b.add(16),
                        f16(b.add(80)),
                        f16(b.add(82)),
                        _mm256_setzero_si256(),
                    )
                };
                for n in 0..2 {
                    let q = _mm256_loadu_si256(qs.add(n * 32) as *const __m256i);
                    for j in 0..4 {
                        let c = n * 4 + j;
                        let v = q23k_chunk(q, q3.then_some(hm), c);
                        let (wu, ws) = if q3 {
                            (_mm256_sign_epi8(v, v), v)
                        } else {
                            (v, one)
                        };
                        let sc = pair(scales[2 * c], scales[2 * c + 1]);
                        let mn = pair(mins[2 * c], mins[2 * c + 1]);
                        for (k, a) in acts.iter().enumerate() {
                            let ab = sb * (QK_K / 32) + c;
                            let av = load_a(a, ab);
                            // |w| ≤ 4 and |a| ≤ 127: the pairwise i16 sums cannot saturate.
                            let av_w = if q3 { _mm256_sign_epi8(av, ws) } else { av };
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, av_w), sc);
                            let f = d * a.0[ab];
                            let ch = &mut acc[k][j & 1];
                            *ch = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(f), *ch);
                            if !q3 {
                                // The mins meet the sums of 16 activations.
                                let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(one, av), mn);
                                let fm = -dmin * a.0[ab];
                                let ch = &mut acc[k][(j + 1) & 1];
                                *ch = _mm256_fmadd_ps(
                                    _mm256_cvtepi32_ps(sums),
                                    _mm256_set1_ps(fm),
                                    *ch,
                                );
                            }
                        }
                    }
                }
            }
        }
        QuantType::Q4K | QuantType::Q5K => {
            for sb in 0..nblocks {
                let b = base.add(sb * bb);
                let (d, dmin) = (f16(b), f16(b.add(2)));
                let sc = std::slice::from_raw_parts(b.add(4), 12);
                let mut scales = [0u8; 8];
                let mut mins = [0u8; 8];
                for j in 0..8 {
                    let (s, m) = super::format::scale_min_k4(j, sc);
                    scales[j] = s;
                    mins[j] = m;
                }
                let (qs, qh) = if t == QuantType::Q4K {
                    (b.add(16), std::ptr::null())
                } else {
                    (b.add(48), b.add(16))
                };
                let low4 = _mm256_set1_epi8(0x0F);
                let qhv = if t == QuantType::Q5K {
                    _mm256_loadu_si256(qh as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for c in 0..4 {
                    let q = _mm256_loadu_si256(qs.add(c * 32) as *const __m256i);
                    let mut lo = _mm256_and_si256(q, low4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                    if t == QuantType::Q5K {
                        let one = _mm256_set1_epi8(1);
                        let sh = _mm_cvtsi32_si128(2 * c as i32);
                        let h = _mm256_srl_epi16(qhv, sh);
                        let h0 = _mm256_slli_epi16(_mm256_and_si256(h, one), 4);
                        let h1 =
                            _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(h, 1), one), 4);
                        lo = _mm256_or_si256(lo, h0);
                        hi = _mm256_or_si256(hi, h1);
                    }
                    let (j0, j1) = (2 * c, 2 * c + 1);
                    for (k, a) in acts.iter().enumerate() {
                        let (ab0, ab1) = (sb * 8 + j0, sb * 8 + j1);
                        let p0 = B::dot(_mm256_setzero_si256(), lo, load_a(a, ab0));
                        let p1 = B::dot(_mm256_setzero_si256(), hi, load_a(a, ab1));
                        let [c0, c1] = &mut acc[k];
                        *c0 = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p0),
                            _mm256_set1_ps(d * scales[j0] as f32 * a.0[ab0]),
                            *c0,
                        );
                        *c1 = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(p1),
                            _mm256_set1_ps(d * scales[j1] as f32 * a.0[ab1]),
                            *c1,
                        );
                    }
                }
                for (k, a) in acts.iter().enumerate() {
                    let mut m = 0.0f32;
                    for j in 0..8 {
                        let ab = sb * 8 + j;
                        m += mins[j] as f32 * a.0[ab] * a.1[ab] as f32;
                    }
                    extra[k] -= dmin * m;
                }
            }
        }
        QuantType::Q6K => {
            for sb in 0..nblocks {
                let b = base.add(sb * bb);
                let d = f16(b.add(208));
                let scales = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
                for n in 0..2 {
                    let qv = q6k_half(b, n);
                    for (i, &w8) in qv.iter().enumerate() {
                        let j = n * 4 + i; // 32-value sub-block within the super-block
                        let (s0, s1) = (scales[2 * j] as f32, scales[2 * j + 1] as f32);
                        for (k, a) in acts.iter().enumerate() {
                            let ab = sb * (QK_K / 32) + j;
                            let p = dot_signed::<B>(w8, load_a(a, ab));
                            let f = d * a.0[ab];
                            let sv = _mm256_set_m128(_mm_set1_ps(f * s1), _mm_set1_ps(f * s0));
                            let ch = &mut acc[k][i & 1];
                            *ch = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sv, *ch);
                        }
                    }
                }
            }
        }
        t => unreachable!("{}: the lattice types have quant::x86_iq", t.name()),
    }
    std::array::from_fn(|k| hsum(_mm256_add_ps(acc[k][0], acc[k][1])) + extra[k])
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_rows_vnni<const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    dot_rows::<Vnni, T>(t, w, acts)
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_avx2<const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    dot_rows::<Avx2, T>(t, w, acts)
}

/// [`super::format::quantize_block_reference`] on AVX2, bit for bit: the same max, scale,
/// product and half-away rounding (`y + copysign(0.5, y)` truncated), per 8 lanes.
#[target_feature(enable = "avx2")]
pub unsafe fn quantize_activations_avx2(xs: &[f32], qs: &mut [i8], sums: &mut [i32]) -> f32 {
    const QK: usize = super::format::QK;
    assert!(xs.len() == qs.len() && xs.len().is_multiple_of(QK) && sums.len() >= xs.len() / QK);
    let sign_bit = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for c in xs.chunks_exact(8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign_bit, _mm256_loadu_ps(c.as_ptr())));
    }
    let mut lanes = [0.0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), m);
    let amax = lanes.iter().fold(0.0f32, |a, &v| a.max(v));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let half = _mm256_set1_ps(0.5);
    for ((xb, qb), sum) in xs.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).zip(sums) {
        let mut q = [_mm256_setzero_si256(); 4];
        for (i, qi) in q.iter_mut().enumerate() {
            let y = _mm256_mul_ps(_mm256_loadu_ps(xb.as_ptr().add(8 * i)), id);
            let r = _mm256_add_ps(y, _mm256_or_ps(half, _mm256_and_ps(y, sign_bit)));
            *qi = _mm256_cvttps_epi32(r);
        }
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let s = _mm_hadd_epi32(s, s);
        *sum = _mm_cvtsi128_si32(_mm_hadd_epi32(s, s));
        // i32 → i8 (|q| ≤ 127, so no saturation): packs interleave the 128-bit halves, one
        // permute restores the order.
        let w = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let w = _mm256_permutevar8x32_epi32(w, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, w);
    }
    d
}

/// 32 int8 values → f32 `scale * q - min` at `out`, the first 16 with (`s0`, `m0`), the rest
/// with (`s1`, `m1`).
#[inline(always)]
unsafe fn store_dequant(q: __m256i, (s0, m0): (f32, f32), (s1, m1): (f32, f32), out: *mut f32) {
    let halves = [
        (_mm256_castsi256_si128(q), s0, m0),
        (_mm256_extracti128_si256::<1>(q), s1, m1),
    ];
    for (h, (v, s, m)) in halves.into_iter().enumerate() {
        let (sv, mv) = (_mm256_set1_ps(s), _mm256_set1_ps(m));
        for (e, part) in [v, _mm_unpackhi_epi64(v, v)].into_iter().enumerate() {
            let f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
            _mm256_storeu_ps(out.add(16 * h + 8 * e), _mm256_fmsub_ps(f, sv, mv));
        }
    }
}

/// [`super::format::dequantize_row`] on AVX2: each block unpacked in registers as the dot
/// products above unpack it, then widened. Prefill's dequantized panels go through here.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_row_avx2(t: QuantType, w: &[u8], out: &mut [f32]) {
    let bb = t.block_bytes();
    let nblocks = out.len() / t.block_elems();
    assert!(w.len() >= nblocks * bb);
    let low4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    for ib in 0..nblocks {
        let b = w.as_ptr().add(ib * bb);
        let o = out.as_mut_ptr().add(ib * t.block_elems());
        match t {
            QuantType::Q8_0
            | QuantType::Q4_0
            | QuantType::Q4_1
            | QuantType::Q5_0
            | QuantType::Q5_1
            | QuantType::IQ4NL => {
                let d = f16(b);
                let q = match t {
                    QuantType::Q8_0 => unpack32::<0>(b),
                    QuantType::Q4_0 => unpack32::<1>(b),
                    QuantType::Q4_1 => unpack32::<2>(b),
                    QuantType::Q5_0 => unpack32::<3>(b),
                    QuantType::Q5_1 => unpack32::<4>(b),
                    _ => unpack32::<5>(b),
                };
                let with_min = matches!(t, QuantType::Q4_1 | QuantType::Q5_1);
                let m = if with_min { -f16(b.add(2)) } else { 0.0 };
                store_dequant(q, (d, m), (d, m), o);
            }
            QuantType::Q4K | QuantType::Q5K => {
                let (d, dmin) = (f16(b), f16(b.add(2)));
                let sc = std::slice::from_raw_parts(b.add(4), 12);
                let (qs, qhv) = if t == QuantType::Q4K {
                    (b.add(16), _mm256_setzero_si256())
                } else {
                    (b.add(48), _mm256_loadu_si256(b.add(16) as *const __m256i))
                };
                for c in 0..4 {
                    let q = _mm256_loadu_si256(qs.add(c * 32) as *const __m256i);
                    let mut lo = _mm256_and_si256(q, low4);
                    let mut hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
                    if t == QuantType::Q5K {
                        let h = _mm256_srl_epi16(qhv, _mm_cvtsi32_si128(2 * c as i32));
                        lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(h, one), 4));
                        let h1 = _mm256_and_si256(_mm256_srli_epi16(h, 1), one);
                        hi = _mm256_or_si256(hi, _mm256_slli_epi16(h1, 4));
                    }
                    for (j, v) in [(2 * c, lo), (2 * c + 1, hi)] {
                        let (s, m) = super::format::scale_min_k4(j, sc);
                        let f = (d * s as f32, dmin * m as f32);
                        store_dequant(v, f, f, o.add(32 * j));
                    }
                }
            }
            QuantType::Q6K => {
                let d = f16(b.add(208));
                let scales = std::slice::from_raw_parts(b.add(192) as *const i8, 16);
                for n in 0..2 {
                    let qv = q6k_half(b, n);
                    for (i, v) in qv.into_iter().enumerate() {
                        let j = n * 4 + i;
                        let (s0, s1) = (d * scales[2 * j] as f32, d * scales[2 * j + 1] as f32);
                        store_dequant(v, (s0, 0.0), (s1, 0.0), o.add(32 * j));
                    }
                }
            }
            QuantType::IQ4XS => {
                let d = f16(b);
                for ib in 0..8 {
                    let ls = iq4xs_scale(b, ib);
                    let v = iq4_levels(nibbles_16(b.add(8 + 16 * ib)));
                    let f = (d * ls as f32, 0.0);
                    store_dequant(v, f, f, o.add(32 * ib));
                }
            }
            QuantType::Q2K | QuantType::Q3K => {
                let q3 = t == QuantType::Q3K;
                let (qs, hm) = if q3 {
                    (b.add(32), _mm256_loadu_si256(b as *const __m256i))
                } else {
                    (b.add(16), _mm256_setzero_si256())
                };
                let (d, dmin) = if q3 {
                    (f16(b.add(108)), 0.0)
                } else {
                    (f16(b.add(80)), f16(b.add(82)))
                };
                let factors = |j: usize| -> (f32, f32) {
                    if q3 {
                        let sc = std::slice::from_raw_parts(b.add(96), 12);
                        (d * super::unpack::q3k_scale(j, sc) as f32, 0.0)
                    } else {
                        let v = *b.add(j);
                        (d * (v & 0xF) as f32, dmin * (v >> 4) as f32)
                    }
                };
                for n in 0..2 {
                    let q = _mm256_loadu_si256(qs.add(n * 32) as *const __m256i);
                    for j in 0..4 {
                        let c = n * 4 + j;
                        let v = q23k_chunk(q, q3.then_some(hm), c);
                        store_dequant(v, factors(2 * c), factors(2 * c + 1), o.add(32 * c));
                    }
                }
            }
            t => unreachable!(
                "{}: the i-quants take the plain path (quant::dot, quant::dequant)",
                t.name()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn q3k_scales_match_the_plain_unpacking() {
        for seed in 0..64u32 {
            let sc: Vec<u8> = (0..12u32)
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) as u8)
                .collect();
            let mut got = [0i8; 16];
            // SAFETY: 12 readable bytes; plain integer code.
            unsafe { super::q3k_scales(sc.as_ptr(), &mut got) };
            for (j, &g) in got.iter().enumerate() {
                assert_eq!(g, crate::quant::q3k_scale(j, &sc), "scale {j} of {sc:?}");
            }
        }
    }
}
