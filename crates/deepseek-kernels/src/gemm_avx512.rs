//! bf16 GEMM for prefill on AVX512-BF16 CPUs without AMX (Cooper Lake, AMD Zen 4 and 5): the
//! weights along the vector lanes in 16-row panels, the tokens broadcast, `vdpbf16ps`.
//!
//! The dot-product tiles of [`crate::simd`] (4 rows × 4 tokens, reduced along the columns)
//! widen every bf16 weight vector to f32 once per 4 tokens and run f32 FMAs. Here each 16-row
//! panel is built once per call (16 rows transposed 32 columns at a time, so one register holds
//! one pair of columns of 16 rows, as `vdpbf16ps` takes them) and meets every token: two
//! panels × [`TOKENS`] tokens per pass, 24 accumulators that hold the 32 rows' outputs of each
//! token, two weight loads and 12 broadcasts per pair of columns, 32 bf16 products per
//! instruction, no horizontal sums. One Zen 4 core: ~100 GFLOP/s on the tiles, 170-197 here
//! at 48-512 tokens (`examples/gemv_speed`).
//!
//! The activations are rounded to bf16 for it, as llama.cpp's and PyTorch's bf16 paths round
//! them (2⁻⁹ relative per value), so it runs only when asked for ([`Precision::bf16_activations`]);
//! by default bf16 weights meet f32 activations on the f32 tiles (a panel of f32 FMAs on
//! widened weights measured no faster than the tiles, 71-101 against 100-106 GFLOP/s, so there
//! is none; nor a `vdpbf16ps` form with the activations split in two bf16 parts, as the AMX
//! path does: its two products per pair run at the tiles' rate on Zen 4).
//!
//! Elsewhere than x86-64 no activations for it are ever made and the kernels are never reached.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_variables, clippy::never_loop)
)]

use std::cell::RefCell;

use crate::precision::Precision;

/// Rows of a panel: the 16 f32 lanes of one register.
const PANEL_ROWS: usize = 16;
/// Rows per pass: two panels.
pub const PASS_ROWS: usize = 2 * PANEL_ROWS;
/// Most tokens per pass: 2 × 12 accumulators of the 32 registers.
const TOKENS: usize = 12;
/// Fewest tokens worth building panels for; below it the dot-product tiles do as well.
pub const MIN_TOKENS: usize = 8;

/// Activations rounded to bf16 pairs: token `t`'s columns `2p, 2p + 1` in
/// `pairs[t * pairs_per_row + p]`.
pub struct Activations {
    n: usize,
    cols: usize,
    pairs: Vec<u32>,
}

/// `x` rounded to bf16 (nearest even), as f32.
pub fn rounded(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect()
}

impl Activations {
    /// For `n` tokens of `x` against bf16 weights, when activations are rounded to bf16 here
    /// ([`Precision::rounds_bf16`]) and there are at least [`MIN_TOKENS`] tokens; `None`
    /// otherwise.
    pub fn new(x: &[f32], n: usize, cols: usize, p: Precision) -> Option<Self> {
        if n < MIN_TOKENS || cols == 0 || !p.rounds_bf16() {
            return None;
        }
        Some(Self::prepare(x, n, cols))
    }

    /// Needs AVX512-BF16.
    fn prepare(x: &[f32], n: usize, cols: usize) -> Self {
        assert_eq!(
            x.len(),
            n * cols,
            "gemm: activation length does not match [n, cols]"
        );
        let per = cols.div_ceil(2);
        let mut pairs = vec![0u32; n * per];
        for (xr, pr) in x.chunks_exact(cols).zip(pairs.chunks_exact_mut(per)) {
            round_pairs(xr, pr);
        }
        Activations { n, cols, pairs }
    }
}

/// `x` rounded to bf16 (to nearest even), as pairs of columns.
fn round_pairs(x: &[f32], out: &mut [u32]) {
    let whole = x.len() / 32;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only called where AVX512-BF16 is present (`Activations::new`); `out` holds
    // `x.len().div_ceil(2)` pairs, 16 per 32 values.
    unsafe {
        x86::round_pairs(&x[..whole * 32], &mut out[..whole * 16])
    };
    let b = |i: usize| {
        x.get(i)
            .map_or(0, |&v| half::bf16::from_f32(v).to_bits() as u32)
    };
    for (p, o) in out.iter_mut().enumerate().skip(whole * 16) {
        *o = b(2 * p) | b(2 * p + 1) << 16;
    }
}

