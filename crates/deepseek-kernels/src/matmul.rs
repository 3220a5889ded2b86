//! The matmul over [`Matrix`] weights with f32 accumulation: one entry point that picks, by the
//! weight's storage and the number of tokens, the GEMV tiles of decode or one of the GEMMs of
//! prefill (AMX, AVX-512 bf16, VNNI or AVX2 quantized panels), and splits the rows across the
//! thread pool.

use crate::matrix::{Matrix, MatrixData};
use crate::precision::Precision;
use crate::quant::{self, QuantizedActivations};
use crate::repack;
use crate::repack::Iq4;
use crate::{amx, gemm, gemm_avx512, qgemm, qgemm_vnni, simd};

pub(crate) fn matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32], p: Precision) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(
        x.len(),
        n * cols,
        "matmul: activation length does not match [n, cols]"
    );
    assert_eq!(
        out.len(),
        n * rows,
        "matmul: output length does not match [n, rows]"
    );
    if n == 0 || rows == 0 {
        return;
    }
    // Split the output rows into chunks, one task each: enough chunks to balance the threads,
    // each big enough (≥ 64 KiB of weights) to amortise scheduling. Multiple of 8 rows for the
    // GEMV tiles.
    let row_bytes = w.dtype().row_bytes(cols);
    let min_rows = (65536 / row_bytes.max(1)).clamp(1, rows);
    let threads = crate::threads::current();
    let act = Act::new(w, x, n, p);
    // AMX panels are 16 rows and run in pairs: chunks of whole pairs waste no tile products;
    // the VNNI GEMM's panels are 16 rows.
    let align = if act.bf16.is_some() {
        32
    } else if act.vnni.is_some() {
        qgemm_vnni::PANEL_ROWS
    } else if act.avx512.is_some() {
        gemm_avx512::PASS_ROWS
    } else {
        8
    };
    let mut chunk = rows.div_ceil(threads * 4).max(min_rows);
    if n == 1 {
        // A GEMV's tasks at most 1 MiB: the threads claim them one at a time and finish
        // within one task of each other (lm_head's quarter-per-thread chunks were ~15 MB,
        // over a millisecond of streaming each).
        chunk = chunk.min(((1 << 20) / row_bytes.max(1)).max(min_rows));
    }
    let chunk = chunk.next_multiple_of(align).min(rows);
    if threads == 1 || chunk >= rows {
        rows_kernel(w, 0, rows, &act, n, out, rows);
        return;
    }
    if n == 1 {
        // GEMV: each chunk writes its own slice of the single output row.
        crate::threads::for_each_chunk_mut(out, chunk, |ci, o| {
            let len = o.len();
            rows_kernel(w, ci * chunk, len, &act, 1, o, len);
        });
        return;
    }
    // GEMM: a row chunk's outputs are strided across tokens; compute into a per-chunk
    // [tokens, chunk] scratch and scatter.
    let n_chunks = rows.div_ceil(chunk);
    let parts: Vec<(usize, Vec<f32>)> = crate::threads::map(n_chunks, |ci| {
        let r0 = ci * chunk;
        let nr = chunk.min(rows - r0);
        let mut o = vec![0.0f32; n * nr];
        rows_kernel(w, r0, nr, &act, n, &mut o, nr);
        (r0, o)
    });
    for (r0, o) in parts {
        let nr = o.len() / n;
        for t in 0..n {
            out[t * rows + r0..t * rows + r0 + nr].copy_from_slice(&o[t * nr..(t + 1) * nr]);
        }
    }
}

/// The activations of a matmul: f32, their 8-bit form when the weights are quantized, their
/// bf16 hi/lo split when bf16 weights go through AMX, their bf16 rounding when repacked
/// quantized weights do.
struct Act<'a> {
    /// The activations, rounded to bf16 where bf16 weights meet them so (see [`Act::new`]).
    x: std::borrow::Cow<'a, [f32]>,
    q: Option<QuantizedActivations>,
    split: Option<amx::SplitActivations>,
    bf16: Option<amx::grouped::Bf16Activations>,
    /// f32/bf16 weights, or plain block-format ones, on AVX2 with enough tokens: the
    /// tokens-major GEMM's packing.
    tokens: Option<gemm::TokensMajor>,
    /// Q4_Kx8 / Q5_0x8 weights on AVX2 with enough tokens: the quantized GEMM's panels of `q`.
    panels: Option<qgemm::Panels>,
    /// Q8_0x8 / Q5_0x8 / Q4_Kx8 weights on 512-bit VNNI (no AMX) with enough tokens: what the
    /// VNNI GEMM reads besides `q`.
    vnni: Option<qgemm_vnni::Activations>,
    /// bf16 weights on AVX512-BF16 without AMX with enough tokens: the activations rounded to
    /// bf16 for the panel GEMM.
    avx512: Option<gemm_avx512::Activations>,
}

