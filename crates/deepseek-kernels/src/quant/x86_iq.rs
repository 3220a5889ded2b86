//! AVX2 and AVX-512 VNNI dot products of llama.cpp's lattice i-quants (IQ1_S … IQ3_S) with
//! 8-bit activations.
//!
//! These formats are bound by decoding, not by bytes (2 bits a weight): each 32-value chunk
//! becomes one register of grid magnitudes (every grid's values are ≥ 0; IQ1's `8·g ± 1` are
//! split into magnitude and sign) and one register of ±1 signs, built from 64-bit grid rows
//! and 64-bit sign rows looked up per 8 values (llama.cpp's scheme) or from explicit sign bits
//! by a byte shuffle. The signs go onto the activations, the magnitudes are the unsigned side
//! of the tier's byte dot, and the two 16-value halves take their scales in f32 (as Q6_K does).
//! The values and scales are those of [`super::iq::unpack`], which the tests compare against.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;

use super::format::{QuantType, QK_K};
use super::iq_tables::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS,
};
use super::x86::{f16, hsum, load_a, ActRow, Avx2, ByteDot, Vnni};

// The grids as statics: one copy in read-only memory that the lookups index.
static GRID_IQ2XXS: [[i8; 8]; 256] = IQ2XXS_GRID;
static GRID_IQ2XS: [[i8; 8]; 512] = IQ2XS_GRID;
static GRID_IQ2S: [[i8; 8]; 1024] = IQ2S_GRID;
static GRID_IQ3XXS: [[i8; 4]; 256] = IQ3XXS_GRID;
static GRID_IQ3S: [[i8; 4]; 512] = IQ3S_GRID;
static GRID_IQ1S: [[i8; 8]; 2048] = IQ1S_GRID;

/// The 7-bit sign patterns as 8 bytes of ±1 (byte `j` is -1 where bit `j` of `KSIGNS` is set).
static SIGNS: [u64; 128] = {
    let mut out = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let mut j = 0;
        while j < 8 {
            let b: u64 = if KSIGNS[i] >> j & 1 == 1 { 0xFF } else { 0x01 };
            out[i] |= b << (8 * j);
            j += 1;
        }
        i += 1;
    }
    out
};

#[inline(always)]
unsafe fn u16_at(p: *const u8) -> u32 {
    (p as *const u16).read_unaligned() as u32
}

#[inline(always)]
unsafe fn u32_at(p: *const u8) -> u32 {
    (p as *const u32).read_unaligned()
}

/// Grid row `i` of 8 values as a 64-bit lane. Every caller masks `i` below the grid's length.
#[inline(always)]
unsafe fn row8<const N: usize>(grid: &'static [[i8; 8]; N], i: usize) -> i64 {
    debug_assert!(i < N);
    (grid.as_ptr().add(i) as *const i64).read_unaligned()
}

/// Grid row `i` of 4 values as a 32-bit lane.
#[inline(always)]
unsafe fn row4<const N: usize>(grid: &'static [[i8; 4]; N], i: usize) -> i32 {
    debug_assert!(i < N);
    (grid.as_ptr().add(i) as *const i32).read_unaligned()
}

#[inline(always)]
unsafe fn sign7(bits: u32) -> i64 {
    *SIGNS.get_unchecked((bits & 127) as usize) as i64
}

/// 32 explicit sign bits (bit `i` for value `i`) → 32 bytes of ±1.
#[inline(always)]
unsafe fn signs_from_bits(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    // Byte i takes byte i/8 of the word, then tests bit i%8.
    let bytes = _mm256_shuffle_epi8(
        v,
        _mm256_set_epi64x(
            0x0303030303030303,
            0x0202020202020202,
            0x0101010101010101,
            0,
        ),
    );
    let mask = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
    _mm256_or_si256(set, _mm256_set1_epi8(1))
}

/// One 32-value chunk: unsigned magnitudes, ±1 signs (any nonzero byte whose sign is the
/// value's), and the integer scales of its two 16-value halves.
struct Chunk {
    mag: __m256i,
    sign: __m256i,
    scales: (i32, i32),
}

