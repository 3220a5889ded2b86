//! Quantized GEMM for prefill on AVX-512 VNNI CPUs without AMX (Ice Lake, AMD Zen 4 and 5): the
//! weights along the vector lanes, the tokens broadcast.
//!
//! The 8-row group kernels of [`crate::repack`] take up to 4 tokens per pass over a group and
//! unpack the group (nibbles, fifth bits, scales) again on every pass. Here each 16-row panel
//! (two groups) is unpacked once per call into one byte per weight, laid out
//! `[block][step][row][4]`: one 64-byte load holds 4 consecutive columns of 16 rows and meets up
//! to [`TOKENS`] tokens, each a 4-byte broadcast, in one `vpdpbusd` per token (64 byte products;
//! no shuffles and no horizontal sums in the loop). Each 32-column block's integer sums are then
//! scaled into f32 accumulators, one per token, that hold the 16 rows' outputs.
//!
//! Every layout's weights become unsigned bytes `u` with `w = scale·u − min` per row and
//! block: Q8_0 `u = q + 128` (min = 128·d), Q5_0 `u = q + 16` (min = 16·d), Q4_K the nibble
//! (scale = d·sc, min = dmin·m). `vpdpbusd` multiplies unsigned bytes by signed ones, so the
//! int8 activations (scale `dx` and sum `Σx` per block) go in as they are:
//! `Σ w·x = dx · (scale · Σ u·x − min · Σx)`. The activations are those the group kernels take
//! (per 32 values for Q8_0 and Q5_0, per super-block for Q4_K), so the result is theirs up to
//! the order of the f32 sums.
//!
//! Elsewhere than x86-64 no activations for it are ever made and the kernels are never reached.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_variables, clippy::never_loop)
)]

use std::cell::RefCell;

use crate::quant::{QuantType, QuantizedActivations, QK};
use crate::repack::{Layout, GROUP};

/// Rows of a panel: the 16 f32 lanes of one register.
pub const PANEL_ROWS: usize = 2 * GROUP;
/// Most tokens per pass over a panel: one i32 and one f32 accumulator each, 24 of the 32
/// registers.
const TOKENS: usize = 12;
/// Bytes of one unpacked 32-column block of a panel: 8 steps of 16 rows × 4 bytes.
const BLOCK_BYTES: usize = 8 * 64;

/// Whether this CPU takes the kernels: 512-bit VNNI (AMX, where present, takes these layouts
/// first: [`crate::amx::grouped`]).
pub fn available() -> bool {
    crate::tier::at_least(crate::tier::Tier::Avx512Vnni)
}

/// The layouts the kernels unpack.
pub fn supports(layout: Layout) -> bool {
    matches!(layout, Layout::Q8_0x8 | Layout::Q5_0x8 | Layout::Q4Kx8)
}

/// Fewest tokens worth unpacking panels for (`DEEPSEEK_QGEMM_VNNI_MIN_TOKENS` overrides, for
/// measuring); below it the group kernels do as well.
pub fn min_tokens() -> usize {
    crate::tuning::get().qgemm_vnni_min_tokens.value as usize
}

/// What the kernels read of the activations besides `q` itself, per token and 32-value block:
/// for Q4_K `dx · Σx` (the min terms' factor); for Q8_0 and Q5_0, whose min is a fixed multiple
/// `c` of the scale, `-c · Σx` as an integer, the starting value of the block's integer sum
/// (`scale · (Σ u·x − c·Σx)`), so their blocks need no separate min term.
pub struct Activations {
    n: usize,
    scaled_sums: Vec<f32>,
    offsets: Vec<i32>,
}

impl Activations {
    /// For `layout`'s weights when this CPU takes the kernels, the layout has them and there
    /// are at least [`min_tokens`] tokens; `None` otherwise.
    pub fn new(layout: Layout, q: &QuantizedActivations, n: usize) -> Option<Self> {
        if !available() || !supports(layout) || n < min_tokens() {
            return None;
        }
        Some(Self::from_quantized(layout, q, n))
    }

    /// For plain rows of `ty` (not repacked: the K-quants with scales per 16 values, Q5_K, the
    /// IQ4 and `_1` formats), which the GEMM requantizes panel by panel to 8 bits with a scale
    /// per 32 ([`gemm_rows_plain`]); same conditions as [`Activations::new`].
    pub fn for_plain(ty: QuantType, q: &QuantizedActivations, n: usize) -> Option<Self> {
        if !available() || n < min_tokens() || !ty.block_elems().is_multiple_of(QK) {
            return None;
        }
        Some(Self::from_quantized(Layout::Q8_0x8, q, n))
    }