impl<'a> Act<'a> {
    /// Prepares the forms `w`'s kernels read, once for all row chunks.
    fn new(w: &Matrix, x: &'a [f32], n: usize, p: Precision) -> Self {
        let bf16 = match w.data {
            MatrixData::Grouped { layout, .. }
                if !layout.avx2_decode_only()
                    && n >= amx_grouped_min_tokens()
                    && !p.exact_activations
                    && amx::grouped::available() =>
            {
                Some(amx::grouped::Bf16Activations::new(x, n, w.cols))
            }
            _ => None,
        };
        // The layouts with decode kernels only, with enough tokens, on 512-bit VNNI: their
        // groups unpacked back into rows for the VNNI GEMM's panels (plain rows take them so).
        let decode_layout_vnni = match w.data {
            MatrixData::Grouped { layout, .. }
                if layout.avx2_decode_only()
                    && n >= decode_layout_gemm_min_tokens(layout)
                    && !p.exact_activations
                    && qgemm_vnni::available()
                    && n >= qgemm_vnni::min_tokens() =>
            {
                Some(layout.plain())
            }
            _ => None,
        };
        // Plain (not repacked) block formats, and the layouts with decode kernels only, with
        // enough tokens, on AVX2: dequantized panels through the f32 GEMM instead of integer
        // dot products.
        let quant_tokens = match w.data {
            MatrixData::Grouped { layout, .. }
                if layout.avx2_decode_only()
                    && n >= decode_layout_gemm_min_tokens(layout)
                    && !p.exact_activations
                    && decode_layout_vnni.is_none() =>
            {
                gemm::TokensMajor::new(x, n, w.cols)
            }
            MatrixData::Quant { .. } if !p.exact_activations => {
                gemm::TokensMajor::new(x, n, w.cols)
            }
            _ => None,
        };
        let q = match w.data {
            _ if p.exact_activations || bf16.is_some() || quant_tokens.is_some() => None,
            _ if decode_layout_vnni.is_some() => Some(QuantizedActivations::new(x, w.cols)),
            // The Q4_Kx8 and Q5_Kx8 kernels sum each super-block in integers: one scale per
            // 256 values.
            MatrixData::Grouped {
                layout:
                    repack::Layout::Q4Kx8 | repack::Layout::Q5Kx8 | repack::Layout::IQ4x8(Iq4::XS),
                ..
            } => Some(QuantizedActivations::per_super_block(x, w.cols)),
            // The K16x8 kernels: the same, with a sum per 16 values for their offsets and mins.
            MatrixData::Grouped {
                layout: repack::Layout::K16x8(_),
                ..
            } => Some(QuantizedActivations::per_super_block_sums16(x, w.cols)),
            // The lattice kernels likewise (llama.cpp's Q8_K activations for these types).
            MatrixData::Quant { ty, .. } if ty.is_lattice() => {
                Some(QuantizedActivations::per_super_block(x, w.cols))
            }
            MatrixData::Quant { .. } | MatrixData::Grouped { .. } => {
                Some(QuantizedActivations::new(x, w.cols))
            }
            _ => None,
        };
        let split = match w.data {
            MatrixData::BF16(_) if n >= amx_min_tokens() && amx::available() => {
                Some(amx::SplitActivations::new(x, n, w.cols))
            }
            _ => None,
        };
        let tokens = match w.data {
            MatrixData::F32(_) | MatrixData::BF16(_) if split.is_none() => {
                gemm::TokensMajor::new(x, n, w.cols)
            }
            _ => quant_tokens,
        };
        let panels = match (&w.data, &q) {
            (MatrixData::Grouped { layout, .. }, Some(q)) => qgemm::Panels::new(*layout, q, n),
            _ => None,
        };
        let avx512 = match w.data {
            MatrixData::BF16(_) if split.is_none() => {
                gemm_avx512::Activations::new(x, n, w.cols, p)
            }
            _ => None,
        };
        let vnni = match (&w.data, &q) {
            (MatrixData::Grouped { .. }, Some(q)) if decode_layout_vnni.is_some() => {
                qgemm_vnni::Activations::for_plain(decode_layout_vnni.expect("checked"), q, n)
            }
            (MatrixData::Grouped { layout, .. }, Some(q)) => {
                qgemm_vnni::Activations::new(*layout, q, n)
            }
            (MatrixData::Quant { ty, .. }, Some(q)) => {
                qgemm_vnni::Activations::for_plain(*ty, q, n)
            }
            _ => None,
        };
        Act {
            x: match w.data {
                MatrixData::BF16(_) if p.rounds_bf16() => {
                    std::borrow::Cow::Owned(gemm_avx512::rounded(x))
                }
                _ => std::borrow::Cow::Borrowed(x),
            },
            q,
            split,
            bf16,
            tokens,
            panels,
            vnni,
            avx512,
        }
    }
}