/// The super-block's float scale, such that value = d · scale · q as in [`super::iq::unpack`].
#[inline(always)]
unsafe fn super_scale<const KIND: u8>(b: *const u8) -> f32 {
    match KIND {
        IQ3XXS => f16(b) / 4.0,
        IQ3S => f16(b),
        IQ1M => {
            let sc = |k: usize| u16_at(b.add(48 + 2 * k)) as u16;
            let bits =
                (sc(0) >> 12) | (sc(1) >> 8 & 0xF0) | (sc(2) >> 4 & 0xF00) | (sc(3) & 0xF000);
            f16(&bits as *const u16 as *const u8) / 8.0
        }
        _ => f16(b) / 8.0,
    }
}

const IQ2XXS: u8 = 0;
const IQ2XS: u8 = 1;
const IQ2S: u8 = 2;
const IQ3XXS: u8 = 3;
const IQ3S: u8 = 4;
const IQ1S: u8 = 5;
const IQ1M: u8 = 6;

/// Chunk `ib` (0..8) of the super-block at `b`. The byte layouts are described in
/// [`super::iq::unpack`].
#[inline(always)]
unsafe fn chunk<const KIND: u8>(b: *const u8, ib: usize) -> Chunk {
    let odd = |s: u32| 2 * s as i32 + 1;
    match KIND {
        IQ2XXS => {
            let o = b.add(2 + 8 * ib);
            let aux = u32_at(o.add(4));
            let g = |l: usize| row8(&GRID_IQ2XXS, *o.add(l) as usize);
            let s = |l: usize| sign7(aux >> (7 * l));
            Chunk {
                mag: _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                sign: _mm256_set_epi64x(s(3), s(2), s(1), s(0)),
                scales: (odd(aux >> 28), odd(aux >> 28)),
            }
        }
        IQ2XS => {
            let v = |l: usize| u16_at(b.add(2 + 2 * (4 * ib + l)));
            let (v0, v1, v2, v3) = (v(0), v(1), v(2), v(3));
            let g = |v: u32| row8(&GRID_IQ2XS, (v & 511) as usize);
            let sc = *b.add(66 + ib) as u32;
            Chunk {
                mag: _mm256_set_epi64x(g(v3), g(v2), g(v1), g(v0)),
                sign: _mm256_set_epi64x(
                    sign7(v3 >> 9),
                    sign7(v2 >> 9),
                    sign7(v1 >> 9),
                    sign7(v0 >> 9),
                ),
                scales: (odd(sc & 15), odd(sc >> 4)),
            }
        }
        IQ2S => {
            let (qs, signs, qh, sc) = (b.add(2), b.add(34), b.add(66), b.add(74));
            let h = *qh.add(ib) as usize;
            let g = |l: usize| {
                let idx = *qs.add(4 * ib + l) as usize | (h >> (2 * l) & 3) << 8;
                row8(&GRID_IQ2S, idx)
            };
            let sc = *sc.add(ib) as u32;
            Chunk {
                mag: _mm256_set_epi64x(g(3), g(2), g(1), g(0)),
                sign: signs_from_bits(u32_at(signs.add(4 * ib))),
                scales: (odd(sc & 15), odd(sc >> 4)),
            }
        }
        IQ3XXS => {
            let qs = b.add(2 + 8 * ib);
            let aux = u32_at(b.add(66 + 4 * ib));
            let g = |j: usize| row4(&GRID_IQ3XXS, *qs.add(j) as usize);
            let s = |l: usize| sign7(aux >> (7 * l));
            Chunk {
                mag: _mm256_setr_epi32(g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)),
                sign: _mm256_set_epi64x(s(3), s(2), s(1), s(0)),
                scales: (odd(aux >> 28), odd(aux >> 28)),
            }
        }
        IQ3S => {
            let (qs, qh, signs, sc) = (b.add(2 + 8 * ib), b.add(66), b.add(74), b.add(106));
            let h = *qh.add(ib) as usize;
            let g = |j: usize| row4(&GRID_IQ3S, *qs.add(j) as usize | (h >> j & 1) << 8);
            let s = (*sc.add(ib / 2) >> (4 * (ib % 2)) & 15) as u32;
            Chunk {
                mag: _mm256_setr_epi32(g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)),
                sign: signs_from_bits(u32_at(signs.add(4 * ib))),
                scales: (odd(s), odd(s)),
            }
        }
        IQ1S => {
            // 8·g + shift with g ∈ {-1, 0, 1} and shift = ±1: never zero.
            let h = u16_at(b.add(34 + 2 * ib));
            let g = |l: usize| {
                let idx = *b.add(2 + 4 * ib + l) as usize | (h as usize >> (3 * l) & 7) << 8;
                row8(&GRID_IQ1S, idx)
            };
            let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
            let shift = _mm256_set1_epi8(if h & 0x8000 != 0 { -1 } else { 1 });
            let v = _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), grid), shift);
            let s = h >> 12 & 7;
            Chunk {
                mag: _mm256_abs_epi8(v),
                sign: v,
                scales: (odd(s), odd(s)),
            }
        }
        _ => {
            // IQ1_M: a nibble per 8 values (3 high index bits, the shift's sign).
            let (qs, qh) = (b.add(4 * ib), b.add(32 + 2 * ib));
            let nib = |l: usize| (*qh.add(l / 2) >> (4 * (l % 2)) & 15) as usize;
            let g = |l: usize| row8(&GRID_IQ1S, *qs.add(l) as usize | (nib(l) & 7) << 8);
            let sh = |l: usize| {
                if nib(l) & 8 != 0 {
                    -1i64
                } else {
                    0x0101010101010101
                }
            };
            let grid = _mm256_set_epi64x(g(3), g(2), g(1), g(0));
            let shift = _mm256_set_epi64x(sh(3), sh(2), sh(1), sh(0));
            let v = _mm256_add_epi8(_mm256_sign_epi8(_mm256_set1_epi8(8), grid), shift);
            let word = u16_at(b.add(48 + 2 * (ib / 2))) >> (6 * (ib % 2));
            Chunk {
                mag: _mm256_abs_epi8(v),
                sign: v,
                scales: (odd(word & 7), odd(word >> 3 & 7)),
            }
        }
    }
}

