//! Decode dot products of IQ2_XXS, IQ3_XXS and IQ3_S with AVX-512 VBMI: a whole super-block's grid
//! lookups and sign patterns in a few byte permutes instead of one scalar load per 8 values.
//!
//! [`super::x86_iq`] builds each 32-value chunk from eight 64-bit table loads and eight inserts
//! (llama.cpp's scheme); that is ~30 instructions per 32 values and, at 2–3 bits a weight, it
//! is what decode waits on. Here, per 256 values:
//! - each grid row is stored as a code of 2 bits (IQ2_XXS, levels 8/25/43) or 3 bits (IQ3_XXS,
//!   levels 4…62; IQ3_S, 1…15) per value: 256 (IQ3_S: 512) codes of 16 bits, held as tables of
//!   their low and high bytes, so one `vpermi2b` pair looks up 64 grid indices at once;
//! - `vpmultishiftqb` cuts each code into one byte per value and `vpermb` maps those to the
//!   levels, 64 values per instruction;
//! - the 7-bit sign indices are cut out by `vpmultishiftqb` too, looked up in llama.cpp's
//!   128-entry `ksigns` table by one `vpermi2b`, and `vpshufbitqmb` turns 64 of their bits
//!   into a mask register that negates the activations where the weight is negative.
//!
//! The products are `vpdpbusd` (unsigned magnitudes × signed activations) and each 32-value
//! chunk's odd integer scale is applied in integers, with the activations' one scale per
//! super-block (llama.cpp's Q8_K form) applied once. The values are those of
//! [`super::iq::unpack`]; the tests compare all three x86 forms against the dequantized rows.

#![allow(clippy::missing_safety_doc)]

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::format::{QuantType, QK_K};
use super::iq_tables::{IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS};
use super::x86::{f16, ActRow};

/// Whether this CPU has what these kernels need (VBMI's byte permutes and BITALG's bit gather
/// beside VNNI): Ice Lake, Sapphire Rapids, AMD Zen 4 and later; not Skylake-SP, Cascade Lake
/// or Cooper Lake.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("avx512bitalg")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("f16c")
            && is_x86_feature_detected!("bmi2")
    })
}

/// The types these kernels decode.
pub fn handles(t: QuantType) -> bool {
    matches!(
        t,
        QuantType::IQ2XXS
            | QuantType::IQ2XS
            | QuantType::IQ2S
            | QuantType::IQ3XXS
            | QuantType::IQ3S
    )
}

#[repr(C, align(64))]
struct Bytes<const N: usize>([u8; N]);

const LEVELS2: [i8; 3] = [8, 25, 43];
const LEVELS3: [i8; 8] = [4, 12, 20, 28, 36, 44, 52, 62];
const LEVELS3S: [i8; 8] = [1, 3, 5, 7, 9, 11, 13, 15];

const fn level(levels: &[i8], v: i8) -> u16 {
    let mut i = 0;
    while i < levels.len() {
        if levels[i] == v {
            return i as u16;
        }
        i += 1;
    }
    panic!("a grid value outside the type's levels")
}

/// Each grid row as a code of `BITS` bits per value (value `j` at bit `BITS·j`): the low bytes
/// in `0..N`, the high bytes in `N..2N` (`OUT` = 2N).
const fn codes<const W: usize, const BITS: usize, const N: usize, const OUT: usize>(
    grid: &[[i8; W]; N],
    levels: &[i8],
) -> Bytes<OUT> {
    assert!(OUT == 2 * N);
    let mut out = [0u8; OUT];
    let mut i = 0;
    while i < N {
        let mut c = 0u16;
        let mut j = 0;
        while j < W {
            c |= level(levels, grid[i][j]) << (BITS * j);
            j += 1;
        }
        out[i] = c as u8;
        out[N + i] = (c >> 8) as u8;
        i += 1;
    }
    Bytes(out)
}