/// Fewest tokens for which repacked quantized weights use AMX rather than the VNNI kernels
/// (`DEEPSEEK_AMX_GROUPED_MIN_TOKENS` overrides, for measuring).
fn amx_grouped_min_tokens() -> usize {
    crate::tuning::get().amx_grouped_min_tokens.value as usize
}

/// Fewest tokens for which a layout with decode kernels only ([`repack::Layout::avx2_decode_only`])
/// is dequantized into the f32 GEMM rather than run through its integer kernels four tokens at
/// a time (`DEEPSEEK_DECODE_LAYOUT_GEMM_MIN_TOKENS` overrides for all of them, for measuring).
fn decode_layout_gemm_min_tokens(layout: repack::Layout) -> usize {
    let forced =
        Some(crate::tuning::get().decode_layout_gemm_min_tokens.value as usize).filter(|&n| n > 0);
    // `examples/gemv_speed` (2 threads, 32768x2048): at 16 tokens the integer kernels ran
    // 1.2-2x the GEMM's rate in all seven formats; at 48 and 64 they were even for Q6_K, Q3_K
    // and Q2_K and ahead for Q5_K, IQ4_NL, IQ4_XS and Q5_1 (1.1-1.5x). In the model (pp512,
    // whose routed experts see ~48 tokens each; alternating runs) 64 against 32 gave IQ4_XS
    // 78.6-84.5 -> 86.5-105.5 tok/s (5 of 5 pairs) and Q5_K_M 80.7/85.6 -> 89.4/91.6, while
    // Q6_K and Q2_K moved within the noise either way.
    forced.unwrap_or(match layout {
        repack::Layout::K16x8(_) => 32,
        _ => 64,
    })
}

/// Fewest tokens for which a bf16 matmul uses AMX rather than the FMA tiles
/// (`DEEPSEEK_AMX_MIN_TOKENS` overrides, for measuring).
fn amx_min_tokens() -> usize {
    // `examples/amx_speed` on a 1408x2048 expert matrix, one thread: at 4 tokens the FMA
    // tiles are 1.2-1.8x faster, at 8 AMX is 1.5-2x faster, and more from there.
    crate::tuning::get().amx_min_tokens.value as usize
}