/// `Σ w·a` of one lattice-type row against `T` activation rows, `KIND` the type. `SB`: the
/// activations have one scale per super-block (llama.cpp's Q8_K form), so each super-block is
/// summed in integers, the chunks' scales applied as integers, and converted once.
#[inline(always)]
unsafe fn dot_rows_kind<B: ByteDot, const T: usize, const KIND: u8, const SB: bool>(
    bb: usize,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    // Two accumulator chains per token, so consecutive chunks' FMAs do not wait on each other.
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    let base = w.as_ptr();
    for sb in 0..w.len() / bb {
        let b = base.add(sb * bb);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb + 64) as *const i8);
        let d = super_scale::<KIND>(b);
        let mut isum = [[_mm256_setzero_si256(); 2]; T];
        // Chunks in pairs, each with its own accumulator: indexed by constants, the
        // accumulators stay in registers (a loop index put them on the stack: 5% slower decode).
        for ib in (0..8).step_by(2) {
            let pair = [chunk::<KIND>(b, ib), chunk::<KIND>(b, ib + 1)];
            for (h, c) in pair.iter().enumerate() {
                let (s0, s1) = c.scales;
                let si = _mm256_set_m128i(_mm_set1_epi32(s1), _mm_set1_epi32(s0));
                for (k, a) in acts.iter().enumerate() {
                    let ab = sb * (QK_K / 32) + ib + h;
                    let av = _mm256_sign_epi8(load_a(a, ab), c.sign);
                    // Magnitudes ≤ 62 and |a| ≤ 127: AVX2's pairwise i16 sums cannot saturate.
                    let p = B::dot(_mm256_setzero_si256(), c.mag, av);
                    if SB {
                        // ≤ 4·62·127 per lane, times a scale ≤ 31, eight chunks: within i32.
                        let is = &mut isum[k][h];
                        *is = _mm256_add_epi32(*is, _mm256_mullo_epi32(p, si));
                    } else {
                        let f = d * *a.0.get_unchecked(ab);
                        let sv =
                            _mm256_set_m128(_mm_set1_ps(f * s1 as f32), _mm_set1_ps(f * s0 as f32));
                        let ch = &mut acc[k][h];
                        *ch = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sv, *ch);
                    }
                }
            }
        }
        if SB {
            for (k, a) in acts.iter().enumerate() {
                let f = _mm256_set1_ps(d * *a.0.get_unchecked(sb * (QK_K / 32)));
                for h in 0..2 {
                    acc[k][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[k][h]), f, acc[k][h]);
                }
            }
        }
    }
    std::array::from_fn(|k| hsum(_mm256_add_ps(acc[k][0], acc[k][1])))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub unsafe fn dot_rows_vnni<const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[ActRow; T],
    per_super_block: bool,
) -> [f32; T] {
    match per_super_block {
        true => dot_rows::<Vnni, T, true>(t, w, acts),
        false => dot_rows::<Vnni, T, false>(t, w, acts),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows_avx2<const T: usize>(
    t: QuantType,
    w: &[u8],
    acts: &[ActRow; T],
    per_super_block: bool,
) -> [f32; T] {
    match per_super_block {
        true => dot_rows::<Avx2, T, true>(t, w, acts),
        false => dot_rows::<Avx2, T, false>(t, w, acts),
    }
}

/// `Σ w·a` of one lattice-type weight row against `T` activation rows (`SB`: one activation
/// scale per super-block).
#[inline(always)]
unsafe fn dot_rows<B: ByteDot, const T: usize, const SB: bool>(
    t: QuantType,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    let bb = t.block_bytes();
    match t {
        QuantType::IQ2XXS => dot_rows_kind::<B, T, IQ2XXS, SB>(bb, w, acts),
        QuantType::IQ2XS => dot_rows_kind::<B, T, IQ2XS, SB>(bb, w, acts),
        QuantType::IQ2S => dot_rows_kind::<B, T, IQ2S, SB>(bb, w, acts),
        QuantType::IQ3XXS => dot_rows_kind::<B, T, IQ3XXS, SB>(bb, w, acts),
        QuantType::IQ3S => dot_rows_kind::<B, T, IQ3S, SB>(bb, w, acts),
        QuantType::IQ1S => dot_rows_kind::<B, T, IQ1S, SB>(bb, w, acts),
        QuantType::IQ1M => dot_rows_kind::<B, T, IQ1M, SB>(bb, w, acts),
        t => unreachable!("{} is not a lattice i-quant", t.name()),
    }
}

/// One lattice-type row to f32 (the prefill GEMMs' panels): each 32-value chunk as for the
/// dot products, its signed values widened and scaled per 16.
#[inline(always)]
unsafe fn dequantize_kind<const KIND: u8>(bb: usize, w: &[u8], out: &mut [f32]) {
    for (sb, o) in out.chunks_exact_mut(QK_K).enumerate() {
        let b = w.as_ptr().add(sb * bb);
        let d = super_scale::<KIND>(b);
        for ib in 0..8 {
            let c = chunk::<KIND>(b, ib);
            let v = _mm256_sign_epi8(c.mag, c.sign);
            let halves = [_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v)];
            for (h, (half, s)) in halves.into_iter().zip([c.scales.0, c.scales.1]).enumerate() {
                let f = _mm256_set1_ps(d * s as f32);
                for (e, part) in [half, _mm_unpackhi_epi64(half, half)]
                    .into_iter()
                    .enumerate()
                {
                    let x = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part));
                    let at = o.as_mut_ptr().add(32 * ib + 16 * h + 8 * e);
                    _mm256_storeu_ps(at, _mm256_mul_ps(x, f));
                }
            }
        }
    }
}