static CODES2: Bytes<512> = codes::<8, 2, 256, 512>(&IQ2XXS_GRID, &LEVELS2);
static CODES3: Bytes<512> = codes::<4, 3, 256, 512>(&IQ3XXS_GRID, &LEVELS3);
static CODES3S: Bytes<1024> = codes::<4, 3, 512, 1024>(&IQ3S_GRID, &LEVELS3S);
static CODES2XS: Bytes<1024> = codes::<8, 2, 512, 1024>(&IQ2XS_GRID, &LEVELS2);
static CODES2S: Bytes<2048> = codes::<8, 2, 1024, 2048>(&IQ2S_GRID, &LEVELS2);
static KSIGNS64: Bytes<128> = Bytes(KSIGNS);

/// A `vpermb` table of 64 entries: entry `i` is the level of code `i mod levels.len()`
/// rounded up to a power of two (`vpmultishiftqb` leaves the next values' bits above).
const fn level_lut(levels: &[i8], mask: usize) -> Bytes<64> {
    let mut out = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let k = i & mask;
        out[i] = if k < levels.len() { levels[k] as u8 } else { 0 };
        i += 1;
    }
    Bytes(out)
}

static LUT2: Bytes<64> = level_lut(&LEVELS2, 3);
static LUT3: Bytes<64> = level_lut(&LEVELS3, 7);
static LUT3S: Bytes<64> = level_lut(&LEVELS3S, 7);

/// Where the byte of 8-value group `g` (its grid index, or its looked-up sign byte) sits in a
/// super-block vector: [`CHUNKS`] (IQ2_XXS, IQ3_XXS: 64-bit lane `c` holds chunk `c`'s four
/// groups in bytes 0..4), [`WORDS`] (IQ2_XS: the low byte of the group's 16-bit word) or
/// [`BYTES`] (IQ2_S: one byte per group).
const CHUNKS: usize = 0;
const WORDS: usize = 1;
const BYTES: usize = 2;

const fn group_pos(layout: usize, g: usize) -> usize {
    match layout {
        CHUNKS => 8 * (g / 4) + g % 4,
        WORDS => 2 * g,
        _ => g,
    }
}

/// Per pair `p` of 32-value chunks, 64-bit lane `e` gets the code of group `8p + e` (low byte
/// from the first table operand, high byte from the second).
const fn code_bytes_by_group(layout: usize) -> [Bytes<64>; 4] {
    let mut out = [const { Bytes([0u8; 64]) }; 4];
    let mut p = 0;
    while p < 4 {
        let mut e = 0;
        while e < 8 {
            let pos = group_pos(layout, 8 * p + e) as u8;
            out[p].0[8 * e] = pos;
            out[p].0[8 * e + 1] = 64 + pos;
            e += 1;
        }
        p += 1;
    }
    out
}

/// The looked-up sign bytes transposed once per super-block: lane `e`, byte `p` = the sign
/// byte of group `8p + e`, for `vpshufbitqmb` ([`SIGN_BITS`]).
const fn sign_transpose(layout: usize) -> Bytes<64> {
    let mut out = [0u8; 64];
    let mut e = 0;
    while e < 8 {
        let mut p = 0;
        while p < 4 {
            out[8 * e + p] = group_pos(layout, 8 * p + e) as u8;
            p += 1;
        }
        e += 1;
    }
    Bytes(out)
}

/// IQ2_XXS's and IQ3_XXS's.
static SIGN_TRANSPOSE: Bytes<64> = sign_transpose(CHUNKS);

/// Per pair `p`: `vpshufbitqmb` takes bit `j` of byte `p` of lane `e` as mask bit `8e + j`,
/// the sign of value `8e + j` of the pair.
static SIGN_BITS: [Bytes<64>; 4] = {
    let mut out = [const { Bytes([0u8; 64]) }; 4];
    let mut p = 0;
    while p < 4 {
        let mut i = 0;
        while i < 64 {
            out[p].0[i] = (8 * p + i % 8) as u8;
            i += 1;
        }
        p += 1;
    }
    out
};

/// IQ2_XXS's.
static CODE_BYTES2: [Bytes<64>; 4] = code_bytes_by_group(CHUNKS);

/// IQ3_XXS: per pair, 32-bit lane `e` gets code `16p + e` (4 values each).
static CODE_BYTES3: [Bytes<64>; 4] = {
    let mut out = [const { Bytes([0u8; 64]) }; 4];
    let mut p = 0;
    while p < 4 {
        let mut e = 0;
        while e < 16 {
            out[p].0[4 * e] = (16 * p + e) as u8;
            out[p].0[4 * e + 1] = (64 + 16 * p + e) as u8;
            e += 1;
        }
        p += 1;
    }
    out
};