thread_local! {
    /// Two panels of weights.
    static PANELS: RefCell<[Vec<u32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// `out[t * ld + r] = Σ_k w[r][k] · x[t][k]` for the `nr` bf16 rows of `w` (row-major, `cols`
/// wide) and every token of `act`.
pub fn gemm_rows(w: &[u16], nr: usize, act: &Activations, out: &mut [f32], ld: usize) {
    let (n, cols) = (act.n, act.cols);
    assert!(w.len() >= nr * cols, "gemm: weights too short");
    assert!(
        n == 0 || nr == 0 || out.len() >= (n - 1) * ld + nr,
        "gemm: output too short"
    );
    let steps = cols.div_ceil(2);
    PANELS.with(|cell| {
        let panels = &mut *cell.borrow_mut();
        for v in panels.iter_mut() {
            v.resize(steps * PANEL_ROWS, 0);
        }
        for r0 in (0..nr).step_by(PASS_ROWS) {
            let rows = (nr - r0).min(PASS_ROWS);
            let count = rows.div_ceil(PANEL_ROWS);
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Activations` are only made where AVX512-BF16 is present; rows `r0..r0 +
            // rows` are in `w`, the panels are sized for `steps` pairs above, and `out` holds
            // `n` rows of `ld` from column `r0`, `rows` of them written.
            unsafe {
                for (i, panel) in panels.iter_mut().enumerate().take(count) {
                    let first = r0 + i * PANEL_ROWS;
                    let k = (nr - first).min(PANEL_ROWS);
                    x86::pairs_panel(&w[first * cols..(first + k) * cols], cols, k, panel);
                }
                let mut t0 = 0;
                while t0 < n {
                    let t = (n - t0).min(TOKENS);
                    let dst = out[t0 * ld + r0..].as_mut_ptr();
                    x86::pass(panels, act, steps, count, rows, t0, t, dst, ld);
                    t0 += t;
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (count, panels);
                unreachable!("AVX-512 is x86-only");
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// `x` (a multiple of 32 values) rounded to bf16 pairs.
    ///
    /// # Safety
    /// AVX512-BF16; `out` holds `x.len() / 2` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_pairs(x: &[f32], out: &mut [u32]) {
        assert!(out.len() * 2 >= x.len());
        for (i, c) in x.chunks_exact(32).enumerate() {
            let (a, b) = (
                _mm512_loadu_ps(c.as_ptr()),
                _mm512_loadu_ps(c.as_ptr().add(16)),
            );
            let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
            _mm512_storeu_si512(out.as_mut_ptr().add(16 * i) as *mut _, v);
        }
    }

    /// The `count` (≤ 16) rows of `src` as pairs of columns: pair `p` of row `r` at
    /// `panel[16p + r]`, missing rows and the odd last column zero.
    ///
    /// # Safety
    /// AVX-512 F.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn pairs_panel(src: &[u16], cols: usize, count: usize, panel: &mut Vec<u32>) {
        let pairs = cols.div_ceil(2);
        assert!(count <= PANEL_ROWS && src.len() >= count * cols && panel.len() >= pairs * 16);
        let whole = cols / 32;
        let dst = panel.as_mut_ptr();
        for k in 0..whole {
            let rows: [__m512i; 16] = std::array::from_fn(|r| {
                if r < count {
                    _mm512_loadu_si512(src.as_ptr().add(r * cols + 32 * k) as *const _)
                } else {
                    _mm512_setzero_si512()
                }
            });
            let t = crate::simd::x86::transpose16(&rows);
            for (p, v) in t.iter().enumerate() {
                _mm512_storeu_si512(dst.add((16 * k + p) * 16) as *mut _, *v);
            }
        }
        for p in 16 * whole..pairs {
            for r in 0..PANEL_ROWS {
                let b = |c: usize| {
                    if r < count && c < cols {
                        src[r * cols + c] as u32
                    } else {
                        0
                    }
                };
                panel[16 * p + r] = b(2 * p) | b(2 * p + 1) << 16;
            }
        }
    }

    /// One pass: the built panels (`count` of them, `rows` rows in all) against tokens
    /// `t0..t0 + tokens`.
    ///
    /// # Safety
    /// AVX512-BF16; panels of `steps` pairs; `out` holds `tokens` rows of `ld` with `rows`
    /// values each.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn pass(
        panels: &[Vec<u32>; 2],
        act: &Activations,
        steps: usize,
        count: usize,
        rows: usize,
        t0: usize,
        tokens: usize,
        out: *mut f32,
        ld: usize,
    ) {
        assert!(tokens <= TOKENS && t0 + tokens <= act.n && (1..=2).contains(&count));
        assert!(panels
            .iter()
            .take(count)
            .all(|p| p.len() >= steps * PANEL_ROWS));
        assert!(act.pairs.len() >= (t0 + tokens) * steps);
        let keep = |i: usize| -> __mmask16 {
            let r = rows.saturating_sub(i * PANEL_ROWS).min(PANEL_ROWS);
            ((1u32 << r) - 1) as __mmask16
        };
        let keep = [keep(0), keep(1)];
        let w = [panels[0].as_ptr(), panels[1].as_ptr()];
        let x = act.pairs.as_ptr().add(t0 * steps);
        macro_rules! run {
            ($($t:literal),*) => {
                match (count, tokens) {
                    $((2, $t) => kernel::<2, $t>(w, steps, x, out, ld, keep),)*
                    $((_, $t) => kernel::<1, $t>(w, steps, x, out, ld, keep),)*
                    _ => unreachable!(),
                }
            };
        }
        run!(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
    }

    /// `P` panels × `T` tokens: `x + t * steps` is token t's pairs.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn kernel<const P: usize, const T: usize>(
        w: [*const u32; 2],
        steps: usize,
        x: *const u32,
        out: *mut f32,
        ld: usize,
        keep: [__mmask16; 2],
    ) {
        let mut acc = [[_mm512_setzero_ps(); T]; P];
        for s in 0..steps {
            let wv: [__m512bh; P] = std::array::from_fn(|i| {
                std::mem::transmute(_mm512_loadu_si512(w[i].add(16 * s) as *const _))
            });
            for t in 0..T {
                let xv: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*x.add(t * steps + s) as i32));
                for (a, w) in acc.iter_mut().zip(&wv) {
                    a[t] = _mm512_dpbf16_ps(a[t], *w, xv);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            for (t, v) in a.iter().enumerate() {
                _mm512_mask_storeu_ps(out.add(t * ld + i * PANEL_ROWS), keep[i], *v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tier::{self, Tier};
    use crate::Matrix;

    fn bf16(v: f32) -> f32 {
        half::bf16::from_f32(v).to_f32()
    }

    /// Against f64 sums of the same rounded operands, on ragged rows (a lone panel, a partial
    /// one), ragged tokens, and columns with tails past the whole 32-column chunks (odd too).
    #[test]
    fn panels_match_reference() {
        if !tier::at_least(Tier::Avx512Bf16) || tier::at_least(Tier::Amx) {
            eprintln!("AVX512-BF16 without AMX not active here: skipped");
            return;
        }
        for &(nr, n, cols) in &[
            (16, 8, 64),
            (13, 9, 37),
            (40, 25, 100),
            (33, 12, 512),
            (7, 30, 33),
        ] {
            let wf: Vec<f32> = (0..nr * cols)
                .map(|i| (i * 37 % 101) as f32 / 50.0 - 1.0)
                .collect();
            let wb: Vec<u16> = wf
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let wr: Vec<f32> = wf.iter().map(|&v| bf16(v)).collect();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| (i * 13 % 29) as f32 / 14.3 - 1.0)
                .collect();
            let act = Activations::prepare(&x, n, cols);
            let xr: Vec<f32> = x.iter().map(|&v| bf16(v)).collect();
            let want = crate::matmul::matmul_reference(&Matrix::from_f32(nr, cols, wr), &xr, n);
            let ld = nr + 2;
            let mut got = vec![f32::NAN; n * ld];
            gemm_rows(&wb, nr, &act, &mut got, ld);
            for t in 0..n {
                for r in 0..nr {
                    let (a, b) = (got[t * ld + r], want[t * nr + r]);
                    assert!(
                        (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                        "{nr}x{n}x{cols} token {t} row {r}: {a} vs {b}"
                    );
                }
                assert!(got[t * ld + nr..(t + 1) * ld].iter().all(|v| v.is_nan()));
            }
        }
    }
}