/// One lattice-type row as int8 values `q` and a float scale per 32 values (`scales`), the
/// VNNI prefill panels' form. A chunk whose two 16-value scales are equal (always so for
/// IQ2_XXS, IQ3_XXS, IQ3_S and IQ1_S) goes in exactly, value = scale · q; one with two scales
/// (IQ2_XS, IQ2_S, IQ1_M) is scaled in 16-bit integers and rounded back to 8 bits against its
/// largest value, as requantizing its dequantized values would (an error of at most a 254th
/// of that value).
#[inline(always)]
unsafe fn unpack_kind<const KIND: u8>(bb: usize, w: &[u8], q: &mut [i8], scales: &mut [f32]) {
    for (sb, (o, sc)) in q
        .chunks_exact_mut(QK_K)
        .zip(scales.chunks_exact_mut(8))
        .enumerate()
    {
        let b = w.as_ptr().add(sb * bb);
        let d = super_scale::<KIND>(b);
        for (ib, s) in sc.iter_mut().enumerate() {
            let c = chunk::<KIND>(b, ib);
            let v = _mm256_sign_epi8(c.mag, c.sign);
            let at = o.as_mut_ptr().add(32 * ib) as *mut __m256i;
            if c.scales.0 == c.scales.1 {
                _mm256_storeu_si256(at, v);
                *s = d * c.scales.0 as f32;
                continue;
            }
            // Each half times its scale, in 16 bits (|grid| · scale < 2^15).
            let lo = _mm256_mullo_epi16(
                _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                _mm256_set1_epi16(c.scales.0 as i16),
            );
            let hi = _mm256_mullo_epi16(
                _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)),
                _mm256_set1_epi16(c.scales.1 as i16),
            );
            let amax = _mm256_max_epi16(_mm256_abs_epi16(lo), _mm256_abs_epi16(hi));
            let mut lanes = [0i16; 16];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, amax);
            let m = lanes.iter().copied().max().unwrap_or(0);
            if m == 0 {
                _mm256_storeu_si256(at, _mm256_setzero_si256());
                *s = 0.0;
                continue;
            }
            let f = _mm256_set1_ps(127.0 / m as f32);
            let round = |x: __m256i| _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(x), f));
            let i32s = |x: __m256i| {
                (
                    round(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(x))),
                    round(_mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(x))),
                )
            };
            let ((a, b2), (c2, d2)) = (i32s(lo), i32s(hi));
            // Pack 32-bit lanes back to bytes in order (packs work within 128-bit lanes).
            let w16 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(a, b2));
            let x16 = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(c2, d2));
            let bytes = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi16(w16, x16));
            _mm256_storeu_si256(at, bytes);
            *s = d * m as f32 / 127.0;
        }
    }
}