static CODE_BYTES2XS: [Bytes<64>; 4] = code_bytes_by_group(WORDS);
static CODE_BYTES2S: [Bytes<64>; 4] = code_bytes_by_group(BYTES);

static SIGN_TRANSPOSE2XS: Bytes<64> = sign_transpose(WORDS);

/// Per pair `p`: 32-bit lane `l` (values `4l..4l+4` of the pair) takes scale nibble
/// `4p + l/4` (one per 16 values) into its low byte; the other bytes are zeroed by the mask.
static SCALE16_BYTES: [Bytes<64>; 4] = {
    let mut out = [const { Bytes([0u8; 64]) }; 4];
    let mut p = 0;
    while p < 4 {
        let mut l = 0;
        while l < 16 {
            out[p].0[4 * l] = (4 * p + l / 4) as u8;
            l += 1;
        }
        p += 1;
    }
    out
};

#[inline(always)]
unsafe fn load<const N: usize>(b: &Bytes<N>, at: usize) -> __m512i {
    _mm512_load_si512(b.0.as_ptr().add(at) as *const _)
}

/// 64 bytes from a 256-byte table, indexed by every byte of `idx`.
#[inline(always)]
unsafe fn lookup256(t: &[__m512i; 4], idx: __m512i, top: __mmask64) -> __m512i {
    let lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);
    let hi = _mm512_permutex2var_epi8(t[2], idx, t[3]);
    _mm512_mask_blend_epi8(top, lo, hi)
}

const IQ2XXS: u8 = 0;
const IQ3XXS: u8 = 1;

/// `Σ w·a` of one IQ2_XXS or IQ3_XXS row against `T` activation rows with one scale per
/// super-block.
#[inline(always)]
unsafe fn dot_rows_kind<const T: usize, const KIND: u8>(
    bb: usize,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    let codes = if KIND == IQ2XXS { &CODES2 } else { &CODES3 };
    let lo = [
        load(codes, 0),
        load(codes, 64),
        load(codes, 128),
        load(codes, 192),
    ];
    let hi = [
        load(codes, 256),
        load(codes, 320),
        load(codes, 384),
        load(codes, 448),
    ];
    let (ks0, ks1) = (load(&KSIGNS64, 0), load(&KSIGNS64, 64));
    let lut = load(if KIND == IQ2XXS { &LUT2 } else { &LUT3 }, 0);
    // Bit offsets of each value's code within its 64-bit lane (two IQ3_XXS groups per lane).
    let cut_values = if KIND == IQ2XXS {
        _mm512_set1_epi64(0x0E0C_0A08_0604_0200)
    } else {
        _mm512_set1_epi64(0x2926_2320_0906_0300)
    };
    // The four 7-bit sign indices of a chunk's 32-bit word (bits 0, 7, 14, 21) into bytes
    // 0..4 of its lane.
    let cut_signs = _mm512_set1_epi64(0x150E_0700);
    let mut acc = [_mm512_setzero_ps(); T];
    let base = w.as_ptr();
    for sb in 0..w.len() / bb {
        let b = base.add(sb * bb);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb + 64) as *const i8);
        // `words`: 64-bit lane c holds chunk c's 32-bit sign-and-scale word (upper half for
        // IQ2_XXS, whose lanes hold the chunk's four grid indices below it); `idx`: the grid
        // indices, looked up in every byte.
        let (d, idx, words) = if KIND == IQ2XXS {
            let q = _mm512_loadu_si512(b.add(2) as *const _);
            (f16(b) / 8.0, q, _mm512_srli_epi64(q, 32))
        } else {
            let q = _mm512_loadu_si512(b.add(2) as *const _);
            let aux = _mm256_loadu_si256(b.add(66) as *const _);
            (f16(b) / 4.0, q, _mm512_cvtepu32_epi64(aux))
        };
        let top = _mm512_movepi8_mask(idx);
        let code_lo = lookup256(&lo, idx, top);
        let code_hi = lookup256(&hi, idx, top);
        let sign_idx = _mm512_multishift_epi64_epi8(cut_signs, words);
        // vpermi2b reads 7 index bits: the bit above each sign index is ignored.
        let signs = _mm512_permutexvar_epi8(
            load(&SIGN_TRANSPOSE, 0),
            _mm512_permutex2var_epi8(ks0, sign_idx, ks1),
        );
        // Each chunk's odd scale 2s + 1 in the low 32 bits of its lane.
        let sc = _mm512_or_si512(
            _mm512_slli_epi64(_mm512_srli_epi64(words, 28), 1),
            _mm512_set1_epi64(1),
        );
        let mut isum = [_mm512_setzero_si512(); T];
        for p in 0..4 {
            let code_bytes = if KIND == IQ2XXS {
                load(&CODE_BYTES2[p], 0)
            } else {
                load(&CODE_BYTES3[p], 0)
            };
            let code = _mm512_permutex2var_epi8(code_lo, code_bytes, code_hi);
            let mag = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(cut_values, code), lut);
            let neg = _mm512_bitshuffle_epi64_mask(signs, load(&SIGN_BITS[p], 0));
            // Lanes 0..8 take chunk 2p's scale, 8..16 chunk 2p + 1's.
            let scale = _mm512_permutexvar_epi32(
                _mm512_mask_blend_epi32(
                    0xFF00,
                    _mm512_set1_epi32(4 * p as i32),
                    _mm512_set1_epi32(4 * p as i32 + 2),
                ),
                sc,
            );
            for (k, a) in acts.iter().enumerate() {
                let av = _mm512_loadu_si512(a.2.as_ptr().add(sb * QK_K + 64 * p) as *const _);
                let av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
                // |prod| ≤ 4·62·127 < 2^15: its low 16 bits times the scale (high 16 bits
                // zero) is the whole product, added by one vpdpwssd; eight chunks of at most
                // 31 times that stay within i32.
                let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), mag, av);
                isum[k] = _mm512_dpwssd_epi32(isum[k], prod, scale);
            }
        }
        for (k, a) in acts.iter().enumerate() {
            let f = _mm512_set1_ps(d * *a.0.get_unchecked(sb * (QK_K / 32)));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), f, acc[k]);
        }
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

