//! Intel AMX GEMM over bf16 weights, for prefill and batched steps.
//!
//! One `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 bf16 tile into 16×16 f32
//! accumulators, 1,024 flops per instruction against an FMA's 32 (`examples/amx_speed` shows the
//! end-to-end gain per matmul). It
//! rounds its inputs to bf16, which the weights already are but the activations are not, so each
//! activation is split into two bf16 parts, `x = hi + lo` (16 significant bits, relative error
//! ≤ 2⁻¹⁷), and every tile product is done twice. The result matches the f32 FMA path to f32
//! rounding instead of being off by bf16's 2⁻⁹.
//!
//! The weights are the first operand, read in place: 16 rows × 32 columns of the checkpoint's
//! row-major matrix is exactly an AMX tile (a strided load), so nothing is repacked. The
//! activations are the second operand, which AMX wants pair-interleaved ("VNNI": tile row `kk`
//! holds `x[t][2kk], x[t][2kk+1]` for the 16 tokens `t`); they are small and rearranged once per
//! matmul. Each tile product is `out` transposed (weight rows × tokens).
//!
//! Elsewhere than x86-64 `available()` is false and the tile code is never reached.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code, unused_imports))]

use std::cell::RefCell;

pub(crate) mod attention;
pub mod grouped;

/// Rows in a tile: tokens of the activation tile, weight rows of a panel.
pub const TILE: usize = 16;
/// bf16 values in a tile row (64 bytes).
const K_TILE: usize = 32;
/// u16 values in one 16×32 tile.
const TILE_LEN: usize = TILE * K_TILE;
/// Token tiles per block: a block's split activations (hi + lo) stay near 1 MiB for 2048
/// columns, so they stay in L2 while the block's weight panels stream past.
const TOKEN_TILES_PER_BLOCK: usize = 8;

/// Whether AMX bf16 tiles can be used: the active [`crate::tier`] is AMX (the CPU has the
/// tiles, the kernel granted this process their state, and no cap below it is set).
pub fn available() -> bool {
    crate::tier::at_least(crate::tier::Tier::Amx)
}

/// Activations split into bf16 `hi` and `lo` parts in AMX's second-operand layout, zero-padded
/// to whole tiles: for token tile `i` and column tile `k`, a 16×32 tile at
/// `(i * k_tiles + k) * 512` whose row `kk` holds `x[16i + t][32k + 2kk + j]` at `2t + j`.
pub struct SplitActivations {
    pub n: usize,
    pub cols: usize,
    k_tiles: usize,
    hi: Vec<u32>,
    lo: Vec<u32>,
}

/// f32 → bf16 bits, rounding to nearest even like `vcvtneps2bf16` (for the columns past the
/// last whole 32-column tile; activations are finite).
#[inline]
fn bf16_round(v: f32) -> u16 {
    let b = v.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline]
fn bf16_value(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `v = hi + lo` in bf16 (16 significant bits).
#[inline]
fn split_bf16(v: f32) -> (u16, u16) {
    let hi = bf16_round(v);
    (hi, bf16_round(v - bf16_value(hi)))
}

/// `x[i] = hi[i] + lo[i]` in bf16, vectorised where AVX512-BF16 is present.
fn split_contiguous(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
    if x86::has_avx512_bf16() {
        // SAFETY: AVX512-BF16 detected; lengths are checked inside.
        unsafe { x86::split_contiguous(x, hi, lo) }
    } else {
        for ((h, l), &v) in hi.iter_mut().zip(lo.iter_mut()).zip(x) {
            (*h, *l) = split_bf16(v);
        }
    }
}

impl SplitActivations {
    pub fn new(x: &[f32], n: usize, cols: usize) -> Self {
        assert_eq!(x.len(), n * cols, "SplitActivations: x is not [n, cols]");
        let k_tiles = cols.div_ceil(K_TILE);
        let pairs = k_tiles * K_TILE / 2;
        let len = n.div_ceil(TILE) * k_tiles * TILE_LEN;
        // Viewed as u32 pairs, tile (i, k) row kk column t is pair `16k + kk` of token `16i + t`,
        // at `(i * k_tiles + k) * 256 + kk * 16 + t`: pair p of a token lands 16 u32 apart.
        let (mut hi, mut lo) = (spare_buffer(len / 2), spare_buffer(len / 2));
        let whole_tiles = if x86::has_avx512_bf16() {
            cols / K_TILE
        } else {
            0
        };
        if whole_tiles > 0 {
            for t0 in (0..n).step_by(TILE) {
                let base = (t0 / TILE) * k_tiles * (TILE_LEN / 2);
                let count = TILE.min(n - t0);
                // SAFETY: AVX512-BF16 is present; the token tile's rows are in `x` and its
                // `k_tiles` tiles of 256 pairs from `base` in `hi` and `lo`.
                unsafe {
                    x86::split_token_tile(
                        &x[t0 * cols..(t0 + count) * cols],
                        cols,
                        whole_tiles,
                        &mut hi[base..base + k_tiles * TILE_LEN / 2],
                        &mut lo[base..base + k_tiles * TILE_LEN / 2],
                    )
                };
            }
        }
        for t in 0..n {
            let row = &x[t * cols..(t + 1) * cols];
            let base = (t / TILE) * k_tiles * (TILE_LEN / 2) + t % TILE;
            for p in whole_tiles * K_TILE / 2..pairs {
                let v = |c: usize| row.get(c).copied().unwrap_or(0.0);
                let ((ha, la), (hb, lb)) = (split_bf16(v(2 * p)), split_bf16(v(2 * p + 1)));
                hi[base + p * TILE] = ha as u32 | (hb as u32) << 16;
                lo[base + p * TILE] = la as u32 | (lb as u32) << 16;
            }
        }
        SplitActivations {
            n,
            cols,
            k_tiles,
            hi,
            lo,
        }
    }

    fn token_tiles(&self) -> usize {
        self.n.div_ceil(TILE)
    }
}

impl Drop for SplitActivations {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.hi));
        recycle(std::mem::take(&mut self.lo));
    }
}

