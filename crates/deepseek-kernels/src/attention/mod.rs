//! Attention of a group of query heads over rows of a cache that they all share.
//!
//! One kernel serves both cache layouts:
//! - MLA (absorbed): every head's query is `[absorbed_q | q_pe]` (kv_lora_rank + rope dims) and is
//!   scored against the whole latent row `[c_kv | k_pe]`; the value is the `c_kv` part of the same
//!   row. All heads share the row, so it is read once per query token for all heads.
//! - Llama (GQA/MHA): a group is the query heads of one KV head; keys and values are slices of the
//!   cache row at different offsets.

pub mod partial;
pub mod rows;
#[cfg(test)]
mod tests;

use crate::simd;
use partial::{merge, Partial};
pub(crate) use rows::BLOCK_ROWS;
pub use rows::{
    bf16_round_row, bf16_row_len, q8_dequantize_row, q8_quantize_row, q8_row_bytes, RowBlocks,
    RowData, RowLayout,
};

/// Scores of 4 key rows against `T` query heads (heads `g..g+T`, rows `i..i+nr`) into `s`.
fn score_tile<const T: usize>(
    ks: [&[f32]; 4],
    qs: [&[f32]; T],
    nr: usize,
    scale: f32,
    s: &mut [f32],
    g: usize,
    i: usize,
) {
    let mut acc = [[0.0f32; T]; 4];
    <f32 as simd::TileWeight>::tile::<4, T>(ks, qs, &mut acc);
    for (r, accr) in acc.iter().enumerate().take(nr) {
        for (j, &a) in accr.iter().enumerate() {
            s[(g + j) * BLOCK_ROWS + i + r] = a * scale;
        }
    }
}

/// Online-softmax attention of every query in `queries` over rows `start..end`.
fn attend_partial(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    start: usize,
    end: usize,
    scale: f32,
) -> Partial {
    let RowLayout {
        row_width,
        key_offset,
        key_len,
        value_offset,
        value_len,
    } = layout;
    let groups = queries.len() / key_len;
    debug_assert_eq!(row_width, rows.row_width);
    if let RowData::Bf16(blocks) = &rows.data {
        if crate::amx::attention::fits(layout, groups, rows.block_tokens, start) {
            return crate::amx::attention::attend_partial(
                queries,
                blocks,
                rows.block_tokens,
                layout,
                start,
                end,
                scale,
            );
        }
    }
    let mut p = Partial::new(groups, groups, value_len);
    let mut s = vec![0.0f32; groups * BLOCK_ROWS];
    let mut scratch = vec![];
    // Many heads over shared rows (MLA decode) on AVX2 or AVX-512: the heads-major scores.
    let heads_major = simd::HeadsMajorQueries::new(queries, key_len, scale);
    let mut b0 = start;
    while b0 < end {
        let len = (end - b0).min(BLOCK_ROWS);
        let block = rows.rows(b0, len, &mut scratch);
        let row = |i: usize| &block[i * row_width..(i + 1) * row_width];
        // Scores of the block: register tiles of 4 rows × up to 4 heads, so each loaded key
        // vector serves 4 dot products and each query vector 4.
        const SR: usize = 4;
        const SG: usize = 4;
        let mut i = 0;
        if let Some(q) = &heads_major {
            simd::scores_heads_major(q, block, row_width, key_offset, len, &mut s, BLOCK_ROWS);
            i = len;
        }
        while i < len {
            let nr = (len - i).min(SR);
            let ks: [&[f32]; SR] =
                std::array::from_fn(|j| &row(i + j.min(nr - 1))[key_offset..key_offset + key_len]);
            let mut g = 0;
            while g < groups {
                let m = (groups - g).min(SG);
                let q = |j: usize| &queries[(g + j) * key_len..(g + j + 1) * key_len];
                // As many heads as there are: one head (decompressed prefill) is not computed 4×.
                match m {
                    4 => score_tile::<4>(ks, std::array::from_fn(q), nr, scale, &mut s, g, i),
                    3 => score_tile::<3>(ks, std::array::from_fn(q), nr, scale, &mut s, g, i),
                    2 => score_tile::<2>(ks, std::array::from_fn(q), nr, scale, &mut s, g, i),
                    _ => score_tile::<1>(ks, std::array::from_fn(q), nr, scale, &mut s, g, i),
                }
                g += m;
            }
            i += nr;
        }
        p.fold_block(&mut s, len, value_len);
        simd::accumulate_rows(
            &s,
            BLOCK_ROWS,
            groups,
            block,
            row_width,
            value_offset,
            len,
            value_len,
            &mut p.out,
        );
        b0 += len;
    }
    p
}

/// `out[g] = Σ_t softmax_t(scale · q[g]·k_t) v_t` over the first `n_ctx` rows, for each of the
/// `groups` query vectors in `queries` (each `layout.key_len` long). `out` holds `groups ×
/// value_len`.
pub fn attend_group(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
    out: &mut [f32],
) {
    let p = attend_partial(queries, rows, layout, 0, n_ctx, scale);
    merge(&[p], layout.value_len, out);
}

