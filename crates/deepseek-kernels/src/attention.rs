//! Attention of a group of query heads over rows of a cache that they all share.
//!
//! One kernel serves both cache layouts:
//! - MLA (absorbed): every head's query is `[absorbed_q | q_pe]` (kv_lora_rank + rope dims) and is
//!   scored against the whole latent row `[c_kv | k_pe]`; the value is the `c_kv` part of the same
//!   row. All heads share the row, so it is read once per query token for all heads.
//! - Llama (GQA/MHA): a group is the query heads of one KV head; keys and values are slices of the
//!   cache row at different offsets.

use crate::simd;

/// Where keys and values sit in a cache row.
#[derive(Clone, Copy, Debug)]
pub struct RowLayout {
    pub row_width: usize,
    pub key_offset: usize,
    pub key_len: usize,
    pub value_offset: usize,
    pub value_len: usize,
}

/// Cache rows of one sequence, as a list of blocks of `block_tokens` rows each.
pub struct RowBlocks<'a> {
    pub blocks: Vec<&'a [f32]>,
    pub block_tokens: usize,
}

impl RowBlocks<'_> {
    #[inline]
    pub fn row(&self, t: usize, width: usize) -> &[f32] {
        let b = self.blocks[t / self.block_tokens];
        let o = (t % self.block_tokens) * width;
        &b[o..o + width]
    }
}

/// `out[g] = Σ_t softmax_t(scale · q[g]·k_t) v_t` over the first `n_ctx` rows, for each of the
/// `groups` query vectors in `queries` (each `layout.key_len` long). `out` holds `groups ×
/// value_len`. `scores` is scratch of at least `n_ctx` per group.
pub fn attend_group(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let RowLayout {
        row_width,
        key_offset,
        key_len,
        value_offset,
        value_len,
    } = layout;
    let groups = queries.len() / key_len;
    scores.clear();
    scores.resize(groups * n_ctx, 0.0);
    // Pass 1: scores, row-major over tokens so each cache row is touched once for all heads.
    for t in 0..n_ctx {
        let row = rows.row(t, row_width);
        let k = &row[key_offset..key_offset + key_len];
        let mut g = 0;
        while g < groups {
            let m = (groups - g).min(4);
            let qs: [&[f32]; 4] = std::array::from_fn(|i| {
                let gi = g + i.min(m - 1);
                &queries[gi * key_len..(gi + 1) * key_len]
            });
            let mut acc = [0.0f32; 4];
            simd::dot_f32_multi(k, &qs[..m], &mut acc[..m]);
            for i in 0..m {
                scores[(g + i) * n_ctx + t] = acc[i] * scale;
            }
            g += m;
        }
    }
    for g in 0..groups {
        crate::ops::softmax(&mut scores[g * n_ctx..(g + 1) * n_ctx]);
    }
    // Pass 2: weighted sum of values.
    out[..groups * value_len].fill(0.0);
    for t in 0..n_ctx {
        let row = rows.row(t, row_width);
        let v = &row[value_offset..value_offset + value_len];
        for g in 0..groups {
            simd::axpy(
                scores[g * n_ctx + t],
                v,
                &mut out[g * value_len..(g + 1) * value_len],
            );
        }
    }
}

/// Rows per task when one query's context is split across threads (flash-decoding): below this
/// the split costs more than it saves.
const SPLIT_ROWS: usize = 512;