/// IQ3_S: 9-bit grid indices (the ninth bits in `qh`, one byte per 8 indices: a mask
/// register that picks between two 256-entry lookups) and explicit sign bits (64 of them are
/// the negation mask of 64 values as they are).
#[inline(always)]
unsafe fn dot_rows_iq3s<const T: usize>(bb: usize, w: &[u8], acts: &[ActRow; T]) -> [f32; T] {
    let (lo, hi) = (CODES3S.0.as_ptr(), CODES3S.0.as_ptr().add(512));
    let (lo0, lo1, hi0, hi1) = (table(lo, 0), table(lo, 1), table(hi, 0), table(hi, 1));
    let lut = load(&LUT3S, 0);
    let cut_values = _mm512_set1_epi64(0x2926_2320_0906_0300);
    let mut acc = [_mm512_setzero_ps(); T];
    let base = w.as_ptr();
    for sb in 0..w.len() / bb {
        let b = base.add(sb * bb);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb + 64) as *const i8);
        let (qs, qh, signs, scales) = (b.add(2), b.add(66), b.add(74), b.add(106));
        let idx = _mm512_loadu_si512(qs as *const _);
        let top = _mm512_movepi8_mask(idx);
        let ninth = _cvtu64_mask64((qh as *const u64).read_unaligned());
        let code_lo =
            _mm512_mask_blend_epi8(ninth, lookup256(&lo0, idx, top), lookup256(&lo1, idx, top));
        let code_hi =
            _mm512_mask_blend_epi8(ninth, lookup256(&hi0, idx, top), lookup256(&hi1, idx, top));
        let mut isum = [_mm512_setzero_si512(); T];
        for (p, code_bytes) in CODE_BYTES3.iter().enumerate() {
            let code = _mm512_permutex2var_epi8(code_lo, load(code_bytes, 0), code_hi);
            let mag = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(cut_values, code), lut);
            let neg = _cvtu64_mask64((signs.add(8 * p) as *const u64).read_unaligned());
            // A 4-bit scale per 32 values, two to a byte: lanes 0..8 take chunk 2p's.
            let s = *scales.add(p) as i32;
            let scale = _mm512_mask_blend_epi32(
                0xFF00,
                _mm512_set1_epi32(2 * (s & 15) + 1),
                _mm512_set1_epi32(2 * (s >> 4) + 1),
            );
            for (k, a) in acts.iter().enumerate() {
                let av = _mm512_loadu_si512(a.2.as_ptr().add(sb * QK_K + 64 * p) as *const _);
                let av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
                // |prod| ≤ 4·15·127: one vpdpwssd applies the scale, as above.
                let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), mag, av);
                isum[k] = _mm512_dpwssd_epi32(isum[k], prod, scale);
            }
        }
        for (k, a) in acts.iter().enumerate() {
            let f = _mm512_set1_ps(f16(b) * *a.0.get_unchecked(sb * (QK_K / 32)));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), f, acc[k]);
        }
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