/// Causal attention of consecutive query tokens over rows they share: query `j` (of
/// `queries.len() / key_len`) attends to the first `first_ctx + j` rows. The common prefix
/// `0..first_ctx` is one pass for all of them (each row loaded once for every query, as the
/// heads share rows in MLA decode); each query's few remaining rows are its own pass, merged
/// exactly. This is the prefill form when each head has its own keys.
pub fn attend_causal(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    first_ctx: usize,
    scale: f32,
    out: &mut [f32],
) {
    let (kl, vl) = (layout.key_len, layout.value_len);
    let groups = queries.len() / kl;
    assert!(first_ctx > 0, "attend_causal: the first query sees no rows");
    assert_eq!(
        out.len(),
        groups * vl,
        "attend_causal: out is not [queries, value_len]"
    );
    let joint = attend_partial(queries, rows, layout, 0, first_ctx, scale);
    for j in 0..groups {
        let own = Partial {
            max: vec![joint.max[j]],
            sum: vec![joint.sum[j]],
            out: joint.out[j * vl..(j + 1) * vl].to_vec(),
        };
        let o = &mut out[j * vl..(j + 1) * vl];
        if j == 0 {
            merge(&[own], vl, o);
        } else {
            let q = &queries[j * kl..(j + 1) * kl];
            let rest = attend_partial(q, rows, layout, first_ctx, first_ctx + j, scale);
            merge(&[own, rest], vl, o);
        }
    }
}

/// Rows per task when one query's context is split across threads (flash-decoding): below this
/// the split costs more than it saves. 512 left a decode at depth 384 (V2-Lite's 16 heads, ~0.4
/// ms of attention per layer) on one thread: 128 took q4_k tg64 there from 36.5–39.2 to
/// 37.2–43.1 tok/s (three alternating pairs); 64 was no better than 128 at depth 0–256.
const SPLIT_ROWS: usize = 128;

/// How [`attend_group_split`] divides a context of `n_ctx` rows: `(parts, per)`, part `p`
/// covering rows `p * per..min((p + 1) * per, n_ctx)`. Parts start on multiples of BLOCK_ROWS
/// so f32 rows are read in place, not copied.
fn split_parts(n_ctx: usize) -> (usize, usize) {
    let parts = n_ctx
        .div_ceil(SPLIT_ROWS)
        .min(crate::threads::current() * 2)
        .max(1);
    (parts, n_ctx.div_ceil(parts).next_multiple_of(BLOCK_ROWS))
}

/// [`attend_group`] with the context split across the thread pool: each part keeps its own
/// softmax state and the parts are merged exactly. This keeps every core busy when a single
/// decode token attends to a long context.
pub fn attend_group_split(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
    out: &mut [f32],
) {
    attend_in_parts(queries, rows, layout, n_ctx, scale, out, true)
}

/// [`attend_group_split`] on the calling thread: the same parts merged in the same order, so
/// the result is the same to the bit whether a token's parts ran in parallel or not (a
/// speculative step's tokens, attended in parallel, see what a one-token step sees).
pub fn attend_group_split_serial(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
    out: &mut [f32],
) {
    attend_in_parts(queries, rows, layout, n_ctx, scale, out, false)
}

/// The parts of [`split_parts`], on the pool or one after the other, then merged.
fn attend_in_parts(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
    out: &mut [f32],
    parallel: bool,
) {
    let (parts, per) = split_parts(n_ctx);
    let part = |p: usize| {
        let end = ((p + 1) * per).min(n_ctx);
        attend_partial(queries, rows, layout, p * per, end, scale)
    };
    let partials: Vec<Partial> = if parallel {
        crate::threads::map(parts, part)
    } else {
        (0..parts).map(part).collect()
    };
    merge(&partials, layout.value_len, out);
}

/// Plain reference of [`attend_group`].
pub fn attend_group_reference(
    queries: &[f32],
    rows: &[f32],
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
) -> Vec<f32> {
    let groups = queries.len() / layout.key_len;
    let mut out = vec![0.0; groups * layout.value_len];
    for g in 0..groups {
        let q = &queries[g * layout.key_len..(g + 1) * layout.key_len];
        let mut s: Vec<f64> = (0..n_ctx)
            .map(|t| {
                let k = &rows[t * layout.row_width + layout.key_offset..][..layout.key_len];
                q.iter()
                    .zip(k)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale as f64
            })
            .collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s
            .iter_mut()
            .map(|v| {
                *v = (*v - m).exp();
                *v
            })
            .sum();
        for (t, p) in s.iter().enumerate() {
            let v = &rows[t * layout.row_width + layout.value_offset..][..layout.value_len];
            for (o, x) in out[g * layout.value_len..][..layout.value_len]
                .iter_mut()
                .zip(v)
            {
                *o += (p / z * *x as f64) as f32;
            }
        }
    }
    out
}