/// A zeroed buffer, reusing one a dropped activation buffer (`SplitActivations`,
/// `grouped::Bf16Activations`) left on this thread: fresh megabyte allocations come from the
/// kernel as zero pages and fault on first touch, which cost more than the split itself.
fn spare_buffer(len: usize) -> Vec<u32> {
    let mut v = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
    v.clear();
    v.resize(len, 0);
    v
}

/// Keeps a dropped activation buffer for [`spare_buffer`] (up to four per thread).
fn recycle(v: Vec<u32>) {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 4 {
            s.push(v);
        }
    });
}

thread_local! {
    static SPARE: RefCell<Vec<Vec<u32>>> = const { RefCell::new(Vec::new()) };
    /// A zero-padded copy of a ragged panel (fewer than 16 rows, or columns not a multiple of 32).
    static PADDED: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Rows `r0..r0+nr` of the bf16 matrix `w` (`[rows, cols]`, row-major) against every token of
/// `act`: `out[t * ld + r] = w[r0 + r] · x[t]`. Needs [`available`].
pub fn gemm_rows(
    w: &[u16],
    cols: usize,
    r0: usize,
    nr: usize,
    act: &SplitActivations,
    out: &mut [f32],
    ld: usize,
) {
    assert!(available(), "amx::gemm_rows called without AMX");
    assert_eq!(act.cols, cols, "amx::gemm_rows: activation width");
    assert!(
        w.len() >= (r0 + nr) * cols,
        "amx::gemm_rows: rows out of range"
    );
    assert!(act.n == 0 || out.len() >= (act.n - 1) * ld + nr);
    let tiles = act.token_tiles();
    let k_pad = act.k_tiles * K_TILE;
    PADDED.with(|cell| {
        let mut pad = cell.borrow_mut();
        pad.resize(2 * TILE * k_pad, 0);
        let (pad0, pad1) = pad.split_at_mut(TILE * k_pad);
        let mut tb = 0;
        while tb < tiles {
            let tb_end = (tb + TOKEN_TILES_PER_BLOCK).min(tiles);
            let mut r = 0;
            while r < nr {
                let p0 = panel(w, cols, r0 + r, (nr - r).min(TILE), k_pad, pad0);
                let p1 = (r + TILE < nr).then(|| {
                    panel(
                        w,
                        cols,
                        r0 + r + TILE,
                        (nr - r - TILE).min(TILE),
                        k_pad,
                        pad1,
                    )
                });
                // SAFETY: AMX is available (asserted); each panel has 16 readable rows of
                // `k_tiles` whole column tiles, and `act` holds tiles `tb..tb_end`.
                unsafe { x86::panels(p0, p1, act, tb, tb_end, &mut out[r..], ld) };
                r += 2 * TILE;
            }
            tb = tb_end;
        }
    });
}

/// 16 weight rows as the kernel reads them: `stride` bytes apart, the first `rows` valid.
#[derive(Clone, Copy)]
struct Panel {
    ptr: *const u16,
    stride: usize,
    rows: usize,
}

/// The panel of rows `first..first+count`: in place when it is whole (16 rows, columns a
/// multiple of 32), else a zero-padded copy in `pad` (16 × `k_pad`).
fn panel(
    w: &[u16],
    cols: usize,
    first: usize,
    count: usize,
    k_pad: usize,
    pad: &mut [u16],
) -> Panel {
    let rows = &w[first * cols..(first + count) * cols];
    if count == TILE && cols.is_multiple_of(K_TILE) {
        return Panel {
            ptr: rows.as_ptr(),
            stride: cols * 2,
            rows: count,
        };
    }
    pad.fill(0);
    for (j, row) in rows.chunks(cols).enumerate() {
        pad[j * k_pad..j * k_pad + cols].copy_from_slice(row);
    }
    Panel {
        ptr: pad.as_ptr(),
        stride: k_pad * 2,
        rows: count,
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Panel, SplitActivations, K_TILE, TILE, TILE_LEN};
    use std::arch::asm;

    pub fn has_avx512_bf16() -> bool {
        crate::tier::at_least(crate::tier::Tier::Avx512Bf16)
    }

    /// 32 values at `x` split into bf16 `hi` and `lo` parts (`x = hi + lo`), each 32 bf16 in
    /// order.
    ///
    /// # Safety
    /// AVX512-BF16 must be present; 32 values readable at `x`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn split32(x: *const f32) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
        use std::arch::x86_64::*;
        let widen = |h: __m256bh| {
            _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(h)),
                16,
            ))
        };
        let (a, b) = (_mm512_loadu_ps(x), _mm512_loadu_ps(x.add(16)));
        let la = _mm512_sub_ps(a, widen(_mm512_cvtneps_pbh(a)));
        let lb = _mm512_sub_ps(b, widen(_mm512_cvtneps_pbh(b)));
        (
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a)),
            std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(lb, la)),
        )
    }

    /// Splits the first `tiles` 32-column tiles of up to 16 tokens' rows (`x`: whole rows of
    /// `cols`) into bf16 hi/lo pairs in AMX's second-operand layout: tile k's row p (pair p of
    /// every token) at `hi[k * 256 + 16p..]`, missing tokens zero. Sixteen tokens are split
    /// together and transposed in registers: storing each token's pairs 16 dwords apart took a
    /// scatter per 16 values, about 3× slower (`examples/amx_speed`, the `act` column).
    ///
    /// # Safety
    /// AVX512-BF16 must be present.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn split_token_tile(
        x: &[f32],
        cols: usize,
        tiles: usize,
        hi: &mut [u32],
        lo: &mut [u32],
    ) {
        use std::arch::x86_64::*;
        let count = x.len() / cols;
        assert!(count <= TILE && x.len() == count * cols && tiles * K_TILE <= cols);
        assert!(hi.len() >= tiles * TILE * TILE && lo.len() >= tiles * TILE * TILE);
        let zero = _mm512_setzero_si512();
        for k in 0..tiles {
            let mut h = [zero; TILE];
            let mut l = [zero; TILE];
            for t in 0..count {
                (h[t], l[t]) = split32(x.as_ptr().add(t * cols + k * K_TILE));
            }
            for (part, dst) in [(&h, &mut *hi), (&l, &mut *lo)] {
                let rows = crate::simd::x86::transpose16(part);
                for (p, row) in rows.iter().enumerate() {
                    _mm512_storeu_si512(
                        dst.as_mut_ptr().add(k * TILE * TILE + p * TILE) as *mut _,
                        *row,
                    );
                }
            }
        }
    }

    /// `x = hi + lo` in bf16 for contiguous values (32 at a time; the tail in plain code).
    ///
    /// # Safety
    /// AVX512-BF16 must be present.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn split_contiguous(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
        use std::arch::x86_64::*;
        assert!(hi.len() >= x.len() && lo.len() >= x.len());
        let whole = x.len() / K_TILE * K_TILE;
        for i in (0..whole).step_by(K_TILE) {
            let (h, l) = split32(x.as_ptr().add(i));
            _mm512_storeu_si512(hi.as_mut_ptr().add(i) as *mut _, h);
            _mm512_storeu_si512(lo.as_mut_ptr().add(i) as *mut _, l);
        }
        for i in whole..x.len() {
            (hi[i], lo[i]) = super::split_bf16(x[i]);
        }
    }

    /// Tile configuration: palette 1, eight tiles of 16 rows × 64 bytes: tmm0-3 the f32
    /// accumulators of 2 panels × 2 token tiles, tmm4/5 the panels' weights, tmm6/7 the token
    /// tiles' activations (hi, then lo).
    #[repr(C, align(64))]
    struct TileConfig([u8; 64]);

    impl TileConfig {
        fn new() -> Self {
            let mut c = [0u8; 64];
            c[0] = 1;
            for t in 0..8 {
                c[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
                c[48 + t] = TILE as u8;
            }
            TileConfig(c)
        }
    }

    /// Loads the tile configuration (eight 16 × 64-byte tiles) for this thread.
    ///
    /// # Safety
    /// AMX must be enabled for this process.
    pub(super) unsafe fn configure_tiles() {
        let cfg = TileConfig::new();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    }

    /// Gives the tile state back (the thread's context switches get cheaper).
    ///
    /// # Safety
    /// AMX must be enabled for this process.
    pub(super) unsafe fn release_tiles() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// Zeroes the f32 accumulator tiles tmm0–tmm3.
    ///
    /// # Safety
    /// Tiles configured (`configure_tiles`).
    pub(super) unsafe fn zero_accumulators() {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }

    /// Stores the f32 accumulator tiles tmm0–tmm3, one after another, 16 × 16 each.
    ///
    /// # Safety
    /// Tiles configured (`configure_tiles`).
    pub(super) unsafe fn store_accumulators(c: &mut [f32; 4 * TILE * TILE]) {
        asm!(
            "tilestored [{c0} + {s}*1], tmm0",
            "tilestored [{c1} + {s}*1], tmm1",
            "tilestored [{c2} + {s}*1], tmm2",
            "tilestored [{c3} + {s}*1], tmm3",
            c0 = in(reg) c.as_mut_ptr(),
            c1 = in(reg) c.as_mut_ptr().add(TILE * TILE),
            c2 = in(reg) c.as_mut_ptr().add(2 * TILE * TILE),
            c3 = in(reg) c.as_mut_ptr().add(3 * TILE * TILE),
            s = in(reg) TILE * 4,
            options(nostack),
        );
    }

    /// One or two 16-row weight panels against token tiles `tb..tb_end`, two token tiles at a
    /// time (a missing second panel repeats the first and is not stored):
    /// `out[t * ld + 16 * panel + r]`.
    ///
    /// # Safety
    /// AMX must be enabled for this process; each panel has 16 rows of `act.k_tiles` whole
    /// column tiles readable.
    pub(super) unsafe fn panels(
        p0: Panel,
        p1: Option<Panel>,
        act: &SplitActivations,
        tb: usize,
        tb_end: usize,
        out: &mut [f32],
        ld: usize,
    ) {
        let mut c = [0.0f32; 4 * TILE * TILE];
        let q1 = p1.unwrap_or(p0);
        let k_tiles = act.k_tiles;
        let tile = |v: &Vec<u32>, i: usize| (v.as_ptr() as *const u16).add(i * k_tiles * TILE_LEN);
        configure_tiles();
        let mut ti = tb;
        while ti < tb_end {
            // Two token tiles per pass, or a lone last one (then `tj == ti`).
            let tj = if ti + 1 < tb_end { ti + 1 } else { ti };
            let (hi0, lo0, hi1, lo1) = (
                tile(&act.hi, ti),
                tile(&act.lo, ti),
                tile(&act.hi, tj),
                tile(&act.lo, tj),
            );
            zero_accumulators();
            for kt in 0..k_tiles {
                let a = kt * TILE_LEN;
                let (w0, w1) = (p0.ptr.add(kt * K_TILE), q1.ptr.add(kt * K_TILE));
                if tj > ti {
                    asm!(
                        "tileloadd tmm4, [{w0} + {s0}*1]",
                        "tileloadd tmm5, [{w1} + {s1}*1]",
                        "tileloadd tmm6, [{hi0} + {s}*1]",
                        "tileloadd tmm7, [{hi1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        "tileloadd tmm6, [{lo0} + {s}*1]",
                        "tileloadd tmm7, [{lo1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        w0 = in(reg) w0,
                        s0 = in(reg) p0.stride,
                        w1 = in(reg) w1,
                        s1 = in(reg) q1.stride,
                        hi0 = in(reg) hi0.add(a),
                        hi1 = in(reg) hi1.add(a),
                        lo0 = in(reg) lo0.add(a),
                        lo1 = in(reg) lo1.add(a),
                        s = in(reg) 2 * TILE * 2,
                        options(nostack, readonly),
                    );
                } else {
                    // A lone last token tile: half the products, into tmm0 and tmm2.
                    asm!(
                        "tileloadd tmm4, [{w0} + {s0}*1]",
                        "tileloadd tmm5, [{w1} + {s1}*1]",
                        "tileloadd tmm6, [{hi0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tileloadd tmm6, [{lo0} + {s}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        w0 = in(reg) w0,
                        s0 = in(reg) p0.stride,
                        w1 = in(reg) w1,
                        s1 = in(reg) q1.stride,
                        hi0 = in(reg) hi0.add(a),
                        lo0 = in(reg) lo0.add(a),
                        s = in(reg) 2 * TILE * 2,
                        options(nostack, readonly),
                    );
                }
            }
            store_accumulators(&mut c);
            // Accumulator (panel p, token tile k) holds [weight row][token]: transpose into
            // out[token][row].
            let tiles = if tj > ti { 2 } else { 1 };
            for (p, panel) in [Some(p0), p1].into_iter().enumerate() {
                let Some(panel) = panel else { break };
                for (k, tt) in [ti, tj].into_iter().enumerate().take(tiles) {
                    let acc = &c[(2 * p + k) * TILE * TILE..][..TILE * TILE];
                    for t in 0..TILE.min(act.n - tt * TILE) {
                        let o = &mut out[(tt * TILE + t) * ld + p * TILE..][..panel.rows];
                        for (r, v) in o.iter_mut().enumerate() {
                            *v = acc[r * TILE + t];
                        }
                    }
                }
            }
            ti = tj + 1;
        }
        release_tiles();
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod x86 {
    use super::SplitActivations;
    pub fn has_avx512_bf16() -> bool {
        false
    }
    pub unsafe fn split_token_tile(_: &[f32], _: usize, _: usize, _: &mut [u32], _: &mut [u32]) {
        unreachable!("x86-only")
    }
    pub unsafe fn split_contiguous(_: &[f32], _: &mut [u16], _: &mut [u16]) {
        unreachable!("x86-only")
    }
    pub(super) unsafe fn configure_tiles() {
        unreachable!("AMX is x86-only")
    }
    pub(super) unsafe fn release_tiles() {
        unreachable!("AMX is x86-only")
    }
    pub(super) unsafe fn panels(
        _: super::Panel,
        _: Option<super::Panel>,
        _: &SplitActivations,
        _: usize,
        _: usize,
        _: &mut [f32],
        _: usize,
    ) {
        unreachable!("AMX is x86-only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn amx_gemm_matches_reference_on_ragged_shapes() {
        if !available() {
            eprintln!("AMX not available here: skipped");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        // Ragged rows, tokens and columns (not multiples of 16 / 32), and a matrix larger than
        // one pass (several passes of panels).
        for &(rows, cols, n) in &[
            (1, 32, 1),
            (17, 40, 3),
            (40, 96, 17),
            (64, 2048, 33),
            (1100, 1000, 5),
        ] {
            let w: Vec<u16> = (0..rows * cols)
                .map(|_| half::bf16::from_f32(rng.random_range(-1.0..1.0)).to_bits())
                .collect();
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-2.0..2.0)).collect();
            let act = SplitActivations::new(&x, n, cols);
            let mut out = vec![f32::NAN; n * rows];
            gemm_rows(&w, cols, 0, rows, &act, &mut out, rows);
            let m = crate::Matrix {
                rows,
                cols,
                data: crate::MatrixData::BF16(w.clone().into()),
            };
            let want = crate::matmul::matmul_reference(&m, &x, n);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                // f32 accumulation over `cols` terms of size ~1: a few ulps of the sum's scale.
                let tol = 1e-5 * (cols as f32).sqrt() * 4.0;
                assert!(
                    (a - b).abs() <= tol,
                    "{rows}x{cols} n={n} [{i}]: {a} vs {b}"
                );
            }
            // A row range in the middle writes only its rows.
            if rows > 20 {
                let mut part = vec![0.0f32; n * 7];
                gemm_rows(&w, cols, 9, 7, &act, &mut part, 7);
                for t in 0..n {
                    for r in 0..7 {
                        assert_eq!(part[t * 7 + r], out[t * rows + 9 + r]);
                    }
                }
            }
        }
    }
}
