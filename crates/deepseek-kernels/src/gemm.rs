//! f32/bf16 GEMM for prefill on AVX2 (no AMX, no AVX-512): tokens along the vector lanes.
//!
//! The dot-product tiles of [`crate::simd`] (4 rows × 4 tokens, reduced along the columns) need
//! 16 accumulators plus their operands: they fit AVX-512's 32 registers but spill on AVX2's 16,
//! and with bf16 weights every weight vector is also widened per use. Here the tokens are
//! packed once per matmul into 16-wide, column-major tiles ([`TokensMajor`]); a tile of 6 weight
//! rows × 16 tokens keeps 12 accumulators, and per column it loads two token vectors and
//! broadcasts one weight per row (8 loads, 12 FMAs), the shape of a BLAS micro-kernel. bf16
//! rows are widened once per 6-row panel, not once per token tile.

use crate::quant::{self, QuantType};
use crate::simd::{self, Isa};

/// Tokens per packed tile (two AVX2 registers of f32).
const TILE_TOKENS: usize = 16;
/// Weight rows per micro-kernel pass.
const PANEL_ROWS: usize = 6;
/// Fewest tokens worth packing for: below this the dot-product tiles do as well (decode and
/// the routed experts' few tokens).
pub const MIN_TOKENS: usize = 8;

/// Activations `[n, cols]` repacked for [`gemm_rows`]: tile `i` holds tokens `16i..16i + 16`
/// as `data[(i * cols + k) * 16 + t]`, missing tokens zero.
pub struct TokensMajor {
    data: Vec<f32>,
    n: usize,
    cols: usize,
}

impl TokensMajor {
    /// Packs `x` when this CPU takes the tokens-major kernel (AVX2 without AVX-512) and there
    /// are at least [`MIN_TOKENS`] tokens; `None` otherwise.
    pub fn new(x: &[f32], n: usize, cols: usize) -> Option<Self> {
        if simd::isa() != Isa::Avx2 || n < MIN_TOKENS || cols == 0 {
            return None;
        }
        assert_eq!(
            x.len(),
            n * cols,
            "gemm: activation length does not match [n, cols]"
        );
        let tiles = n.div_ceil(TILE_TOKENS);
        let mut data = vec![0.0f32; tiles * cols * TILE_TOKENS];
        for (t, xr) in x.chunks_exact(cols).enumerate() {
            let (tile, lane) = (t / TILE_TOKENS, t % TILE_TOKENS);
            let dst = &mut data[tile * cols * TILE_TOKENS..][..cols * TILE_TOKENS];
            for (k, &v) in xr.iter().enumerate() {
                dst[k * TILE_TOKENS + lane] = v;
            }
        }
        Some(TokensMajor { data, n, cols })
    }
}

/// Weight element types the kernel widens to f32 (f32 itself, bf16 bits).
pub trait PanelWeight: Copy + 'static {
    /// `dst = src` as f32.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// The rows as f32 without copying, where they already are.
    fn as_f32(rows: &[Self]) -> Option<&[f32]>;
}

impl PanelWeight for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn as_f32(rows: &[f32]) -> Option<&[f32]> {
        Some(rows)
    }
}

impl PanelWeight for u16 {
    fn widen(src: &[u16], dst: &mut [f32]) {
        simd::bf16_to_f32(src, dst);
    }
    fn as_f32(_: &[u16]) -> Option<&[f32]> {
        None
    }
}

/// `out[t * ld + r] = Σ_k w[r][k] · x[t][k]` for the `nr` rows of `w` (row-major, `x.cols`
/// wide) and every token of `x`.
pub fn gemm_rows<W: PanelWeight>(w: &[W], nr: usize, x: &TokensMajor, out: &mut [f32], ld: usize) {
    let cols = x.cols;
    assert!(w.len() >= nr * cols, "gemm: weights too short");
    gemm_panels(nr, x, out, ld, |r, rows, panel| {
        let src = &w[r * cols..(r + rows) * cols];
        let direct = W::as_f32(src);
        if direct.is_none() {
            W::widen(src, &mut panel[..rows * cols]);
        }
        direct
    })
}