/// Rows `r0..r0+nr` of `w` against `n` tokens; `out[t * ld + r]` (r relative to `r0`).
fn rows_kernel(w: &Matrix, r0: usize, nr: usize, act: &Act, n: usize, out: &mut [f32], ld: usize) {
    let x = &act.x[..];
    match &w.data {
        MatrixData::Grouped { layout, data } if act.bf16.is_some() => {
            let act = act.bf16.as_ref().expect("checked");
            amx::grouped::gemm_rows(*layout, data.as_slice(), w.cols, r0, nr, act, out, ld);
        }
        MatrixData::Grouped { layout, data } if act.vnni.is_some() && layout.avx2_decode_only() => {
            // The group's rows back in their plain blocks, for the plain rows' VNNI panels.
            let (q, vnni) = (
                act.q.as_ref().expect("checked"),
                act.vnni.as_ref().expect("checked"),
            );
            let plain = layout.plain();
            let rb = plain.row_bytes(w.cols);
            let mut rows = vec![0u8; nr * rb];
            for (r, row) in rows.chunks_exact_mut(rb).enumerate() {
                layout.unpack_row(data.as_slice(), w.cols, r0 + r, row);
            }
            qgemm_vnni::gemm_rows_plain(plain, &rows, w.cols, nr, q, vnni, out, ld);
        }
        MatrixData::Grouped { layout, data } if act.vnni.is_some() => {
            let (q, vnni) = (
                act.q.as_ref().expect("checked"),
                act.vnni.as_ref().expect("checked"),
            );
            qgemm_vnni::gemm_rows(*layout, data.as_slice(), w.cols, r0, nr, q, vnni, out, ld);
        }
        MatrixData::Grouped { data, .. } if act.panels.is_some() => {
            let panels = act.panels.as_ref().expect("checked");
            qgemm::gemm_rows(data.as_slice(), w.cols, r0, nr, panels, out, ld);
        }
        MatrixData::Grouped { layout, data } if act.q.is_some() => {
            rows_grouped(*layout, data.as_slice(), w.cols, r0, nr, act, n, out, ld);
        }
        MatrixData::Grouped { layout, data } if act.tokens.is_some() => {
            let tk = act.tokens.as_ref().expect("checked");
            gemm::gemm_rows_grouped(*layout, data.as_slice(), w.cols, r0, nr, tk, out, ld);
        }
        MatrixData::Grouped { .. } => {
            // Exact mode: dequantize each row, f32 dot products.
            let mut wr = vec![0.0; w.cols];
            for r in 0..nr {
                w.row_f32(r0 + r, &mut wr);
                for t in 0..n {
                    let mut acc = [0.0f32];
                    simd::dot_f32_multi(&wr, &[&x[t * w.cols..(t + 1) * w.cols]], &mut acc);
                    out[t * ld + r] = acc[0];
                }
            }
        }
        MatrixData::Quant { ty, data } if act.vnni.is_some() => {
            let (q, vnni) = (
                act.q.as_ref().expect("checked"),
                act.vnni.as_ref().expect("checked"),
            );
            let rb = ty.row_bytes(w.cols);
            let rows = &data.as_slice()[r0 * rb..];
            qgemm_vnni::gemm_rows_plain(*ty, rows, w.cols, nr, q, vnni, out, ld);
        }
        MatrixData::Quant { ty, data } if act.tokens.is_some() => {
            let tk = act.tokens.as_ref().expect("checked");
            let rb = ty.row_bytes(w.cols);
            gemm::gemm_rows_quant(*ty, &data.as_slice()[r0 * rb..], nr, tk, out, ld);
        }
        MatrixData::Quant { ty, data } => {
            let rb = ty.row_bytes(w.cols);
            let d = data.as_slice();
            let Some(qx) = act.q.as_ref() else {
                // Exact mode: dequantize each row once, f32 dot products.
                let mut wr = vec![0.0; w.cols];
                for r in 0..nr {
                    quant::dequantize_row(*ty, &d[(r0 + r) * rb..(r0 + r + 1) * rb], &mut wr);
                    for t in 0..n {
                        let mut acc = [0.0f32];
                        simd::dot_f32_multi(&wr, &[&x[t * w.cols..(t + 1) * w.cols]], &mut acc);
                        out[t * ld + r] = acc[0];
                    }
                }
                return;
            };
            for r in 0..nr {
                let row = &d[(r0 + r) * rb..(r0 + r + 1) * rb];
                let mut t = 0;
                while t + 4 <= n {
                    let v = quant::dot_rows::<4>(*ty, row, qx, t);
                    for (k, v) in v.into_iter().enumerate() {
                        out[(t + k) * ld + r] = v;
                    }
                    t += 4;
                }
                while t < n {
                    out[t * ld + r] = quant::dot_row(*ty, row, qx, t);
                    t += 1;
                }
            }
        }
        MatrixData::F32(b) => match &act.tokens {
            Some(tk) => gemm::gemm_rows(&b.as_slice()[r0 * w.cols..], nr, tk, out, ld),
            None => rows_tiled(b.as_slice(), w.cols, r0, nr, x, n, out, ld),
        },
        MatrixData::BF16(b) => match (&act.split, &act.avx512, &act.tokens) {
            (Some(split), _, _) => amx::gemm_rows(b.as_slice(), w.cols, r0, nr, split, out, ld),
            (None, Some(p), _) => {
                gemm_avx512::gemm_rows(&b.as_slice()[r0 * w.cols..], nr, p, out, ld)
            }
            (None, None, Some(tk)) => {
                gemm::gemm_rows(&b.as_slice()[r0 * w.cols..], nr, tk, out, ld)
            }
            (None, None, None) => rows_tiled(b.as_slice(), w.cols, r0, nr, x, n, out, ld),
        },
        MatrixData::F16(b) => {
            // Rare format: plain per-row dot products.
            let cols = w.cols;
            for r in 0..nr {
                let row = &b.as_slice()[(r0 + r) * cols..(r0 + r + 1) * cols];
                for t in 0..n {
                    let mut acc = [0.0f32];
                    simd::dot_f16_multi(row, &[&x[t * cols..(t + 1) * cols]], &mut acc);
                    out[t * ld + r] = acc[0];
                }
            }
        }
    }
}