    fn from_quantized(layout: Layout, q: &QuantizedActivations, n: usize) -> Self {
        assert_eq!(
            q.sum_block, QK,
            "VNNI GEMM: activations need a sum per 32 values"
        );
        assert_eq!(
            q.qs.len(),
            n * q.cols,
            "VNNI GEMM: activations are not [n, cols]"
        );
        let (scaled_sums, offsets) = match min_multiple(layout) {
            None => (
                q.d.iter()
                    .zip(&q.sums)
                    .map(|(&d, &s)| d * s as f32)
                    .collect(),
                vec![],
            ),
            Some(c) => (vec![], q.sums.iter().map(|&s| -c * s).collect()),
        };
        Activations {
            n,
            scaled_sums,
            offsets,
        }
    }
}

/// `c` where every block's min is `c ·` its scale (the unsigned bytes' fixed offset).
fn min_multiple(layout: Layout) -> Option<i32> {
    match layout {
        Layout::Q8_0x8 => Some(128),
        Layout::Q5_0x8 => Some(16),
        _ => None,
    }
}

/// One panel unpacked: bytes `[block][step][row][4]`, and per block the 16 rows' scales and
/// mins.
struct Panel {
    q: Vec<u8>,
    scale: Vec<f32>,
    min: Vec<f32>,
}

thread_local! {
    static PANEL: RefCell<Panel> =
        const { RefCell::new(Panel { q: Vec::new(), scale: Vec::new(), min: Vec::new() }) };
}