const IQ2XS: u8 = 2;
const IQ2S: u8 = 3;

/// The 64 bytes of table `t` (entries `256t..256t + 256`) of a code byte plane at `at`.
#[inline(always)]
unsafe fn table(at: *const u8, t: usize) -> [__m512i; 4] {
    let at = at.add(256 * t);
    [
        _mm512_loadu_si512(at as *const _),
        _mm512_loadu_si512(at.add(64) as *const _),
        _mm512_loadu_si512(at.add(128) as *const _),
        _mm512_loadu_si512(at.add(192) as *const _),
    ]
}

/// One byte plane of the codes of a super-block's grid indices `q` (IQ2_XS: 16-bit words,
/// the ninth bit in each high byte; IQ2_S: bytes, two high bits each in `qh`).
#[inline(always)]
unsafe fn code_plane<const KIND: u8>(
    at: *const u8,
    q: __m512i,
    top: __mmask64,
    qh: u64,
) -> __m512i {
    if KIND == IQ2XS {
        // Bit 8 of each word's index, at its low byte's lane.
        let ninth = _mm512_test_epi8_mask(_mm512_srli_epi16(q, 8), _mm512_set1_epi8(1));
        _mm512_mask_blend_epi8(
            ninth,
            lookup256(&table(at, 0), q, top),
            lookup256(&table(at, 1), q, top),
        )
    } else {
        // Two high bits per index, four indices to a byte of qh.
        let b8 = _cvtu64_mask64(_pext_u64(qh, 0x5555_5555_5555_5555));
        let b9 = _cvtu64_mask64(_pext_u64(qh, 0xAAAA_AAAA_AAAA_AAAA));
        let low = _mm512_mask_blend_epi8(
            b8,
            lookup256(&table(at, 0), q, top),
            lookup256(&table(at, 1), q, top),
        );
        let high = _mm512_mask_blend_epi8(
            b8,
            lookup256(&table(at, 2), q, top),
            lookup256(&table(at, 3), q, top),
        );
        _mm512_mask_blend_epi8(b9, low, high)
    }
}

