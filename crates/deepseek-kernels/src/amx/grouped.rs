//! AMX GEMM over repacked quantized weights (`Q8_0x8`, `Q5_0x8`, `Q4Kx8`), for prefill and
//! batched steps.
//!
//! AMX has no instruction for GGML's blocks (a scale per 32 weights), and applying every
//! block's scales to an int8 tile product would take, by our instruction count (not measured),
//! about as much vector work as the VNNI kernels' own dot products. So each pair of 8-row groups (a 16-row panel) is dequantized to bf16, scales
//! applied, straight into AMX's second-operand layout, once per call, and then meets every
//! token tile with `tdpbf16ps`: the dequantization is paid per weight, not per token.
//!
//! The activations are rounded to bf16 once per matmul, without the hi/lo split the bf16
//! weights get (`amx.rs`): bf16's relative 2⁻⁹ is finer than the 8-bit activations of the VNNI
//! kernels these calls replace, and the weights' own quantization error is larger still.
//!
//! Tile roles: the activations are the first operand (16 tokens × 32 columns, stored tile by
//! tile), the panel the second (tile row `p` holds columns `2p, 2p+1` of the 16 weight rows), so
//! a product is `out`'s own orientation (tokens × rows) and needs no transpose.
//!
//! Blocking: columns in chunks of 8 tiles (256) are the outer loop, so a chunk's activations stay
//! in L2 while every panel of the row range passes; the f32 accumulators live in a per-call
//! buffer, loaded into tiles and stored back once per chunk.

use std::cell::RefCell;

#[cfg(test)]
use super::bf16_value;
use super::{bf16_round, x86 as amx_x86, K_TILE, TILE};
use crate::quant::{dequantize_row, QK, QK_K};
use crate::repack::{self, Layout, GROUP};

/// Column tiles per chunk (256 columns: one Q4_K super-block).
const CHUNK_TILES: usize = QK_K / K_TILE;
/// u32 values (bf16 pairs) in one tile: 16 pair rows × 16 weight rows of a panel, or 16
/// tokens × 16 pairs of the activations.
const PANEL_TILE: usize = TILE * TILE;

/// Whether repacked quantized weights can use this path: AMX, and AVX512-BF16 for the
/// dequantization and the activations' rounding.
pub fn available() -> bool {
    super::available() && amx_x86::has_avx512_bf16()
}

/// Activations rounded to bf16 in whole zero-padded tiles, each 16 tokens × 32 columns
/// contiguous (1 KiB; `data` holds bf16 pairs): tile (token tile `i`, column tile `k`) at
/// `(i * k_tiles + k) * 256`. A tile load then touches one page and 16 consecutive lines; read
/// in place from a row-major `[n, cols]` buffer, its rows would be a row apart (4 KiB for 2,048
/// columns: the same L1 set and a new page for every row). The 512-token GEMM took 13.3 ms that
/// way and 6.5–7.7 ms this way in quiet runs, but the machine was also seen to swing between
/// those two times on one binary, so the gain is likely, not established.
pub struct Bf16Activations {
    pub n: usize,
    pub cols: usize,
    k_tiles: usize,
    data: Vec<u32>,
}

impl Bf16Activations {
    pub fn new(x: &[f32], n: usize, cols: usize) -> Self {
        assert_eq!(x.len(), n * cols, "Bf16Activations: x is not [n, cols]");
        let k_tiles = cols.div_ceil(K_TILE);
        let mut data = super::spare_buffer(n.div_ceil(TILE) * k_tiles * PANEL_TILE);
        let whole = if amx_x86::has_avx512_bf16() {
            cols / K_TILE
        } else {
            0
        };
        for (t, row) in x.chunks_exact(cols.max(1)).take(n).enumerate() {
            // Pair 0 of this token in tile k.
            let at = |k: usize| ((t / TILE * k_tiles + k) * TILE + t % TILE) * K_TILE / 2;
            if whole > 0 {
                // SAFETY: AVX512-BF16 detected; tile k's 16 pairs of this token land at
                // `at(k)`, inside `data`.
                unsafe { x86::round_tiles(row, whole, &mut data[at(0)..], PANEL_TILE) };
            }
            for p in whole * K_TILE / 2..k_tiles * K_TILE / 2 {
                let v = |c: usize| row.get(c).map_or(0, |&v| bf16_round(v) as u32);
                data[at(p / TILE) + p % TILE] = v(2 * p) | v(2 * p + 1) << 16;
            }
        }
        Bf16Activations {
            n,
            cols,
            k_tiles,
            data,
        }
    }
}