/// `out[t * ld + r] = Σ_k w[r0 + r][k] · x[t][k]` for rows `r0..r0 + nr` (whole groups of 8) of
/// repacked `data` and every token of `q`. Needs [`available`] and a layout it [`supports`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    layout: Layout,
    data: &[u8],
    cols: usize,
    r0: usize,
    nr: usize,
    q: &QuantizedActivations,
    x: &Activations,
    out: &mut [f32],
    ld: usize,
) {
    assert!(available(), "qgemm_vnni::gemm_rows called without VNNI");
    assert!(supports(layout), "qgemm_vnni: no kernel for {layout:?}");
    assert_eq!(
        q.cols, cols,
        "VNNI GEMM: activation width does not match the weights"
    );
    assert!(
        r0.is_multiple_of(GROUP) && nr.is_multiple_of(GROUP),
        "VNNI GEMM: rows must be whole groups of 8"
    );
    assert!(
        cols.is_multiple_of(layout.plain().block_elems()),
        "{layout:?}: {cols} columns"
    );
    let gb = layout.group_bytes(cols);
    assert!(
        data.len() >= (r0 + nr) / GROUP * gb,
        "VNNI GEMM: weights too short"
    );
    let n = x.n;
    assert!(
        n == 0 || nr == 0 || out.len() >= (n - 1) * ld + nr,
        "VNNI GEMM: output too short"
    );
    let nb = cols / QK;
    let groups = nr / GROUP;
    // A lone last group is paired with zeros (its rows are computed and not stored).
    let zeros = (groups % 2 == 1).then(|| vec![0u8; gb]);
    PANEL.with(|cell| {
        let p = &mut *cell.borrow_mut();
        p.q.resize(nb * BLOCK_BYTES, 0);
        p.scale.resize(nb * PANEL_ROWS, 0.0);
        p.min.resize(nb * PANEL_ROWS, 0.0);
        for pi in 0..groups.div_ceil(2) {
            let g = r0 / GROUP + 2 * pi;
            let g0 = &data[g * gb..][..gb];
            let two = 2 * pi + 1 < groups;
            let g1 = if two {
                &data[(g + 1) * gb..][..gb]
            } else {
                zeros.as_deref().expect("a lone group")
            };
            let rows = if two { PANEL_ROWS } else { GROUP };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: VNNI (with AVX-512 F/BW/VL and F16C) is present (`available`); both
            // groups are `gb` bytes of `layout` for `cols` columns and the panel buffers are
            // sized for `nb` blocks above; every token row of `q` is `cols` long and `out`
            // holds `n` rows of `ld` from column `16 pi` (`rows` of them stored).
            unsafe {
                x86::unpack(layout, g0, g1, nb, p);
                let mut t0 = 0;
                while t0 < n {
                    let t = (n - t0).min(TOKENS);
                    x86::panel_tokens(
                        p,
                        nb,
                        q,
                        x,
                        t0,
                        t,
                        out[t0 * ld + pi * PANEL_ROWS..].as_mut_ptr(),
                        ld,
                        rows,
                    );
                    t0 += t;
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (g0, g1, rows, p);
                unreachable!("VNNI is x86-only");
            }
        }
    });
}

/// Whether `ty`'s rows go into panels unpacked rather than dequantized and requantized (which
/// was half of an IQ2_XXS file's prefill): the lattice types, exactly where a 32-value chunk
/// has one scale ([`crate::quant::x86_iq::unpack_row_avx2`]).
fn unpacks_to_panel(ty: QuantType) -> bool {
    cfg!(target_arch = "x86_64") && ty.is_lattice()
}

/// Unpacks `count` rows of lattice type `ty` (at `data`, `rb` bytes apart) into `q` (16 rows of
/// `cols` int8, rows past `count` zero) and the panel's scales and mins (`w = scale·(q + 128) −
/// 128·scale`, the Q8_0 panel's form).
fn unpack_rows(
    ty: QuantType,
    data: &[u8],
    rb: usize,
    count: usize,
    cols: usize,
    q: &mut [i8],
    p: &mut Panel,
) {
    let mut scales = vec![0.0f32; cols / QK];
    for r in 0..PANEL_ROWS {
        let row = &mut q[r * cols..(r + 1) * cols];
        if r >= count {
            row.fill(0);
            scales.fill(0.0);
        } else {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the panels run on VNNI CPUs, which have AVX2 and F16C; the row holds
            // `cols` values and `scales` has one entry per 32.
            unsafe {
                crate::quant::x86_iq::unpack_row_avx2(ty, &data[r * rb..][..rb], row, &mut scales)
            };
        }
        for (blk, &scale) in scales.iter().enumerate() {
            p.scale[blk * PANEL_ROWS + r] = scale;
            p.min[blk * PANEL_ROWS + r] = 128.0 * scale;
        }
    }
}

/// [`gemm_rows`] for `nr` plain rows of `ty` (`ty.row_bytes(cols)` bytes each, any count): each
/// 16-row panel is dequantized and requantized to 8 bits with a scale per 32 values (the
/// Q8_0 panel's form) once per call, then meets every token on the same kernel. The lattice
/// types with one scale per 32 values are unpacked into that form as they are, exactly
/// ([`unpacks_to_panel`]). The
/// requantization adds an error of at most a 254th of each block's largest weight, small beside
/// these formats' own (Q6_K's step is a 63rd of its block's range, Q5_K's a 31st); decode keeps
/// the exact rows (`quant::dot_rows`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows_plain(
    ty: QuantType,
    data: &[u8],
    cols: usize,
    nr: usize,
    q: &QuantizedActivations,
    x: &Activations,
    out: &mut [f32],
    ld: usize,
) {
    assert!(
        available(),
        "qgemm_vnni::gemm_rows_plain called without VNNI"
    );
    assert_eq!(
        q.cols, cols,
        "VNNI GEMM: activation width does not match the weights"
    );
    assert!(cols.is_multiple_of(ty.block_elems()) && cols.is_multiple_of(QK));
    assert!(
        !x.offsets.is_empty(),
        "VNNI GEMM: plain rows take the Q8_0 panel's activations"
    );
    let rb = ty.row_bytes(cols);
    assert!(data.len() >= nr * rb, "VNNI GEMM: weights too short");
    let n = x.n;
    assert!(
        n == 0 || nr == 0 || out.len() >= (n - 1) * ld + nr,
        "VNNI GEMM: output too short"
    );
    let nb = cols / QK;
    let direct = unpacks_to_panel(ty);
    let mut rows = vec![0.0f32; if direct { 0 } else { PANEL_ROWS * cols }];
    // The panel's 16 rows as int8, before they are laid out for the kernel.
    let mut panel_q = vec![0i8; PANEL_ROWS * cols];
    PANEL.with(|cell| {
        let p = &mut *cell.borrow_mut();
        p.q.resize(nb * BLOCK_BYTES, 0);
        p.scale.resize(nb * PANEL_ROWS, 0.0);
        p.min.resize(nb * PANEL_ROWS, 0.0);
        for r0 in (0..nr).step_by(PANEL_ROWS) {
            let count = (nr - r0).min(PANEL_ROWS);
            let qs: &[i8] = if direct {
                unpack_rows(ty, &data[r0 * rb..], rb, count, cols, &mut panel_q, p);
                &panel_q
            } else {
                for (r, row) in rows.chunks_exact_mut(cols).enumerate() {
                    if r < count {
                        crate::quant::dequantize_row(ty, &data[(r0 + r) * rb..][..rb], row);
                    } else {
                        row.fill(0.0);
                    }
                }
                let w8 = QuantizedActivations::new(&rows, cols);
                for r in 0..PANEL_ROWS {
                    let (d, _, _) = w8.row(r);
                    for (blk, &d) in d.iter().enumerate().take(nb) {
                        p.scale[blk * PANEL_ROWS + r] = d;
                        p.min[blk * PANEL_ROWS + r] = 128.0 * d;
                    }
                }
                panel_q.copy_from_slice(&w8.qs);
                &panel_q
            };
            // The bytes into `[block][step][row][4]`, sign bits flipped (`+ 128`): a byte at a
            // time this took a quarter of a lattice file's prefill.
            #[cfg(target_arch = "x86_64")]
            // SAFETY: VNNI (`available`) implies AVX-512 F; `w8` holds 16 rows of `cols`
            // bytes and the panel `nb` blocks.
            unsafe {
                x86::panel_bytes(qs, cols, nb, &mut p.q)
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: VNNI is present (`available`); the panel holds `nb` blocks, every token
            // row of `q` is `cols` long and `out` holds `n` rows of `ld` from column `r0`
            // (`count` of them stored).
            unsafe {
                let mut t0 = 0;
                while t0 < n {
                    let t = (n - t0).min(TOKENS);
                    let dst = out[t0 * ld + r0..].as_mut_ptr();
                    x86::panel_tokens(p, nb, q, x, t0, t, dst, ld, count);
                    t0 += t;
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::repack::{Q4K_SUPER_BYTES, Q5_0_BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// Even dwords of `a` then of `b` (`EVEN`), or odd ones: 8 rows × 8 bytes of each of two
    /// groups into 16 rows × 4 bytes.
    const EVEN: [i32; 16] = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];
    const ODD: [i32; 16] = [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31];

    #[inline(always)]
    unsafe fn idx(v: [i32; 16]) -> __m512i {
        _mm512_loadu_si512(v.as_ptr() as *const _)
    }

    /// 8 f16 of each group (16 bytes at `a` and at `b`) as 16 f32.
    #[inline(always)]
    unsafe fn f16x16(a: *const u8, b: *const u8) -> __m512 {
        let lo = _mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i));
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(
            lo,
            _mm_loadu_si128(b as *const __m128i),
        ))
    }

    /// 8 bytes of each group (at `a` and at `b`) as 16 f32.
    #[inline(always)]
    unsafe fn u8x16(a: *const u8, b: *const u8) -> __m512 {
        let v = _mm_unpacklo_epi64(
            _mm_loadl_epi64(a as *const __m128i),
            _mm_loadl_epi64(b as *const __m128i),
        );
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v))
    }

    /// Writes the two 8-row × 8-byte vectors `a` (rows 0–7) and `b` (rows 8–15), whose 8 bytes
    /// per row are 8 consecutive columns, as the two steps of 4 columns at `dst` and `dst + 64`.
    #[inline(always)]
    unsafe fn two_steps(a: __m512i, b: __m512i, dst: *mut u8) {
        _mm512_storeu_si512(dst as *mut _, _mm512_permutex2var_epi32(a, idx(EVEN), b));
        _mm512_storeu_si512(
            dst.add(64) as *mut _,
            _mm512_permutex2var_epi32(a, idx(ODD), b),
        );
    }

    /// The 16 rows of int8 `qs` (`cols` each) as panel bytes `[block][step][row][4]`, each
    /// byte + 128: one gather of a dword from each row per step.
    ///
    /// # Safety
    /// AVX-512 F; `qs` holds 16 rows of `cols` ≥ `32 · nb` bytes, `dst` `nb` blocks.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn panel_bytes(qs: &[i8], cols: usize, nb: usize, dst: &mut [u8]) {
        assert!(qs.len() >= PANEL_ROWS * cols && cols >= nb * QK);
        assert!(dst.len() >= nb * BLOCK_BYTES && cols <= i32::MAX as usize / PANEL_ROWS);
        let rows = _mm512_mullo_epi32(
            _mm512_set1_epi32(cols as i32),
            idx([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]),
        );
        let flip = _mm512_set1_epi32(0x8080_8080u32 as i32);
        for blk in 0..nb {
            for step in 0..8 {
                let base = qs.as_ptr().add(blk * QK + 4 * step) as *const i32;
                let v = _mm512_i32gather_epi32::<1>(rows, base);
                let out = dst.as_mut_ptr().add(blk * BLOCK_BYTES + 64 * step);
                _mm512_storeu_si512(out as *mut _, _mm512_xor_si512(v, flip));
            }
        }
    }

    /// Unpacks groups `g0` (rows 0–7) and `g1` (rows 8–15) of `layout` into `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL and F16C; both groups hold `nb` blocks of `layout`, `p` is sized for
    /// `nb` blocks.
    #[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
    pub unsafe fn unpack(layout: Layout, g0: &[u8], g1: &[u8], nb: usize, p: &mut Panel) {
        let (a, b) = (g0.as_ptr(), g1.as_ptr());
        let (q, scale, min) = (p.q.as_mut_ptr(), p.scale.as_mut_ptr(), p.min.as_mut_ptr());
        let low4 = _mm512_set1_epi8(0x0F);
        let nib = |v: __m512i, high: bool| {
            let v = if high { _mm512_srli_epi16::<4>(v) } else { v };
            _mm512_and_si512(v, low4)
        };
        match layout {
            Layout::Q8_0x8 => {
                // Per block: 8 f16 scales, then per 4-column step the 4 bytes of rows 0..8.
                let bb = 2 * GROUP + QK * GROUP;
                assert!(g0.len() >= nb * bb && g1.len() >= nb * bb);
                let flip = _mm512_set1_epi8(-128);
                for blk in 0..nb {
                    let (a, b) = (a.add(blk * bb), b.add(blk * bb));
                    let d = f16x16(a, b);
                    _mm512_storeu_ps(scale.add(blk * 16), d);
                    _mm512_storeu_ps(min.add(blk * 16), _mm512_mul_ps(d, _mm512_set1_ps(128.0)));
                    for s in 0..8 {
                        let lo = _mm256_loadu_si256(a.add(16 + 32 * s) as *const __m256i);
                        let hi = _mm256_loadu_si256(b.add(16 + 32 * s) as *const __m256i);
                        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                        _mm512_storeu_si512(
                            q.add(blk * BLOCK_BYTES + 64 * s) as *mut _,
                            _mm512_xor_si512(v, flip),
                        );
                    }
                }
            }
            Layout::Q5_0x8 => {
                // Per block: 8 f16 d, 4 u64 masks of fifth bits (mask m: columns 8m..8m+8, row
                // r in byte r), then per 8-byte unit kk the 8 qs bytes of rows 0..8: low
                // nibbles columns 8kk.., high nibbles columns 16 + 8kk.. .
                let bb = Q5_0_BLOCK_BYTES;
                assert!(g0.len() >= nb * bb && g1.len() >= nb * bb);
                let bit4 = _mm512_set1_epi8(0x10);
                for blk in 0..nb {
                    let (a, b) = (a.add(blk * bb), b.add(blk * bb));
                    let d = f16x16(a, b);
                    _mm512_storeu_ps(scale.add(blk * 16), d);
                    _mm512_storeu_ps(min.add(blk * 16), _mm512_mul_ps(d, _mm512_set1_ps(16.0)));
                    let mask =
                        |g: *const u8, m: usize| (g.add(16 + 8 * m) as *const u64).read_unaligned();
                    for kk in 0..2 {
                        let va = _mm512_loadu_si512(a.add(48 + 64 * kk) as *const _);
                        let vb = _mm512_loadu_si512(b.add(48 + 64 * kk) as *const _);
                        for (high, step) in [(false, 2 * kk), (true, 4 + 2 * kk)] {
                            // Fifth bits of these columns: bit 8r + i is row r's column i,
                            // as byte 8r + i of the vector.
                            let m = if high { 2 + kk } else { kk };
                            let fifth = |v: __m512i, g: *const u8| {
                                let n = nib(v, high);
                                _mm512_or_si512(n, _mm512_maskz_mov_epi8(mask(g, m), bit4))
                            };
                            two_steps(
                                fifth(va, a),
                                fifth(vb, b),
                                q.add(blk * BLOCK_BYTES + 64 * step),
                            );
                        }
                    }
                }
            }
            Layout::Q4Kx8 => {
                // Per super-block: 8 f16 d, 8 f16 dmin, scales [j][row], mins [j][row], then per
                // 32-byte chunk c (sub-blocks 2c low nibbles, 2c + 1 high) and 8-byte unit u the
                // 8 bytes of rows 0..8.
                let sbb = Q4K_SUPER_BYTES;
                let nsb = nb / 8;
                assert!(g0.len() >= nsb * sbb && g1.len() >= nsb * sbb);
                for sb in 0..nsb {
                    let (a, b) = (a.add(sb * sbb), b.add(sb * sbb));
                    let (d, dmin) = (f16x16(a, b), f16x16(a.add(16), b.add(16)));
                    for j in 0..8 {
                        let blk = sb * 8 + j;
                        let sc = u8x16(a.add(32 + 8 * j), b.add(32 + 8 * j));
                        let m = u8x16(a.add(96 + 8 * j), b.add(96 + 8 * j));
                        _mm512_storeu_ps(scale.add(blk * 16), _mm512_mul_ps(d, sc));
                        _mm512_storeu_ps(min.add(blk * 16), _mm512_mul_ps(dmin, m));
                    }
                    for c in 0..4 {
                        for u in 0..4 {
                            let off = 160 + 256 * c + 64 * u;
                            let va = _mm512_loadu_si512(a.add(off) as *const _);
                            let vb = _mm512_loadu_si512(b.add(off) as *const _);
                            for (high, j) in [(false, 2 * c), (true, 2 * c + 1)] {
                                let dst = q.add((sb * 8 + j) * BLOCK_BYTES + 64 * 2 * u);
                                two_steps(nib(va, high), nib(vb, high), dst);
                            }
                        }
                    }
                }
            }
            Layout::K16x8(_) | Layout::Q5Kx8 | Layout::IQ4x8(_) | Layout::Q5_1x8 => {
                unreachable!("no VNNI panels for {layout:?}")
            }
        }
    }

    /// Tokens `t0..t0 + count` (≤ [`TOKENS`]) against the unpacked panel: 16 rows' outputs per
    /// token at `out + (t - t0) * ld`, the first `rows` of them stored.
    ///
    /// # Safety
    /// AVX-512 F/BW/VL and VNNI; `p` holds `nb` blocks, `q` the tokens, `out` `count` rows of
    /// `ld` with `rows` values each.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    pub unsafe fn panel_tokens(
        p: &Panel,
        nb: usize,
        q: &QuantizedActivations,
        act: &Activations,
        t0: usize,
        count: usize,
        out: *mut f32,
        ld: usize,
        rows: usize,
    ) {
        let cols = nb * QK;
        let end = (t0 + count) * nb;
        assert!(count <= TOKENS && (t0 + count) * cols <= q.qs.len() && end <= q.d.len());
        assert!(end <= act.scaled_sums.len().max(act.offsets.len()));
        assert!(
            p.q.len() >= nb * BLOCK_BYTES && p.scale.len() >= nb * 16 && p.min.len() >= nb * 16
        );
        let x = q.qs.as_ptr().add(t0 * cols);
        let d = q.d.as_ptr().add(t0 * nb);
        let keep: __mmask16 = if rows >= 16 { 0xFFFF } else { (1 << rows) - 1 };
        macro_rules! run {
            ($($t:literal),*) => {
                if act.offsets.is_empty() {
                    let ds = act.scaled_sums.as_ptr().add(t0 * nb);
                    match count {
                        $($t => kernel::<$t, true>(p, nb, x, d, ds, out, ld, keep),)*
                        _ => unreachable!(),
                    }
                } else {
                    let off = act.offsets.as_ptr().add(t0 * nb) as *const f32;
                    match count {
                        $($t => kernel::<$t, false>(p, nb, x, d, off, out, ld, keep),)*
                        _ => unreachable!(),
                    }
                }
            };
        }
        run!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    }

    /// `MINS`: `extra` holds `dx · Σx` per token and block for a separate min term; else the
    /// integer offsets each block's sums start from (their bits).
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn kernel<const T: usize, const MINS: bool>(
        p: &Panel,
        nb: usize,
        x: *const i8,
        d: *const f32,
        extra: *const f32,
        out: *mut f32,
        ld: usize,
        keep: __mmask16,
    ) {
        let cols = nb * QK;
        let (pq, ps, pm) = (p.q.as_ptr(), p.scale.as_ptr(), p.min.as_ptr());
        let mut acc = [_mm512_setzero_ps(); T];
        for blk in 0..nb {
            let mut s: [__m512i; T] = std::array::from_fn(|t| {
                if MINS {
                    _mm512_setzero_si512()
                } else {
                    _mm512_set1_epi32((extra.add(t * nb + blk) as *const i32).read())
                }
            });
            let w = pq.add(blk * BLOCK_BYTES);
            for step in 0..8 {
                let wv = _mm512_loadu_si512(w.add(64 * step) as *const _);
                for (t, st) in s.iter_mut().enumerate() {
                    let xv = (x.add(t * cols + blk * QK + 4 * step) as *const i32).read_unaligned();
                    *st = _mm512_dpbusd_epi32(*st, wv, _mm512_set1_epi32(xv));
                }
            }
            let sc = _mm512_loadu_ps(ps.add(blk * 16));
            for (t, (a, st)) in acc.iter_mut().zip(&s).enumerate() {
                let dx = _mm512_set1_ps(*d.add(t * nb + blk));
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(*st), _mm512_mul_ps(sc, dx), *a);
                if MINS {
                    let mn = _mm512_loadu_ps(pm.add(blk * 16));
                    *a = _mm512_fnmadd_ps(mn, _mm512_set1_ps(*extra.add(t * nb + blk)), *a);
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(t * ld), keep, *a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{dequantize_row, QK_K};
    use crate::repack;

    #[test]
    fn panels_match_dequantized_reference() {
        if !available() {
            eprintln!("512-bit VNNI not available here: skipped");
            return;
        }
        for (layout, cols) in [
            (Layout::Q8_0x8, 96),
            (Layout::Q5_0x8, 1408),
            (Layout::Q4Kx8, 512),
        ] {
            // Rows: one group (a lone half panel), a panel and a half, two panels; tokens: one,
            // a full pass, ragged passes.
            for &(rows, n) in &[(8, 1), (24, 12), (32, 13), (40, 29)] {
                let data = repack::test_weights(layout, rows, cols, rows * 31 + n);
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919) % 1999) as f32 / 999.5 - 1.0 + (i % 3) as f32 * 0.2)
                    .collect();
                let q = if layout == Layout::Q4Kx8 {
                    QuantizedActivations::per_super_block(&x, cols)
                } else {
                    QuantizedActivations::new(&x, cols)
                };
                let act = Activations::from_quantized(layout, &q, n);
                let ld = rows + 3;
                let mut out = vec![f32::NAN; n * ld];
                gemm_rows(layout, &data, cols, 0, rows, &q, &act, &mut out, ld);
                let ty = layout.plain();
                let mut bytes = vec![0u8; ty.row_bytes(cols)];
                let mut w = vec![0.0f32; cols];
                for r in 0..rows {
                    layout.unpack_row(&data, cols, r, &mut bytes);
                    dequantize_row(ty, &bytes, &mut w);
                    for t in 0..n {
                        let (d, _, qs) = q.row(t);
                        let xv = |c: usize| d[c / QK] as f64 * qs[c] as f64;
                        let want: f64 = (0..cols).map(|c| w[c] as f64 * xv(c)).sum();
                        let mag: f64 = (0..cols).map(|c| (w[c] as f64 * xv(c)).abs()).sum();
                        let got = out[t * ld + r] as f64;
                        assert!(
                            (got - want).abs() <= 2e-6 * mag + 1e-6,
                            "{layout:?} {rows}x{cols} n={n} row {r} token {t}: {got} vs {want}"
                        );
                    }
                    // Columns past the rows stay untouched.
                    for t in 0..n {
                        assert!(out[t * ld + rows..(t + 1) * ld].iter().all(|v| v.is_nan()));
                    }
                }
                // A range of groups in the middle writes only its rows.
                if rows >= 24 {
                    let mut part = vec![0.0f32; n * 16];
                    gemm_rows(layout, &data, cols, 8, 16, &q, &act, &mut part, 16);
                    for t in 0..n {
                        for i in 0..16 {
                            let (a, b) = (part[t * 16 + i], out[t * ld + 8 + i]);
                            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
                        }
                    }
                }
            }
        }
    }

    /// Plain rows requantized per panel: exactly the f64 sums of the requantized weights and the
    /// quantized activations, on ragged rows (partial panels) and tokens.
    /// Runs [`gemm_rows_plain`] on the first `rows` rows of `data` (`ty`) for a few row and
    /// token counts, against `w`: the weights as the panels should hold them, `[40, cols]`,
    /// with activations made by `acts`.
    fn check_plain_panels(
        ty: QuantType,
        data: &[u8],
        w: &[f64],
        cols: usize,
        acts: fn(&[f32], usize) -> QuantizedActivations,
    ) {
        for &(rows, n) in &[(13, 9), (16, 12), (40, 29)] {
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7919) % 1999) as f32 / 999.5 - 1.0)
                .collect();
            let q = acts(&x, cols);
            let act = Activations::for_plain(ty, &q, n).expect("VNNI panels");
            let ld = rows + 1;
            let mut out = vec![f32::NAN; n * ld];
            gemm_rows_plain(ty, data, cols, rows, &q, &act, &mut out, ld);
            for r in 0..rows {
                for t in 0..n {
                    let (dx, _, qx) = q.row(t);
                    let term = |c: usize| w[r * cols + c] * dx[c / QK] as f64 * qx[c] as f64;
                    let want: f64 = (0..cols).map(term).sum();
                    let mag: f64 = (0..cols).map(|c| term(c).abs()).sum();
                    let got = out[t * ld + r] as f64;
                    assert!(
                        (got - want).abs() <= 2e-6 * mag + 1e-6,
                        "{ty:?} {rows} rows n={n} row {r} token {t}: {got} vs {want}"
                    );
                }
            }
            for t in 0..n {
                assert!(out[t * ld + rows].is_nan(), "{ty:?}: wrote past the rows");
            }
        }
    }

    #[test]
    fn lattice_rows_go_into_panels_as_unpacked() {
        if !available() {
            eprintln!("512-bit VNNI not available here: skipped");
            return;
        }
        let cols = 512;
        for ty in QuantType::LATTICE {
            assert!(unpacks_to_panel(ty));
            // A chunk with two scales (IQ2_XS, IQ2_S, IQ1_M) is rounded to 8 bits against its
            // largest value: the reference rounds the plain unpacking the same way.
            let (rb, bb) = (ty.row_bytes(cols), ty.block_bytes());
            let data = crate::quant::tests::random_lattice_rows(ty, 40, cols, 40);
            let mut w = vec![0.0f64; 40 * cols];
            let mut k = crate::quant::KBlock::new();
            for r in 0..40 {
                for sb in 0..cols / QK_K {
                    crate::quant::unpack_k(ty, &data[r * rb + sb * bb..][..bb], &mut k);
                    for c in 0..QK_K / QK {
                        let (s0, s1) = (k.scales16[2 * c] as i32, k.scales16[2 * c + 1] as i32);
                        let v: Vec<i32> = (0..QK)
                            .map(|i| k.q[c * QK + i] as i32 * if i < 16 { s0 } else { s1 })
                            .collect();
                        let m = v.iter().map(|x| x.abs()).max().unwrap();
                        let out = &mut w[r * cols + sb * QK_K + c * QK..][..QK];
                        for (o, &x) in out.iter_mut().zip(&v) {
                            *o = if s0 == s1 || m == 0 {
                                (k.d * x as f32) as f64
                            } else {
                                let q8 = (x as f32 * (127.0 / m as f32)).round_ties_even();
                                (k.d * m as f32 / 127.0 * q8) as f64
                            };
                        }
                    }
                }
            }
            check_plain_panels(ty, &data, &w, cols, QuantizedActivations::per_super_block);
        }
    }

    #[test]
    fn plain_rows_match_their_requantized_reference() {
        if !available() {
            eprintln!("512-bit VNNI not available here: skipped");
            return;
        }
        let (cols, rows) = (512, 40);
        for ty in [
            QuantType::Q6K,
            QuantType::Q5K,
            QuantType::Q3K,
            QuantType::IQ4XS,
            QuantType::Q5_1,
        ] {
            let rb = ty.row_bytes(cols);
            let mut data = vec![0u8; rows * rb];
            let mut wf = vec![0.0f32; rows * cols];
            for (r, o) in data.chunks_mut(rb).enumerate() {
                let w: Vec<f32> = (0..cols)
                    .map(|c| ((((r * cols + c) * 2654435761) >> 7) % 2001) as f32 / 1000.0 - 1.0)
                    .collect();
                crate::quant::quantize_row(ty, &w, o);
                dequantize_row(ty, o, &mut wf[r * cols..(r + 1) * cols]);
            }
            // The panels hold the dequantized rows requantized to 8 bits per 32 values.
            let w8 = QuantizedActivations::new(&wf, cols);
            let mut w = vec![0.0f64; rows * cols];
            for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                let (dw, _, qw) = w8.row(r);
                for (c, o) in row.iter_mut().enumerate() {
                    *o = dw[c / QK] as f64 * qw[c] as f64;
                }
            }
            check_plain_panels(ty, &data, &w, cols, QuantizedActivations::new);
        }
    }
}