/// Rows `r0..r0+nr` (whole groups of 8) of a repacked matrix against `n` tokens, up to four
/// tokens per pass over a group.
#[allow(clippy::too_many_arguments)]
fn rows_grouped(
    layout: repack::Layout,
    d: &[u8],
    cols: usize,
    r0: usize,
    nr: usize,
    act: &Act,
    n: usize,
    out: &mut [f32],
    ld: usize,
) {
    let gb = layout.group_bytes(cols);
    let qx = act.q.as_ref().expect("quantized activations");
    assert!(
        !matches!(
            layout,
            repack::Layout::Q4Kx8 | repack::Layout::Q5Kx8 | repack::Layout::IQ4x8(Iq4::XS)
        ) || qx.scale_block == crate::quant::QK_K,
        "Q4_Kx8 needs activations with one scale per 256 values"
    );
    let g = repack::GROUP;
    debug_assert!(r0.is_multiple_of(g) && nr.is_multiple_of(g));
    // Q5_0 groups that meet more tokens than one pass takes are decoded to bytes once, where
    // that pays (AVX2), instead of once per pass.
    let mut decoded = (layout == repack::Layout::Q5_0x8 && n > 4 && repack::q5_0_predecode_pays())
        .then(|| vec![0u8; cols / crate::quant::QK * repack::Q5_0_DECODED_BLOCK]);
    for gi in 0..nr / g {
        let group = &d[(r0 / g + gi) * gb..(r0 / g + gi + 1) * gb];
        if let Some(dec) = decoded.as_mut() {
            repack::decode_q5_0_group(group, cols, dec);
        }
        let dec = decoded.as_deref();
        let mut t = 0;
        while t < n {
            let k = (n - t).min(4);
            let mut put = |res: &[[f32; 8]]| {
                for (i, rr) in res.iter().enumerate() {
                    out[(t + i) * ld + gi * g..(t + i) * ld + gi * g + g].copy_from_slice(rr);
                }
            };
            match k {
                4 => put(&group_pass::<4>(
                    layout,
                    group,
                    dec,
                    cols,
                    &std::array::from_fn(|i| qx.row(t + i)),
                )),
                3 => put(&group_pass::<3>(
                    layout,
                    group,
                    dec,
                    cols,
                    &std::array::from_fn(|i| qx.row(t + i)),
                )),
                2 => put(&group_pass::<2>(
                    layout,
                    group,
                    dec,
                    cols,
                    &std::array::from_fn(|i| qx.row(t + i)),
                )),
                _ => put(&group_pass::<1>(layout, group, dec, cols, &[qx.row(t)])),
            }
            t += k;
        }
    }
}

/// One pass of `T` tokens over a repacked group, through its decoded form where there is one.
fn group_pass<const T: usize>(
    layout: repack::Layout,
    group: &[u8],
    decoded: Option<&[u8]>,
    cols: usize,
    acts: &[repack::ActRow; T],
) -> [[f32; 8]; T] {
    match decoded {
        Some(dec) => repack::dot_group_q5_0_decoded::<T>(group, dec, cols, acts),
        None => layout.dot_group::<T>(group, cols, acts),
    }
}

/// Tokens per outer block, so a block's activations stay in cache while the rows stream by.
const TOKEN_BLOCK: usize = 64;