/// [`attend_group`] with the context split across the thread pool: each part computes its own
/// softmax maximum, normaliser and weighted sum, and the parts are merged exactly. This keeps
/// every core busy when a single decode token attends to a long context.
pub fn attend_group_split(
    queries: &[f32],
    rows: &RowBlocks,
    layout: RowLayout,
    n_ctx: usize,
    scale: f32,
    out: &mut [f32],
) {
    use rayon::prelude::*;
    let groups = queries.len() / layout.key_len;
    let vl = layout.value_len;
    let parts = n_ctx
        .div_ceil(SPLIT_ROWS)
        .min(rayon::current_num_threads() * 2)
        .max(1);
    if parts == 1 {
        let mut scratch = Vec::new();
        attend_group(queries, rows, layout, n_ctx, scale, out, &mut scratch);
        return;
    }
    let per = n_ctx.div_ceil(parts);
    // Each part: (max[g], sum[g], unnormalised out[g × vl]).
    let partials: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, end) = (p * per, ((p + 1) * per).min(n_ctx));
            let len = end.saturating_sub(start);
            let mut scores = vec![0.0f32; groups * len];
            for t in start..end {
                let row = rows.row(t, layout.row_width);
                let k = &row[layout.key_offset..layout.key_offset + layout.key_len];
                let mut g = 0;
                while g < groups {
                    let m = (groups - g).min(4);
                    let qs: [&[f32]; 4] = std::array::from_fn(|i| {
                        let gi = g + i.min(m - 1);
                        &queries[gi * layout.key_len..(gi + 1) * layout.key_len]
                    });
                    let mut acc = [0.0f32; 4];
                    simd::dot_f32_multi(k, &qs[..m], &mut acc[..m]);
                    for i in 0..m {
                        scores[(g + i) * len + (t - start)] = acc[i] * scale;
                    }
                    g += m;
                }
            }
            let mut maxes = vec![f32::NEG_INFINITY; groups];
            let mut sums = vec![0.0f32; groups];
            for g in 0..groups {
                let s = &mut scores[g * len..(g + 1) * len];
                let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut z = 0.0;
                for v in s.iter_mut() {
                    *v = (*v - m).exp();
                    z += *v;
                }
                maxes[g] = m;
                sums[g] = z;
            }
            let mut o = vec![0.0f32; groups * vl];
            for t in start..end {
                let row = rows.row(t, layout.row_width);
                let v = &row[layout.value_offset..layout.value_offset + vl];
                for g in 0..groups {
                    simd::axpy(
                        scores[g * len + (t - start)],
                        v,
                        &mut o[g * vl..(g + 1) * vl],
                    );
                }
            }
            (maxes, sums, o)
        })
        .collect();
    for g in 0..groups {
        let m = partials
            .iter()
            .map(|p| p.0[g])
            .fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = partials.iter().map(|p| p.1[g] * (p.0[g] - m).exp()).sum();
        let dst = &mut out[g * vl..(g + 1) * vl];
        dst.fill(0.0);
        for p in &partials {
            simd::axpy((p.0[g] - m).exp() / z, &p.2[g * vl..(g + 1) * vl], dst);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attend_group_matches_reference_across_blocks() {
        let layout = RowLayout {
            row_width: 40,
            key_offset: 0,
            key_len: 36,
            value_offset: 0,
            value_len: 32,
        };
        let n_ctx = 23;
        let block_tokens = 8;
        let rows: Vec<f32> = (0..n_ctx * 40)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        let queries: Vec<f32> = (0..5 * 36)
            .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
            .collect();
        let mut padded = rows.clone();
        padded.resize(24 * 40, 0.0);
        let blocks: Vec<&[f32]> = padded.chunks(block_tokens * 40).collect();
        let rb = RowBlocks {
            blocks,
            block_tokens,
        };
        let mut out = vec![0.0; 5 * 32];
        let mut scratch = Vec::new();
        attend_group(&queries, &rb, layout, n_ctx, 0.3, &mut out, &mut scratch);
        let want = attend_group_reference(&queries, &rows, layout, n_ctx, 0.3);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Split across threads: same result.
        let mut long = vec![];
        for i in 0..3000 * 40 {
            long.push(((i * 37 % 101) as f32 / 50.0) - 1.0);
        }
        let lb: Vec<&[f32]> = long.chunks(64 * 40).collect();
        let lrows = RowBlocks {
            blocks: lb,
            block_tokens: 64,
        };
        let mut split_out = vec![0.0; 5 * 32];
        attend_group_split(&queries, &lrows, layout, 3000, 0.3, &mut split_out);
        let want_long = attend_group_reference(&queries, &long, layout, 3000, 0.3);
        for (a, b) in split_out.iter().zip(&want_long) {
            assert!((a - b).abs() < 1e-5, "split: {a} vs {b}");
        }
        // GQA-style offsets: keys and values at different places in the row.
        let layout = RowLayout {
            row_width: 40,
            key_offset: 4,
            key_len: 12,
            value_offset: 20,
            value_len: 12,
        };
        let q = &queries[..3 * 12];
        let mut out = vec![0.0; 3 * 12];
        attend_group(q, &rb, layout, n_ctx, 0.5, &mut out, &mut scratch);
        let want = attend_group_reference(q, &rows, layout, n_ctx, 0.5);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