/// [`unpack_kind`] for lattice type `t`.
///
/// # Safety
/// AVX2 and F16C; `w` holds the row of `q.len()` values (a multiple of 256), `scales` one
/// entry per 32 of them.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn unpack_row_avx2(t: QuantType, w: &[u8], q: &mut [i8], scales: &mut [f32]) {
    assert!(q.len().is_multiple_of(QK_K) && w.len() >= t.row_bytes(q.len()));
    assert!(scales.len() >= q.len() / 32);
    let bb = t.block_bytes();
    match t {
        QuantType::IQ2XXS => unpack_kind::<IQ2XXS>(bb, w, q, scales),
        QuantType::IQ2XS => unpack_kind::<IQ2XS>(bb, w, q, scales),
        QuantType::IQ2S => unpack_kind::<IQ2S>(bb, w, q, scales),
        QuantType::IQ3XXS => unpack_kind::<IQ3XXS>(bb, w, q, scales),
        QuantType::IQ3S => unpack_kind::<IQ3S>(bb, w, q, scales),
        QuantType::IQ1S => unpack_kind::<IQ1S>(bb, w, q, scales),
        QuantType::IQ1M => unpack_kind::<IQ1M>(bb, w, q, scales),
        t => unreachable!("{} is not a lattice i-quant", t.name()),
    }
}

/// [`super::dequant::dequantize_row_plain`] for the lattice types on AVX2 (the same values).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_row_avx2(t: QuantType, w: &[u8], out: &mut [f32]) {
    assert!(out.len().is_multiple_of(QK_K) && w.len() >= t.row_bytes(out.len()));
    let bb = t.block_bytes();
    match t {
        QuantType::IQ2XXS => dequantize_kind::<IQ2XXS>(bb, w, out),
        QuantType::IQ2XS => dequantize_kind::<IQ2XS>(bb, w, out),
        QuantType::IQ2S => dequantize_kind::<IQ2S>(bb, w, out),
        QuantType::IQ3XXS => dequantize_kind::<IQ3XXS>(bb, w, out),
        QuantType::IQ3S => dequantize_kind::<IQ3S>(bb, w, out),
        QuantType::IQ1S => dequantize_kind::<IQ1S>(bb, w, out),
        QuantType::IQ1M => dequantize_kind::<IQ1M>(bb, w, out),
        t => unreachable!("{} is not a lattice i-quant", t.name()),
    }
}