#[allow(clippy::too_many_arguments)]
fn rows_tiled<W: simd::TileWeight>(
    wd: &[W],
    cols: usize,
    r0: usize,
    nr: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
    ld: usize,
) {
    let row = |r: usize| &wd[(r0 + r) * cols..(r0 + r + 1) * cols];
    let xt = |t: usize| &x[t * cols..(t + 1) * cols];
    if n == 1 {
        // GEMV: eight rows at a time, eight independent accumulator chains.
        let x0 = xt(0);
        let mut r = 0;
        while r + 8 <= nr {
            let mut acc = [[0.0f32; 1]; 8];
            W::tile::<8, 1>(std::array::from_fn(|i| row(r + i)), [x0], &mut acc);
            for i in 0..8 {
                out[r + i] = acc[i][0];
            }
            r += 8;
        }
        while r < nr {
            let mut acc = [[0.0f32; 1]; 1];
            W::tile::<1, 1>([row(r)], [x0], &mut acc);
            out[r] = acc[0][0];
            r += 1;
        }
        return;
    }
    // GEMM: 4 rows × 4 tokens per tile; edge tiles repeat the last row/token and drop the extra.
    let mut tb = 0;
    while tb < n {
        let tb_end = (tb + TOKEN_BLOCK).min(n);
        let mut r = 0;
        while r < nr {
            let rows: [&[W]; 4] = std::array::from_fn(|i| row((r + i).min(nr - 1)));
            let mut t = tb;
            while t < tb_end {
                // The last tokens of a block get a narrower tile rather than repeated tokens:
                // batched decode gives routed experts 1-3 tokens each.
                let keep = (nr - r).min(4);
                match tb_end - t {
                    1 => store_tile::<W, 1>(rows, t, keep, r, &xt, out, ld),
                    2 => store_tile::<W, 2>(rows, t, keep, r, &xt, out, ld),
                    3 => store_tile::<W, 3>(rows, t, keep, r, &xt, out, ld),
                    _ => store_tile::<W, 4>(rows, t, keep, r, &xt, out, ld),
                }
                t += 4;
            }
            r += 4;
        }
        tb = tb_end;
    }
}

/// One 4-row × T-token tile, its first `keep` rows stored.
fn store_tile<'a, W: simd::TileWeight, const T: usize>(
    rows: [&[W]; 4],
    t: usize,
    keep: usize,
    r: usize,
    xt: &dyn Fn(usize) -> &'a [f32],
    out: &mut [f32],
    ld: usize,
) {
    let xs: [&[f32]; T] = std::array::from_fn(|i| xt(t + i));
    let mut acc = [[0.0f32; T]; 4];
    W::tile::<4, T>(rows, xs, &mut acc);
    for (i, accr) in acc.iter().enumerate().take(keep) {
        for (j, &v) in accr.iter().enumerate() {
            out[(t + j) * ld + r + i] = v;
        }
    }
}

/// `out[t][c] = Σ_r x[t][r] · w[r][c]`: multiplies by the matrix's transpose without building
/// it (MLA's absorbed query reads `W_UK` this way). `x`: `[n, rows]`, `out`: `[n, cols]`.
pub fn matmul_transposed(w: &Matrix, x: &[f32], n: usize, out: &mut [f32]) {
    let (rows, cols) = (w.rows, w.cols);
    assert_eq!(x.len(), n * rows);
    assert_eq!(out.len(), n * cols);
    out.fill(0.0);
    match &w.data {
        MatrixData::BF16(b) => {
            let b = b.as_slice();
            for r in 0..rows {
                let wr = &b[r * cols..(r + 1) * cols];
                for t in 0..n {
                    simd::axpy_bf16(x[t * rows + r], wr, &mut out[t * cols..(t + 1) * cols]);
                }
            }
        }
        MatrixData::F32(b) => {
            let b = b.as_slice();
            for r in 0..rows {
                let wr = &b[r * cols..(r + 1) * cols];
                for t in 0..n {
                    simd::axpy(x[t * rows + r], wr, &mut out[t * cols..(t + 1) * cols]);
                }
            }
        }
        MatrixData::F16(_) | MatrixData::Quant { .. } | MatrixData::Grouped { .. } => {
            let mut wr = vec![0.0; cols];
            for r in 0..rows {
                w.row_f32(r, &mut wr);
                for t in 0..n {
                    simd::axpy(x[t * rows + r], &wr, &mut out[t * cols..(t + 1) * cols]);
                }
            }
        }
    }
}

/// Single-threaded [`matmul`], for callers that parallelise across many small matrices.
pub fn matmul_serial(w: &Matrix, x: &[f32], n: usize, out: &mut [f32], p: Precision) {
    assert_eq!(x.len(), n * w.cols);
    assert_eq!(out.len(), n * w.rows);
    let act = Act::new(w, x, n, p);
    rows_kernel(w, 0, w.rows, &act, n, out, w.rows);
}

