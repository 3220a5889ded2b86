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

/// Rows scored and summed together: the block's scores and rows stay in L1/L2 between the
/// score pass and the value pass, so the cache is streamed from memory once.
const BLOCK_ROWS: usize = 64;

/// Softmax state of a group of heads over part of the context: running maximum, normaliser and
/// unnormalised weighted sum of values (online softmax).
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    out: Vec<f32>,
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
    let mut p = Partial {
        max: vec![f32::NEG_INFINITY; groups],
        sum: vec![0.0; groups],
        out: vec![0.0; groups * value_len],
    };
    let mut s = vec![0.0f32; groups * BLOCK_ROWS];
    let mut b0 = start;
    while b0 < end {
        let len = (end - b0).min(BLOCK_ROWS);
        // Scores of the block, four heads per pass over a row.
        for i in 0..len {
            let k = &rows.row(b0 + i, row_width)[key_offset..key_offset + key_len];
            let mut g = 0;
            while g < groups {
                let m = (groups - g).min(4);
                let qs: [&[f32]; 4] = std::array::from_fn(|j| {
                    let gi = g + j.min(m - 1);
                    &queries[gi * key_len..(gi + 1) * key_len]
                });
                let mut acc = [0.0f32; 4];
                simd::dot_f32_multi(k, &qs[..m], &mut acc[..m]);
                for j in 0..m {
                    s[(g + j) * BLOCK_ROWS + i] = acc[j] * scale;
                }
                g += m;
            }
        }
        // Fold the block into the running softmax.
        for g in 0..groups {
            let sg = &mut s[g * BLOCK_ROWS..g * BLOCK_ROWS + len];
            let bm = sg.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_max = p.max[g].max(bm);
            let correction = (p.max[g] - new_max).exp();
            if correction != 1.0 {
                p.sum[g] *= correction;
                p.out[g * value_len..(g + 1) * value_len]
                    .iter_mut()
                    .for_each(|v| *v *= correction);
            }
            for v in sg.iter_mut() {
                // exp below e^-80 would be denormal: flush to zero (denormals cost ~100x).
                let d = *v - new_max;
                *v = if d < -80.0 { 0.0 } else { d.exp() };
                p.sum[g] += *v;
            }
            p.max[g] = new_max;
        }
        for i in 0..len {
            let v = &rows.row(b0 + i, row_width)[value_offset..value_offset + value_len];
            for g in 0..groups {
                simd::axpy(
                    s[g * BLOCK_ROWS + i],
                    v,
                    &mut p.out[g * value_len..(g + 1) * value_len],
                );
            }
        }
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

/// Combines partial softmax states over disjoint row ranges exactly.
fn merge(parts: &[Partial], vl: usize, out: &mut [f32]) {
    let groups = parts[0].max.len();
    for g in 0..groups {
        let m = parts
            .iter()
            .map(|p| p.max[g])
            .fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = parts.iter().map(|p| p.sum[g] * (p.max[g] - m).exp()).sum();
        let dst = &mut out[g * vl..(g + 1) * vl];
        dst.fill(0.0);
        for p in parts {
            simd::axpy((p.max[g] - m).exp() / z, &p.out[g * vl..(g + 1) * vl], dst);
        }
    }
}

/// Rows per task when one query's context is split across threads (flash-decoding): below this
/// the split costs more than it saves.
const SPLIT_ROWS: usize = 512;

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
    use rayon::prelude::*;
    let parts = n_ctx
        .div_ceil(SPLIT_ROWS)
        .min(rayon::current_num_threads() * 2)
        .max(1);
    let per = n_ctx.div_ceil(parts);
    let partials: Vec<Partial> = (0..parts)
        .into_par_iter()
        .map(|p| {
            attend_partial(
                queries,
                rows,
                layout,
                p * per,
                ((p + 1) * per).min(n_ctx),
                scale,
            )
        })
        .collect();
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
        attend_group(&queries, &rb, layout, n_ctx, 0.3, &mut out);
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
        attend_group(q, &rb, layout, n_ctx, 0.5, &mut out);
        let want = attend_group_reference(q, &rows, layout, n_ctx, 0.5);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