/// [`gemm_rows`] for rows of a GGML block format (`ty.row_bytes(x.cols)` bytes each),
/// dequantized to f32 one panel at a time: prefill's path for the formats that are not
/// repacked (Q2_K, Q3_K, Q5_K, Q6_K, Q4_1, Q5_1, IQ4_NL, IQ4_XS), whose one-row-at-a-time
/// integer dot products unpack each block once per four tokens.
pub fn gemm_rows_quant(
    ty: QuantType,
    data: &[u8],
    nr: usize,
    x: &TokensMajor,
    out: &mut [f32],
    ld: usize,
) {
    let (cols, rb) = (x.cols, ty.row_bytes(x.cols));
    assert!(data.len() >= nr * rb, "gemm: weights too short");
    gemm_panels(nr, x, out, ld, |r, rows, panel| {
        for (i, o) in panel[..rows * cols].chunks_exact_mut(cols).enumerate() {
            quant::dequantize_row(ty, &data[(r + i) * rb..(r + i + 1) * rb], o);
        }
        None
    })
}

/// [`gemm_rows_quant`] over rows `r0..r0 + nr` of a repacked matrix: each row back in its
/// plain blocks (a byte copy), then dequantized into the panel.
#[allow(clippy::too_many_arguments)]
pub fn gemm_rows_grouped(
    layout: crate::repack::Layout,
    data: &[u8],
    cols: usize,
    r0: usize,
    nr: usize,
    x: &TokensMajor,
    out: &mut [f32],
    ld: usize,
) {
    assert_eq!(
        cols, x.cols,
        "gemm: weight width does not match the activations"
    );
    let mut plain = vec![0u8; layout.plain().row_bytes(cols)];
    gemm_panels(nr, x, out, ld, |r, rows, panel| {
        for (i, o) in panel[..rows * cols].chunks_exact_mut(cols).enumerate() {
            layout.unpack_row(data, cols, r0 + r + i, &mut plain);
            quant::dequantize_row(layout.plain(), &plain, o);
        }
        None
    })
}

/// The GEMM over panels of up to [`PANEL_ROWS`] rows; `panel(r, rows, buf)` gives rows
/// `r..r + rows` as f32 (row-major) where they already are, or writes them into `buf`.
fn gemm_panels<'w>(
    nr: usize,
    x: &TokensMajor,
    out: &mut [f32],
    ld: usize,
    mut panel: impl FnMut(usize, usize, &mut [f32]) -> Option<&'w [f32]>,
) {
    let cols = x.cols;
    assert!(
        x.n == 0 || nr == 0 || out.len() >= (x.n - 1) * ld + nr,
        "gemm: output too short"
    );
    let mut buf = vec![0.0f32; PANEL_ROWS * cols];
    let mut tile = [[0.0f32; TILE_TOKENS]; PANEL_ROWS];
    let mut r = 0;
    while r < nr {
        let rows = (nr - r).min(PANEL_ROWS);
        let p = match panel(r, rows, &mut buf) {
            Some(p) => p,
            None => &buf[..rows * cols],
        };
        for (ti, xt) in x.data.chunks_exact(cols * TILE_TOKENS).enumerate() {
            let t0 = ti * TILE_TOKENS;
            let tokens = (x.n - t0).min(TILE_TOKENS);
            panel_tile(p, rows, cols, xt, tokens > 8, &mut tile);
            for (i, tr) in tile.iter().enumerate().take(rows) {
                for (j, &v) in tr.iter().enumerate().take(tokens) {
                    out[(t0 + j) * ld + r + i] = v;
                }
            }
        }
        r += rows;
    }
}