/// Plain reference: convert everything to f32 and multiply in f64.
pub fn matmul_reference(w: &Matrix, x: &[f32], n: usize) -> Vec<f32> {
    let wf = w.to_f32();
    let mut out = vec![0.0; n * w.rows];
    for t in 0..n {
        for r in 0..w.rows {
            let mut s = 0.0f64;
            for c in 0..w.cols {
                s += wf[r * w.cols + c] as f64 * x[t * w.cols + c] as f64;
            }
            out[t * w.rows + r] = s as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::QuantType;
    use rand::{Rng, SeedableRng};

    fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
    }

    fn check(w: &Matrix, n: usize, p: Precision) {
        let x = rand_vec(n * w.cols, 7);
        let mut out = vec![0.0; n * w.rows];
        matmul(w, &x, n, &mut out, p);
        // bf16 weights meet the activations rounded to bf16 where asked for and this CPU's
        // panels take them so (AVX512-BF16 without AMX).
        let rounded = matches!(w.data, MatrixData::BF16(_)) && p.rounds_bf16();
        let xr: Vec<f32> = if rounded {
            x.iter()
                .map(|&v| half::bf16::from_f32(v).to_f32())
                .collect()
        } else {
            x.clone()
        };
        let want = matmul_reference(w, &xr, n);
        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "elem {i}: {a} vs {b} ({:?}, n={n})",
                w.dtype()
            );
        }
    }

    #[test]
    fn matmul_matches_reference_all_formats_and_shapes() {
        for &(rows, cols) in &[(1, 1), (7, 13), (33, 64), (130, 257), (5, 1000)] {
            let f = rand_vec(rows * cols, 3);
            let bf: Vec<u16> = f
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            let hf: Vec<u16> = f
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            let mats = [
                Matrix::from_f32(rows, cols, f.clone()),
                Matrix {
                    rows,
                    cols,
                    data: MatrixData::BF16(bf.into()),
                },
                Matrix {
                    rows,
                    cols,
                    data: MatrixData::F16(hf.into()),
                },
            ];
            for m in &mats {
                for n in [1, 2, 3, 4, 5, 9, 70] {
                    check(m, n, Precision::default());
                    let bf16 = Precision {
                        bf16_activations: true,
                        ..Precision::default()
                    };
                    check(m, n, bf16);
                }
            }
        }
    }

    /// The lattice i-quants through every path a matmul takes: the GEMV and its
    /// tiles, the tokens-major GEMM and the VNNI panels where the CPU has them.
    #[test]
    fn lattice_quant_matmul_matches_reference() {
        for &(rows, cols) in &[(8, 256), (13, 512)] {
            for ty in QuantType::LATTICE {
                let m = Matrix {
                    rows,
                    cols,
                    data: MatrixData::Quant {
                        ty,
                        data: crate::quant::tests::random_lattice_rows(ty, rows, cols, rows as u64)
                            .into(),
                    },
                };
                // Never repacked: no group layout holds them.
                assert!(matches!(
                    m.clone().repacked().data,
                    MatrixData::Quant { .. }
                ));
                for n in [1, 3, 9, 33] {
                    let x = rand_vec(n * cols, 8);
                    let want = matmul_reference(&m, &x, n);
                    let scale = x.iter().map(|v| v.abs()).sum::<f32>() / n as f32;
                    let wmax = m.to_f32().iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let mut out = vec![0.0; n * rows];
                    matmul(&m, &x, n, &mut out, Precision::default());
                    for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                        // 8-bit activations: error ≲ 1% of Σ|x|·max|w|.
                        assert!(
                            (a - b).abs() < 0.01 * scale * wmax,
                            "{ty:?} {rows}x{cols} n={n} [{i}]: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn quantized_and_repacked_matmul_match_reference() {
        use crate::quant::quantize_row;
        for &(rows, cols) in &[(8, 256), (24, 512), (40, 256), (13, 256)] {
            let f = rand_vec(rows * cols, 4);
            for ty in QuantType::ALL {
                let rb = ty.row_bytes(cols);
                let mut q = vec![0u8; rows * rb];
                for (r, o) in q.chunks_mut(rb).enumerate() {
                    quantize_row(ty, &f[r * cols..(r + 1) * cols], o);
                }
                let m = Matrix {
                    rows,
                    cols,
                    data: MatrixData::Quant { ty, data: q.into() },
                };
                let packed = m.clone().repacked();
                // Repacking a few rows at a time (as large matrices are) gives the same bytes.
                let in_chunks = m.clone().repacked_in_chunks(8 * rb);
                match (&packed.data, &in_chunks.data) {
                    (MatrixData::Grouped { data: a, .. }, MatrixData::Grouped { data: b, .. }) => {
                        assert_eq!(a.as_slice(), b.as_slice(), "{ty:?} {rows}x{cols}")
                    }
                    (MatrixData::Grouped { .. }, _) | (_, MatrixData::Grouped { .. }) => {
                        panic!("{ty:?}: one way repacked, the other not")
                    }
                    _ => {}
                }
                if ty == QuantType::Q8_0 && rows % 8 == 0 {
                    assert!(matches!(
                        packed.data,
                        MatrixData::Grouped {
                            layout: repack::Layout::Q8_0x8,
                            ..
                        }
                    ));
                }
                if matches!(
                    ty,
                    QuantType::Q6K
                        | QuantType::Q3K
                        | QuantType::Q2K
                        | QuantType::Q5K
                        | QuantType::IQ4NL
                        | QuantType::IQ4XS
                        | QuantType::Q5_1
                ) && rows % 8 == 0
                    && repack::k16_repack_supported(ty)
                {
                    assert!(matches!(
                        packed.data,
                        MatrixData::Grouped {
                            layout: repack::Layout::K16x8(_)
                                | repack::Layout::Q5Kx8
                                | repack::Layout::IQ4x8(_)
                                | repack::Layout::Q5_1x8,
                            ..
                        }
                    ));
                }
                // 9, 33 and 65 tokens: the tokens-major GEMM where the CPU takes it (≥ 8 tokens
                // for plain rows, ≥ 32 or ≥ 64 for the layouts with decode kernels only).
                for n in [1, 3, 4, 6, 9, 33, 65] {
                    let x = rand_vec(n * cols, 8);
                    let want = matmul_reference(&m, &x, n);
                    let scale = x.iter().map(|v| v.abs()).sum::<f32>() / n as f32;
                    for w in [&m, &packed] {
                        let mut out = vec![0.0; n * rows];
                        matmul(w, &x, n, &mut out, Precision::default());
                        let mut serial = vec![0.0; n * rows];
                        matmul_serial(w, &x, n, &mut serial, Precision::default());
                        // f32 activations: the reference to summation order.
                        let exact = Precision {
                            exact_activations: true,
                            ..Precision::default()
                        };
                        let mut precise = vec![0.0; n * rows];
                        matmul(w, &x, n, &mut precise, exact);
                        for (a, b) in precise.iter().zip(&want) {
                            assert!(
                                (a - b).abs() < 1e-4 * (1.0 + scale),
                                "{ty:?} exact activations: {a} vs {b}"
                            );
                        }
                        for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                            // 8-bit activations: error ≲ 1% of Σ|x|·max|w|.
                            assert!(
                                (a - b).abs() < 0.01 * scale,
                                "{ty:?} {rows}x{cols} n={n} [{i}]: {a} vs {b}"
                            );
                            assert!((a - serial[i]).abs() < 1e-4 * (1.0 + a.abs()));
                        }
                    }
                    // Rows taken from a repacked matrix, whole groups or not, are the same rows.
                    let part = packed.row_range(rows.min(8) - 5, 5).to_f32();
                    assert_eq!(part, m.row_range(rows.min(8) - 5, 5).to_f32());
                }
            }
        }
    }

    #[test]
    fn transposed_and_serial_match_reference() {
        for &(rows, cols) in &[(3, 5), (16, 40), (33, 17)] {
            let f = rand_vec(rows * cols, 5);
            let bf: Vec<u16> = f
                .iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect();
            for m in [
                Matrix::from_f32(rows, cols, f.clone()),
                Matrix {
                    rows,
                    cols,
                    data: MatrixData::BF16(bf.into()),
                },
            ] {
                let t = m.transposed_f32();
                for n in [1, 3] {
                    let x = rand_vec(n * rows, 9);
                    let mut out = vec![0.0; n * cols];
                    matmul_transposed(&m, &x, n, &mut out);
                    let want = matmul_reference(&t, &x, n);
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
                    }
                    let x = rand_vec(n * cols, 2);
                    let mut out = vec![0.0; n * rows];
                    matmul_serial(&m, &x, n, &mut out, Precision::default());
                    let want = matmul_reference(&m, &x, n);
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
                    }
                }
            }
        }
    }

    #[test]
    fn row_range_shares_rows() {
        let f = rand_vec(6 * 4, 1);
        let m = Matrix::from_f32(6, 4, f.clone());
        let s = m.row_range(2, 3);
        assert_eq!(s.to_f32(), f[8..20].to_vec());
        let t = m.transposed_f32();
        assert_eq!(t.to_f32()[3 * 6 + 2], f[2 * 4 + 3]);
    }
}