impl Drop for Bf16Activations {
    fn drop(&mut self) {
        super::recycle(std::mem::take(&mut self.data));
    }
}

thread_local! {
    /// Per call: the f32 accumulators (`[panel][token][16]`) and two dequantized panels.
    static SCRATCH: RefCell<(Vec<f32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Rows `r0..r0+nr` (whole 8-row groups) of a repacked matrix against every token of `act`:
/// `out[t * ld + r] = w[r0 + r] · x[t]`. Needs [`available`].
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows(
    layout: Layout,
    data: &[u8],
    cols: usize,
    r0: usize,
    nr: usize,
    act: &Bf16Activations,
    out: &mut [f32],
    ld: usize,
) {
    assert!(available(), "amx::grouped::gemm_rows called without AMX");
    assert_eq!(act.cols, cols, "amx::grouped::gemm_rows: activation width");
    assert!(r0.is_multiple_of(GROUP) && nr.is_multiple_of(GROUP));
    let block = layout.plain().block_elems();
    assert!(cols.is_multiple_of(block), "{layout:?}: {cols} columns");
    let gb = layout.group_bytes(cols);
    assert!(data.len() >= (r0 + nr) / GROUP * gb, "rows out of range");
    let n = act.n;
    assert!(n == 0 || out.len() >= (n - 1) * ld + nr);
    if n == 0 || nr == 0 {
        return;
    }
    let groups = nr / GROUP;
    let panels = groups.div_ceil(2);
    let n_pad = n.next_multiple_of(TILE);
    let k_tiles = cols / K_TILE;
    let group = |g: usize| (g < groups).then(|| &data[(r0 / GROUP + g) * gb..][..gb]);
    SCRATCH.with(|cell| {
        let (acc, pan) = &mut *cell.borrow_mut();
        // One extra panel of accumulators takes a lone last panel's discarded twin.
        acc.clear();
        acc.resize((panels + 1) * n_pad * TILE, 0.0);
        pan.resize(2 * CHUNK_TILES * PANEL_TILE, 0);
        let (pan0, pan1) = pan.split_at_mut(CHUNK_TILES * PANEL_TILE);
        // SAFETY (all below): `available()` asserted (AMX with its tile state, AVX512-BF16).
        unsafe { amx_x86::configure_tiles() };
        for kt0 in (0..k_tiles).step_by(CHUNK_TILES) {
            let kn = CHUNK_TILES.min(k_tiles - kt0);
            for p in (0..panels).step_by(2) {
                dequantize_panel(layout, group(2 * p), group(2 * p + 1), kt0, kn, pan0);
                let second = p + 1 < panels;
                if second {
                    dequantize_panel(layout, group(2 * p + 2), group(2 * p + 3), kt0, kn, pan1);
                }
                let c0 = p * n_pad * TILE;
                let c1 = if second {
                    c0 + n_pad * TILE
                } else {
                    panels * n_pad * TILE
                };
                let b1: &[u32] = if second { pan1 } else { pan0 };
                // SAFETY: tiles configured above; the activations hold every token tile of
                // `k_tiles` ≥ kt0 + kn column tiles, each panel `kn` tiles, each accumulator panel
                // `n_pad` rows of 16 floats.
                unsafe {
                    x86::panel_pair(act, kt0, kn, pan0, b1, acc, c0, c1);
                }
            }
        }
        unsafe { amx_x86::release_tiles() };
        for p in 0..panels {
            let rows = TILE.min(nr - p * TILE);
            for t in 0..n {
                let src = &acc[(p * n_pad + t) * TILE..][..TILE];
                let dst = &mut out[t * ld + p * TILE..][..rows];
                if rows == TILE {
                    // A fixed-size copy: two vector moves, not a `memcpy` call per token.
                    let dst: &mut [f32; TILE] = dst.try_into().expect("16 rows");
                    *dst = src.try_into().expect("16 rows");
                } else {
                    dst.copy_from_slice(&src[..rows]);
                }
            }
        }
    });
}

/// Column tiles `kt0..kt0+kn` of the 16-row panel made of groups `g0` (rows 0–7) and `g1`
/// (rows 8–15; zeros when absent), as bf16 in AMX's second-operand layout: tile `k` at
/// `dst[k * 256..]`, the pair of columns `2p, 2p+1` of row `r` at `dst[k * 256 + 16p + r]`.
fn dequantize_panel(
    layout: Layout,
    g0: Option<&[u8]>,
    g1: Option<&[u8]>,
    kt0: usize,
    kn: usize,
    dst: &mut [u32],
) {
    assert!(dst.len() >= kn * PANEL_TILE);
    let Some(g0) = g0 else {
        dst[..kn * PANEL_TILE].fill(0);
        return;
    };
    if amx_x86::has_avx512_bf16() {
        // The kernels read whole blocks from `kt0` on: check they exist.
        if layout == Layout::Q4Kx8 {
            // The Q4_K kernel dequantizes one whole super-block (8 tiles).
            assert!(kt0.is_multiple_of(CHUNK_TILES) && kn == CHUNK_TILES);
        }
        let block = layout.plain().block_elems();
        let end = layout.group_bytes(((kt0 + kn) * K_TILE).next_multiple_of(block));
        assert!(g0.len() >= end && g1.is_none_or(|g| g.len() >= end));
        // SAFETY: AVX512-BF16 detected; block and destination bounds checked above.
        unsafe { x86::dequantize_panel(layout, g0, g1, kt0, kn, dst) };
    } else {
        dequantize_panel_plain(layout, g0, g1, kt0, kn, dst);
    }
}

/// Plain version of [`dequantize_panel`]: each row unpacked and dequantized with the plain
/// format's code, then rounded to bf16.
fn dequantize_panel_plain(
    layout: Layout,
    g0: &[u8],
    g1: Option<&[u8]>,
    kt0: usize,
    kn: usize,
    dst: &mut [u32],
) {
    let ty = layout.plain();
    // Whole blocks of the plain format covering the chunk.
    let cols = ((kt0 + kn) * K_TILE).next_multiple_of(ty.block_elems());
    let mut bytes = vec![0u8; ty.row_bytes(cols)];
    let mut row = vec![0.0f32; cols];
    dst[..kn * PANEL_TILE].fill(0);
    for r in 0..TILE {
        let Some(g) = (if r < GROUP { Some(g0) } else { g1 }) else {
            break;
        };
        layout.unpack_row(g, cols, r % GROUP, &mut bytes);
        dequantize_row(ty, &bytes, &mut row);
        for (j, &v) in row[kt0 * K_TILE..(kt0 + kn) * K_TILE].iter().enumerate() {
            let i = j / K_TILE * PANEL_TILE + (j % K_TILE) / 2 * TILE + r;
            dst[i] |= (bf16_round(v) as u32) << (16 * (j % 2));
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// The first `tiles` 32-column tiles of one token's row rounded to bf16, tile k's 16 pairs
    /// at `out[k * step..]`.
    ///
    /// # Safety
    /// AVX512-BF16 must be present.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_tiles(row: &[f32], tiles: usize, out: &mut [u32], step: usize) {
        assert!(
            tiles == 0
                || (row.len() >= tiles * K_TILE && out.len() >= (tiles - 1) * step + K_TILE / 2)
        );
        for k in 0..tiles {
            let x = row.as_ptr().add(k * K_TILE);
            let (a, b) = (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
            let h: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
            _mm512_storeu_si512(out.as_mut_ptr().add(k * step) as *mut _, h);
        }
    }

    /// Per-row f32 factors as the 4 vectors an 8×8 byte block needs: vector `i` holds row 2i's
    /// factor 8 times, then row 2i+1's.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn per_row(v: __m256) -> [__m512; 4] {
        let v = _mm512_castps256_ps512(v);
        let at = |a: i32| {
            let b = a + 1;
            _mm512_permutexvar_ps(
                _mm512_setr_epi32(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b),
                v,
            )
        };
        [at(0), at(2), at(4), at(6)]
    }

    /// 8 columns of 16 rows, given as two 64-byte blocks (rows 0–7, then 8–15; row r's 8 bytes
    /// at 8r), as `byte * scale[row] + offset[row]` in bf16, written as the 4 pair rows at
    /// `dst`, `dst + 16`, `dst + 32`, `dst + 48`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn emit_8x8<const SIGNED: bool>(
        bytes: [__m512i; 2],
        scale: &[[__m512; 4]; 2],
        offset: &[[__m512; 4]; 2],
        dst: *mut u32,
    ) {
        let f = |g: usize, i: usize| {
            let lane = match i {
                0 => _mm512_castsi512_si128(bytes[g]),
                1 => _mm512_extracti32x4_epi32::<1>(bytes[g]),
                2 => _mm512_extracti32x4_epi32::<2>(bytes[g]),
                _ => _mm512_extracti32x4_epi32::<3>(bytes[g]),
            };
            let v = if SIGNED {
                _mm512_cvtepi8_epi32(lane)
            } else {
                _mm512_cvtepu8_epi32(lane)
            };
            _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), scale[g][i], offset[g][i])
        };
        // z[g][h]: rows 8g + 4h .. +4, dword 4ρ + q = row ρ's columns 2q, 2q+1.
        let pairs = |g: usize, h: usize| -> __m512i {
            std::mem::transmute(_mm512_cvtne2ps_pbh(f(g, 2 * h + 1), f(g, 2 * h)))
        };
        let z = [[pairs(0, 0), pairs(0, 1)], [pairs(1, 0), pairs(1, 1)]];
        for q in 0..4i32 {
            // Lane j takes row j: from z[.][0] for j % 8 < 4, z[.][1] otherwise.
            let idx = _mm512_setr_epi32(
                q,
                4 + q,
                8 + q,
                12 + q,
                16 + q,
                20 + q,
                24 + q,
                28 + q,
                q,
                4 + q,
                8 + q,
                12 + q,
                16 + q,
                20 + q,
                24 + q,
                28 + q,
            );
            let lo = _mm512_permutex2var_epi32(z[0][0], idx, z[0][1]);
            let hi = _mm512_permutex2var_epi32(z[1][0], idx, z[1][1]);
            _mm512_storeu_si512(
                dst.add(q as usize * TILE) as *mut _,
                _mm512_mask_blend_epi32(0xFF00, lo, hi),
            );
        }
    }

    /// # Safety
    /// AVX512-BF16 must be present; the groups hold the blocks of tiles `kt0..kt0+kn` (Q4_K:
    /// one whole super-block), `dst` `kn` tiles.
    #[target_feature(enable = "avx2,f16c,fma,avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn dequantize_panel(
        layout: Layout,
        g0: &[u8],
        g1: Option<&[u8]>,
        kt0: usize,
        kn: usize,
        dst: &mut [u32],
    ) {
        let zero = _mm512_setzero_ps();
        let none = [zero; 4];
        let (p0, p1) = (g0.as_ptr(), g1.map(|g| g.as_ptr()));
        let load = |p: Option<*const u8>, off: usize| {
            p.map_or(_mm512_setzero_si512(), |p| {
                _mm512_loadu_si512(p.add(off) as *const _)
            })
        };
        let f16x8 = |p: Option<*const u8>, off: usize| {
            p.map_or(_mm256_setzero_ps(), |p| {
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(off) as *const _))
            })
        };
        let out = dst.as_mut_ptr();
        match layout {
            // Repacked only where there is no AMX (see `repack::k16_repack_supported`), and
            // `matmul::Act::new` does not route them here.
            Layout::K16x8(_) | Layout::Q5Kx8 | Layout::IQ4x8(_) | Layout::Q5_1x8 => {
                unreachable!("{layout:?} groups on AMX")
            }
            Layout::Q8_0x8 => {
                // Block bytes: 8 f16 scales, then 4-column groups k of rows 0..8 (4 bytes each).
                let bb = repack::group_bytes(QK);
                // Two 4-column groups (8 columns) into row-major 8 bytes per row.
                let rows_first =
                    _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15);
                for k in 0..kn {
                    let b = (kt0 + k) * bb;
                    let s = [per_row(f16x8(Some(p0), b)), per_row(f16x8(p1, b))];
                    for m in 0..4 {
                        let off = b + 2 * GROUP + 64 * m;
                        let bytes = [
                            _mm512_permutexvar_epi32(rows_first, load(Some(p0), off)),
                            _mm512_permutexvar_epi32(rows_first, load(p1, off)),
                        ];
                        emit_8x8::<true>(
                            bytes,
                            &s,
                            &[none, none],
                            out.add(k * PANEL_TILE + 4 * m * TILE),
                        );
                    }
                }
            }
            Layout::Q5_0x8 => {
                let (low4, bit4) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x10));
                let bb = repack::Q5_0_BLOCK_BYTES;
                for k in 0..kn {
                    let b = (kt0 + k) * bb;
                    let d = [f16x8(Some(p0), b), f16x8(p1, b)];
                    let s = [per_row(d[0]), per_row(d[1])];
                    let minus16 = _mm256_set1_ps(-16.0);
                    let o = [
                        per_row(_mm256_mul_ps(d[0], minus16)),
                        per_row(_mm256_mul_ps(d[1], minus16)),
                    ];
                    let mask = |p: Option<*const u8>, m: usize| {
                        p.map_or(0u64, |p| {
                            (p.add(b + 16 + 8 * m) as *const u64).read_unaligned()
                        })
                    };
                    for kk in 0..2 {
                        let q = [load(Some(p0), b + 48 + 64 * kk), load(p1, b + 48 + 64 * kk)];
                        let nib = |g: usize, high: bool| {
                            let v = if high {
                                _mm512_srli_epi16::<4>(q[g])
                            } else {
                                q[g]
                            };
                            let v = _mm512_and_si512(v, low4);
                            let p = if g == 0 { Some(p0) } else { p1 };
                            _mm512_mask_add_epi8(
                                v,
                                mask(p, if high { 2 + kk } else { kk }),
                                v,
                                bit4,
                            )
                        };
                        // Low nibbles: columns 8kk..; high nibbles: columns 16 + 8kk...
                        let tile = out.add(k * PANEL_TILE);
                        emit_8x8::<false>(
                            [nib(0, false), nib(1, false)],
                            &s,
                            &o,
                            tile.add(4 * kk * TILE),
                        );
                        emit_8x8::<false>(
                            [nib(0, true), nib(1, true)],
                            &s,
                            &o,
                            tile.add((8 + 4 * kk) * TILE),
                        );
                    }
                }
            }
            Layout::Q4Kx8 => {
                let low4 = _mm512_set1_epi8(0x0F);
                let b = kt0 / CHUNK_TILES * repack::Q4K_SUPER_BYTES;
                let d = [f16x8(Some(p0), b), f16x8(p1, b)];
                let dmin = [f16x8(Some(p0), b + 16), f16x8(p1, b + 16)];
                let u8x8 = |p: Option<*const u8>, off: usize| {
                    p.map_or(_mm256_setzero_ps(), |p| {
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            p.add(off) as *const _
                        )))
                    })
                };
                // Sub-block j of each row: d·sc[j]·q − dmin·m[j].
                let factors = |j: usize| {
                    let g = |i: usize, p: Option<*const u8>| {
                        (
                            per_row(_mm256_mul_ps(d[i], u8x8(p, b + 32 + 8 * j))),
                            per_row(_mm256_sub_ps(
                                _mm256_setzero_ps(),
                                _mm256_mul_ps(dmin[i], u8x8(p, b + 96 + 8 * j)),
                            )),
                        )
                    };
                    let ((s0, o0), (s1, o1)) = (g(0, Some(p0)), g(1, p1));
                    ([s0, s1], [o0, o1])
                };
                for c in 0..4 {
                    let (slo, olo) = factors(2 * c);
                    let (shi, ohi) = factors(2 * c + 1);
                    for kk in 0..4 {
                        let off = b + 160 + c * 256 + kk * 64;
                        let q = [load(Some(p0), off), load(p1, off)];
                        let lo = q.map(|v| _mm512_and_si512(v, low4));
                        let hi = q.map(|v| _mm512_and_si512(_mm512_srli_epi16::<4>(v), low4));
                        // Sub-block 2c is tile 2c of the super-block, 2c + 1 the next.
                        emit_8x8::<false>(
                            lo,
                            &slo,
                            &olo,
                            out.add(2 * c * PANEL_TILE + 4 * kk * TILE),
                        );
                        emit_8x8::<false>(
                            hi,
                            &shi,
                            &ohi,
                            out.add((2 * c + 1) * PANEL_TILE + 4 * kk * TILE),
                        );
                    }
                }
            }
        }
    }

    /// Two dequantized panels against every token tile, accumulating column tiles
    /// `kt0..kt0+kn` into `acc` at `c0` (panel `b0`) and `c1` (panel `b1`), `[token][16]` each.
    ///
    /// # Safety
    /// Tiles configured (`amx::x86::configure_tiles`); `act` holds `kt0 + kn` column tiles, the
    /// panels `kn` tiles, `acc` `n rounded up to 16` rows of 16 at `c0` and `c1`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel_pair(
        act: &Bf16Activations,
        kt0: usize,
        kn: usize,
        b0: &[u32],
        b1: &[u32],
        acc: &mut [f32],
        c0: usize,
        c1: usize,
    ) {
        let token_tiles = act.n.div_ceil(TILE);
        assert!(b0.len() >= kn * PANEL_TILE && b1.len() >= kn * PANEL_TILE);
        assert!(
            kt0 + kn <= act.k_tiles && act.data.len() >= token_tiles * act.k_tiles * PANEL_TILE
        );
        assert!(acc.len() >= c0.max(c1) + token_tiles * TILE * TILE);
        let a_stride = K_TILE * 2;
        let a = |ti: usize, k: usize| {
            act.data
                .as_ptr()
                .add((ti * act.k_tiles + kt0 + k) * PANEL_TILE)
        };
        let acc = acc.as_mut_ptr();
        let mut ti = 0;
        while ti < token_tiles {
            let (ca0, ca1) = (
                acc.add(c0 + ti * TILE * TILE),
                acc.add(c1 + ti * TILE * TILE),
            );
            if ti + 1 < token_tiles {
                let (cb0, cb1) = (ca0.add(TILE * TILE), ca1.add(TILE * TILE));
                asm!(
                    "tileloadd tmm0, [{ca0} + {s}*1]",
                    "tileloadd tmm1, [{ca1} + {s}*1]",
                    "tileloadd tmm2, [{cb0} + {s}*1]",
                    "tileloadd tmm3, [{cb1} + {s}*1]",
                    ca0 = in(reg) ca0, ca1 = in(reg) ca1, cb0 = in(reg) cb0, cb1 = in(reg) cb1,
                    s = in(reg) 64usize, options(nostack, readonly),
                );
                for k in 0..kn {
                    asm!(
                        "tileloadd tmm4, [{x0} + {sa}*1]",
                        "tileloadd tmm5, [{x1} + {sa}*1]",
                        "tileloadd tmm6, [{w0} + {s}*1]",
                        "tileloadd tmm7, [{w1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        x0 = in(reg) a(ti, k), x1 = in(reg) a(ti + 1, k), sa = in(reg) a_stride,
                        w0 = in(reg) b0.as_ptr().add(k * PANEL_TILE),
                        w1 = in(reg) b1.as_ptr().add(k * PANEL_TILE),
                        s = in(reg) 64usize, options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{ca0} + {s}*1], tmm0",
                    "tilestored [{ca1} + {s}*1], tmm1",
                    "tilestored [{cb0} + {s}*1], tmm2",
                    "tilestored [{cb1} + {s}*1], tmm3",
                    ca0 = in(reg) ca0, ca1 = in(reg) ca1, cb0 = in(reg) cb0, cb1 = in(reg) cb1,
                    s = in(reg) 64usize, options(nostack),
                );
                ti += 2;
            } else {
                // A lone last token tile: half the products.
                asm!(
                    "tileloadd tmm0, [{ca0} + {s}*1]",
                    "tileloadd tmm1, [{ca1} + {s}*1]",
                    ca0 = in(reg) ca0, ca1 = in(reg) ca1, s = in(reg) 64usize, options(nostack, readonly),
                );
                for k in 0..kn {
                    asm!(
                        "tileloadd tmm4, [{x0} + {sa}*1]",
                        "tileloadd tmm6, [{w0} + {s}*1]",
                        "tileloadd tmm7, [{w1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        x0 = in(reg) a(ti, k), sa = in(reg) a_stride,
                        w0 = in(reg) b0.as_ptr().add(k * PANEL_TILE),
                        w1 = in(reg) b1.as_ptr().add(k * PANEL_TILE),
                        s = in(reg) 64usize, options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{ca0} + {s}*1], tmm0",
                    "tilestored [{ca1} + {s}*1], tmm1",
                    ca0 = in(reg) ca0, ca1 = in(reg) ca1, s = in(reg) 64usize, options(nostack),
                );
                ti += 1;
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::*;
    pub unsafe fn round_tiles(_: &[f32], _: usize, _: &mut [u32], _: usize) {
        unreachable!("x86-only")
    }
    pub unsafe fn dequantize_panel(
        _: Layout,
        _: &[u8],
        _: Option<&[u8]>,
        _: usize,
        _: usize,
        _: &mut [u32],
    ) {
        unreachable!("x86-only")
    }
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn panel_pair(
        _: &Bf16Activations,
        _: usize,
        _: usize,
        _: &[u32],
        _: &[u32],
        _: &mut [f32],
        _: usize,
        _: usize,
    ) {
        unreachable!("AMX is x86-only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUTS: [(Layout, usize); 3] = [
        (Layout::Q8_0x8, 96 * 3),
        (Layout::Q5_0x8, 1408),
        (Layout::Q4Kx8, 768),
    ];

    #[test]
    fn dequantized_panels_match_plain_rows() {
        if !amx_x86::has_avx512_bf16() {
            eprintln!("AVX512-BF16 not available here: skipped");
            return;
        }
        for (layout, cols) in LAYOUTS {
            let data = repack::test_weights(layout, 16, cols, 1);
            let gb = layout.group_bytes(cols);
            let (g0, g1) = (&data[..gb], &data[gb..]);
            let k_tiles = cols / K_TILE;
            for second in [Some(g1), None] {
                for kt0 in (0..k_tiles).step_by(CHUNK_TILES) {
                    let kn = CHUNK_TILES.min(k_tiles - kt0);
                    let mut fast = vec![7u32; kn * PANEL_TILE];
                    let mut plain = vec![7u32; kn * PANEL_TILE];
                    dequantize_panel(layout, Some(g0), second, kt0, kn, &mut fast);
                    dequantize_panel_plain(layout, g0, second, kt0, kn, &mut plain);
                    for (i, (&f, &p)) in fast.iter().zip(&plain).enumerate() {
                        for h in [0, 16] {
                            let (a, b) = ((f >> h) as u16, (p >> h) as u16);
                            let (va, vb) = (bf16_value(a), bf16_value(b));
                            // Values, not bits: `d·q + (-16d)` fused gives +0 where the plain
                            // `(q - 16)·d` gives -0 for a negative scale, and both are right.
                            // The plain Q4_K path rounds d·sc·q and the min separately; the
                            // vector one fuses them: at most one bf16 step apart.
                            let larger = if va.abs() >= vb.abs() { a } else { b };
                            let step = bf16_value(larger & 0x7f80) / 128.0;
                            assert!(
                                (va - vb).abs() <= step,
                                "{layout:?} kt0 {kt0} word {i}: {a:#x} vs {b:#x}"
                            );
                        }
                    }
                    if second.is_none() {
                        // Rows 8..16 of a lone group are zero.
                        for k in 0..kn * TILE {
                            assert!(fast[k * TILE + GROUP..(k + 1) * TILE]
                                .iter()
                                .all(|&v| v == 0));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_gemm_matches_reference_on_ragged_shapes() {
        if !available() {
            eprintln!("AMX not available here: skipped");
            return;
        }
        for (layout, cols) in LAYOUTS {
            // Rows: one group, a lone last panel, pairs of panels; tokens: a lone tile, ragged.
            for &(rows, n) in &[(8, 1), (24, 17), (40, 33), (64, 16)] {
                let data = repack::test_weights(layout, rows, cols, rows + n);
                let x: Vec<f32> = (0..n * cols)
                    .map(|i| ((i * 7919) % 1999) as f32 / 999.5 - 1.0)
                    .collect();
                let act = Bf16Activations::new(&x, n, cols);
                let mut out = vec![f32::NAN; n * rows];
                gemm_rows(layout, &data, cols, 0, rows, &act, &mut out, rows);
                // Reference: the plain format's dequantized rows and the activations, both
                // rounded to bf16 as the kernel rounds them, in f64.
                let ty = layout.plain();
                let mut bytes = vec![0u8; ty.row_bytes(cols)];
                let mut w = vec![0.0f32; cols];
                for r in 0..rows {
                    layout.unpack_row(&data, cols, r, &mut bytes);
                    dequantize_row(ty, &bytes, &mut w);
                    w.iter_mut()
                        .for_each(|v| *v = half::bf16::from_f32(*v).to_f32());
                    for t in 0..n {
                        let xb = |c: usize| half::bf16::from_f32(x[t * cols + c]).to_f32() as f64;
                        let want: f64 = (0..cols).map(|c| w[c] as f64 * xb(c)).sum();
                        let mag: f64 = (0..cols).map(|c| (w[c] as f64 * xb(c)).abs()).sum();
                        let got = out[t * rows + r] as f64;
                        // f32 accumulation, and Q4_K's weights one bf16 step apart at most.
                        assert!(
                            (got - want).abs() <= 1e-5 * mag + 2e-3 * mag / cols as f64,
                            "{layout:?} {rows}x{cols} n={n} row {r} token {t}: {got} vs {want}"
                        );
                    }
                }
                // A range of groups in the middle writes only its rows.
                if rows >= 40 {
                    let mut part = vec![0.0f32; n * 16];
                    gemm_rows(layout, &data, cols, 8, 16, &act, &mut part, 16);
                    for t in 0..n {
                        assert_eq!(part[t * 16..(t + 1) * 16], out[t * rows + 8..t * rows + 24]);
                    }
                }
            }
        }
    }
}