/// IQ2_XS (9-bit grid indices and 7-bit sign indices in 16-bit words) and IQ2_S (10-bit
/// indices, their two high bits in `qh`, and explicit sign bits): a 4-bit scale per 16 values.
#[inline(always)]
unsafe fn dot_rows_two_scales<const T: usize, const KIND: u8>(
    bb: usize,
    w: &[u8],
    acts: &[ActRow; T],
) -> [f32; T] {
    let (codes, entries) = if KIND == IQ2XS {
        (&CODES2XS.0[..], 512)
    } else {
        (&CODES2S.0[..], 1024)
    };
    let (ks0, ks1) = (load(&KSIGNS64, 0), load(&KSIGNS64, 64));
    let lut = load(&LUT2, 0);
    let cut_values = _mm512_set1_epi64(0x0E0C_0A08_0604_0200);
    let scales_at = if KIND == IQ2XS { 66 } else { 74 };
    let mut acc = [_mm512_setzero_ps(); T];
    let base = w.as_ptr();
    for sb in 0..w.len() / bb {
        let b = base.add(sb * bb);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(4 * bb + 64) as *const i8);
        let q = _mm512_loadu_si512(b.add(2) as *const _);
        let top = _mm512_movepi8_mask(q);
        let qh = (b.add(66) as *const u64).read_unaligned();
        // (Not closures: a closure does not inherit the target features, and its intrinsics
        // would be calls.)
        let code_lo = code_plane::<KIND>(codes.as_ptr(), q, top, qh);
        let code_hi = code_plane::<KIND>(codes.as_ptr().add(entries), q, top, qh);
        // IQ2_XS: each word's top 7 bits index ksigns; transposed for vpshufbitqmb.
        let signs = if KIND == IQ2XS {
            _mm512_permutexvar_epi8(
                load(&SIGN_TRANSPOSE2XS, 0),
                _mm512_permutex2var_epi8(ks0, _mm512_srli_epi16(q, 9), ks1),
            )
        } else {
            _mm512_setzero_si512()
        };
        // The 16 scale nibbles in order, as odd scales 2s + 1.
        let nib = (b.add(scales_at) as *const u64).read_unaligned();
        let nib = _mm_unpacklo_epi8(
            _mm_cvtsi64_si128((nib & 0x0F0F_0F0F_0F0F_0F0F) as i64),
            _mm_cvtsi64_si128((nib >> 4 & 0x0F0F_0F0F_0F0F_0F0F) as i64),
        );
        let odd = _mm512_zextsi128_si512(_mm_add_epi8(_mm_add_epi8(nib, nib), _mm_set1_epi8(1)));
        let mut isum = [_mm512_setzero_si512(); T];
        for p in 0..4 {
            let code_bytes = if KIND == IQ2XS {
                &CODE_BYTES2XS[p]
            } else {
                &CODE_BYTES2S[p]
            };
            let code = _mm512_permutex2var_epi8(code_lo, load(code_bytes, 0), code_hi);
            let mag = _mm512_permutexvar_epi8(_mm512_multishift_epi64_epi8(cut_values, code), lut);
            let neg = if KIND == IQ2XS {
                _mm512_bitshuffle_epi64_mask(signs, load(&SIGN_BITS[p], 0))
            } else {
                _cvtu64_mask64((b.add(34 + 8 * p) as *const u64).read_unaligned())
            };
            let scale = _mm512_maskz_permutexvar_epi8(
                0x1111_1111_1111_1111,
                load(&SCALE16_BYTES[p], 0),
                odd,
            );
            for (k, a) in acts.iter().enumerate() {
                let av = _mm512_loadu_si512(a.2.as_ptr().add(sb * QK_K + 64 * p) as *const _);
                let av = _mm512_mask_sub_epi8(av, neg, _mm512_setzero_si512(), av);
                // |prod| ≤ 4·43·127: one vpdpwssd applies the scale, as above.
                let prod = _mm512_dpbusd_epi32(_mm512_setzero_si512(), mag, av);
                isum[k] = _mm512_dpwssd_epi32(isum[k], prod, scale);
            }
        }
        let d = f16(b) / 8.0;
        for (k, a) in acts.iter().enumerate() {
            let f = _mm512_set1_ps(d * *a.0.get_unchecked(sb * (QK_K / 32)));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[k]), f, acc[k]);
        }
    }
    std::array::from_fn(|k| _mm512_reduce_add_ps(acc[k]))
}

/// `Σ w·a` of one IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS or IQ3_S weight row against `T` activation rows quantized with one
/// scale per super-block. Needs [`available`] and a type [`handles`] takes.
#[target_feature(
    enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,bmi2"
)]
pub unsafe fn dot_rows<const T: usize>(t: QuantType, w: &[u8], acts: &[ActRow; T]) -> [f32; T] {
    let bb = t.block_bytes();
    match t {
        QuantType::IQ2XXS => dot_rows_kind::<T, IQ2XXS>(bb, w, acts),
        QuantType::IQ3XXS => dot_rows_kind::<T, IQ3XXS>(bb, w, acts),
        QuantType::IQ3S => dot_rows_iq3s::<T>(bb, w, acts),
        QuantType::IQ2XS => dot_rows_two_scales::<T, IQ2XS>(bb, w, acts),
        QuantType::IQ2S => dot_rows_two_scales::<T, IQ2S>(bb, w, acts),
        t => unreachable!("{} has no VBMI kernel", t.name()),
    }
}