/// One panel against one token tile (see `x86::tile`).
fn panel_tile(
    p: &[f32],
    rows: usize,
    cols: usize,
    xt: &[f32],
    wide: bool,
    out: &mut [[f32; TILE_TOKENS]; PANEL_ROWS],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `TokensMajor::new` only packs where AVX2 and FMA are present; `tile` checks the
    // slice lengths.
    unsafe {
        x86::tile(p, rows, cols, xt, wide, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, rows, cols, xt, wide, out);
        unreachable!("TokensMajor is only made on x86-64")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{PANEL_ROWS, TILE_TOKENS};
    use std::arch::x86_64::*;

    /// One panel of `rows` (≤ 6) rows against one token tile: `out[r][t]`; `wide` = both token
    /// halves (else the first 8 only).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile(
        p: &[f32],
        rows: usize,
        cols: usize,
        xt: &[f32],
        wide: bool,
        out: &mut [[f32; TILE_TOKENS]; PANEL_ROWS],
    ) {
        assert!(p.len() >= rows * cols && xt.len() >= cols * TILE_TOKENS && rows <= PANEL_ROWS);
        macro_rules! run {
            ($($r:literal),*) => {
                match (rows, wide) {
                    $(($r, true) => kernel::<$r, 2>(p.as_ptr(), cols, xt.as_ptr(), out),
                      ($r, false) => kernel::<$r, 1>(p.as_ptr(), cols, xt.as_ptr(), out),)*
                    _ => unreachable!(),
                }
            };
        }
        run!(1, 2, 3, 4, 5, 6);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn kernel<const R: usize, const V: usize>(
        p: *const f32,
        cols: usize,
        xt: *const f32,
        out: &mut [[f32; TILE_TOKENS]; PANEL_ROWS],
    ) {
        let mut acc = [[_mm256_setzero_ps(); V]; R];
        for k in 0..cols {
            let xv: [__m256; V] =
                std::array::from_fn(|v| _mm256_loadu_ps(xt.add(k * TILE_TOKENS + 8 * v)));
            for (r, a) in acc.iter_mut().enumerate() {
                let w = _mm256_broadcast_ss(&*p.add(r * cols + k));
                for (av, xv) in a.iter_mut().zip(&xv) {
                    *av = _mm256_fmadd_ps(w, *xv, *av);
                }
            }
        }
        for (a, o) in acc.iter().zip(out.iter_mut()) {
            for (v, av) in a.iter().enumerate() {
                _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), *av);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], nr: usize, x: &[f32], n: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0.0; n * nr];
        for t in 0..n {
            for r in 0..nr {
                let d: f64 = (0..cols)
                    .map(|k| w[r * cols + k] as f64 * x[t * cols + k] as f64)
                    .sum();
                out[t * nr + r] = d as f32;
            }
        }
        out
    }

    #[test]
    fn tokens_major_gemm_matches_reference() {
        // Ragged rows (not a multiple of 6), tokens (partial tiles, ≤ 8 and > 8 left), columns.
        for (nr, n, cols) in [
            (13, 8, 37),
            (6, 16, 64),
            (20, 41, 100),
            (1, 9, 5),
            (7, 25, 256),
        ] {
            let w: Vec<f32> = (0..nr * cols)
                .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
                .collect();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| (i * 13 % 29) as f32 / 14.0 - 1.0)
                .collect();
            let Some(packed) = TokensMajor::new(&x, n, cols) else {
                return; // this CPU takes another kernel
            };
            let want = reference(&w, nr, &x, n, cols);
            let mut got = vec![f32::NAN; n * nr];
            gemm_rows(&w, nr, &packed, &mut got, nr);
            // bf16 weights: the same values rounded, widened by the kernel.
            let wb: Vec<u16> = w
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let wr: Vec<f32> = wb.iter().map(|&b| simd::bf16_bits_to_f32(b)).collect();
            let want_b = reference(&wr, nr, &x, n, cols);
            let mut got_b = vec![f32::NAN; n * nr];
            gemm_rows(&wb, nr, &packed, &mut got_b, nr);
            for (got, want) in [(got, want), (got_b, want_b)] {
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{nr}x{n}x{cols} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
