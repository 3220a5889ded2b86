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

/// Values per scale in an 8-bit cache row.
pub const Q8_GROUP: usize = 32;

/// Bytes of one 8-bit cache row of `width` values: an f32 scale per [`Q8_GROUP`] values, then
/// the values as i8 (padded to 4 bytes).
pub fn q8_row_bytes(width: usize) -> usize {
    (width.div_ceil(Q8_GROUP) * 4 + width).div_ceil(4) * 4
}

/// Rounds `x` to an 8-bit cache row (`out` is [`q8_row_bytes`] long): per group of 32 values,
/// scale = max |x| / 127.
pub fn q8_quantize_row(x: &[f32], out: &mut [u8]) {
    let groups = x.len().div_ceil(Q8_GROUP);
    let (scales, values) = out.split_at_mut(groups * 4);
    for (g, chunk) in x.chunks(Q8_GROUP).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        scales[g * 4..g * 4 + 4].copy_from_slice(&d.to_le_bytes());
        for (j, &v) in chunk.iter().enumerate() {
            // Round half away from zero without a libm call.
            let r = v * inv;
            let q = (r + 0.5f32.copysign(r)) as i32;
            values[g * Q8_GROUP + j] = q.clamp(-127, 127) as i8 as u8;
        }
    }
}

/// The f32 values of an 8-bit cache row.
pub fn q8_dequantize_row(row: &[u8], out: &mut [f32]) {
    let groups = out.len().div_ceil(Q8_GROUP);
    let (scales, values) = row.split_at(groups * 4);
    assert!(values.len() >= out.len(), "q8 cache row too short");
    #[cfg(target_arch = "x86_64")]
    if crate::tier::at_least(crate::tier::Tier::Avx512) {
        let whole = out.len() / Q8_GROUP;
        // SAFETY: AVX-512 F is present; `whole` groups of scales and values are in the row and
        // of outputs in `out` (checked above).
        unsafe { x86::q8_dequantize_groups(scales, values, whole, out) };
        q8_dequantize_plain(scales, values, out, whole);
        return;
    }
    q8_dequantize_plain(scales, values, out, 0);
}

/// [`q8_dequantize_row`] in plain code from group `from` on.
fn q8_dequantize_plain(scales: &[u8], values: &[u8], out: &mut [f32], from: usize) {
    for (g, o) in out.chunks_mut(Q8_GROUP).enumerate().skip(from) {
        let d = f32::from_le_bytes(scales[g * 4..g * 4 + 4].try_into().unwrap_or([0; 4]));
        for (j, v) in o.iter_mut().enumerate() {
            *v = values[g * Q8_GROUP + j] as i8 as f32 * d;
        }
    }
}

/// u16 values of one bf16 cache row of `width` values (padded to whole 4-byte words).
pub fn bf16_row_len(width: usize) -> usize {
    width.next_multiple_of(2)
}

/// Rounds `x` to a bf16 cache row (`out` is [`bf16_row_len`] long; round to nearest even).
pub fn bf16_round_row(x: &[f32], out: &mut [u16]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = half::bf16::from_f32(v).to_bits();
    }
    out[x.len()..].fill(0);
}

/// A sequence's cache blocks of one layer: f32 rows, bf16 rows ([`bf16_round_row`]) or 8-bit
/// rows ([`q8_quantize_row`]).
pub enum RowData<'a> {
    F32(Vec<&'a [f32]>),
    Bf16(Vec<&'a [u16]>),
    Q8(Vec<&'a [u8]>),
}

/// Cache rows of one sequence, as a list of blocks of `block_tokens` rows each.
pub struct RowBlocks<'a> {
    pub data: RowData<'a>,
    pub block_tokens: usize,
    pub row_width: usize,
}

impl<'a> RowBlocks<'a> {
    pub fn f32(blocks: Vec<&'a [f32]>, block_tokens: usize, row_width: usize) -> Self {
        RowBlocks {
            data: RowData::F32(blocks),
            block_tokens,
            row_width,
        }
    }

    /// Row `t` as f32.
    pub fn row_f32(&self, t: usize, out: &mut [f32]) {
        let (b, i) = (t / self.block_tokens, t % self.block_tokens);
        let w = self.row_width;
        match &self.data {
            RowData::F32(blocks) => out.copy_from_slice(&blocks[b][i * w..(i + 1) * w]),
            RowData::Bf16(blocks) => {
                let rl = bf16_row_len(w);
                simd::bf16_to_f32(&blocks[b][i * rl..i * rl + w], out);
            }
            RowData::Q8(blocks) => {
                let rb = q8_row_bytes(w);
                q8_dequantize_row(&blocks[b][i * rb..(i + 1) * rb], out)
            }
        }
    }

    /// Rows `start..start + len` as one f32 slice: a view into the block when the rows are f32
    /// and in one block, else copied (or dequantized) into `scratch`.
    fn rows<'s>(&'s self, start: usize, len: usize, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let w = self.row_width;
        let (b, i) = (start / self.block_tokens, start % self.block_tokens);
        if let RowData::F32(blocks) = &self.data {
            if i + len <= self.block_tokens {
                return &blocks[b][i * w..(i + len) * w];
            }
        }
        scratch.resize(len * w, 0.0);
        for r in 0..len {
            self.row_f32(start + r, &mut scratch[r * w..(r + 1) * w]);
        }
        &scratch[..len * w]
    }
}

/// Rows scored and summed together: the block's scores and rows stay in L1/L2 between the
/// score pass and the value pass, so the cache is streamed from memory once.
pub(crate) const BLOCK_ROWS: usize = 64;

/// Softmax state of a group of heads over part of the context: running maximum, normaliser and
/// unnormalised weighted sum of values (online softmax). `out` may hold rows past the last
/// group (the AMX kernel works on 16 heads at a time); they are ignored.
pub(crate) struct Partial {
    pub(crate) max: Vec<f32>,
    pub(crate) sum: Vec<f32>,
    pub(crate) out: Vec<f32>,
}

impl Partial {
    pub(crate) fn new(groups: usize, out_rows: usize, value_len: usize) -> Self {
        Partial {
            max: vec![f32::NEG_INFINITY; groups],
            sum: vec![0.0; groups],
            out: vec![0.0; out_rows * value_len],
        }
    }

    /// Folds a block's scores (`s[g * BLOCK_ROWS + i]`, `i < len`) into the running softmax:
    /// rescales the sums and outputs to the new maximum and turns the scores into weights.
    pub(crate) fn fold_block(&mut self, s: &mut [f32], len: usize, value_len: usize) {
        for g in 0..self.max.len() {
            let sg = &mut s[g * BLOCK_ROWS..g * BLOCK_ROWS + len];
            let bm = max_of(sg);
            let new_max = self.max[g].max(bm);
            let correction = (self.max[g] - new_max).exp();
            if correction != 1.0 {
                self.sum[g] *= correction;
                self.out[g * value_len..(g + 1) * value_len]
                    .iter_mut()
                    .for_each(|v| *v *= correction);
            }
            self.sum[g] += simd::exp_shifted_sum(sg, new_max);
            self.max[g] = new_max;
        }
    }
}

/// The largest value (NaNs ignored, like `f32::max`), in 16 lanes the compiler vectorises.
fn max_of(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}

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
/// the split costs more than it saves. 512 left a decode at depth 384 (V2-Lite's 16 heads, ~0.4
/// ms of attention per layer) on one thread: 128 took q4_k tg64 there from 36.5–39.2 to
/// 37.2–43.1 tok/s (three alternating pairs); 64 was no better than 128 at depth 0–256.
const SPLIT_ROWS: usize = 128;

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
    let parts = n_ctx
        .div_ceil(SPLIT_ROWS)
        .min(crate::threads::current() * 2)
        .max(1);
    // Parts start on multiples of BLOCK_ROWS so f32 rows are read in place, not copied.
    let per = n_ctx.div_ceil(parts).next_multiple_of(BLOCK_ROWS);
    let partials: Vec<Partial> = crate::threads::map(parts, |p| {
        attend_partial(
            queries,
            rows,
            layout,
            p * per,
            ((p + 1) * per).min(n_ctx),
            scale,
        )
    });
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Q8_GROUP;
    use std::arch::x86_64::*;

    /// The first `groups` groups of 32 values of an 8-bit row: bytes widened, times their scale.
    ///
    /// # Safety
    /// AVX-512 F; `scales` holds `groups` f32, `values` and `out` `32 · groups` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn q8_dequantize_groups(
        scales: &[u8],
        values: &[u8],
        groups: usize,
        out: &mut [f32],
    ) {
        assert!(scales.len() >= 4 * groups && values.len() >= Q8_GROUP * groups);
        assert!(out.len() >= Q8_GROUP * groups);
        for g in 0..groups {
            let d = _mm512_set1_ps((scales.as_ptr().add(4 * g) as *const f32).read_unaligned());
            for h in 0..2 {
                let at = g * Q8_GROUP + 16 * h;
                let b = _mm_loadu_si128(values.as_ptr().add(at) as *const __m128i);
                let v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
                _mm512_storeu_ps(out.as_mut_ptr().add(at), _mm512_mul_ps(v, d));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_rows_dequantize_as_the_plain_code() {
        for width in [576, 40, 7, 64] {
            let x: Vec<f32> = (0..width)
                .map(|i| ((i * 37) % 101) as f32 / 9.0 - 5.0)
                .collect();
            let mut row = vec![0u8; q8_row_bytes(width)];
            q8_quantize_row(&x, &mut row);
            let groups = width.div_ceil(Q8_GROUP);
            let (scales, values) = row.split_at(groups * 4);
            let (mut fast, mut plain) = (vec![f32::NAN; width], vec![f32::NAN; width]);
            q8_dequantize_row(&row, &mut fast);
            q8_dequantize_plain(scales, values, &mut plain, 0);
            assert_eq!(fast, plain, "width {width}");
            for (a, b) in fast.iter().zip(&x) {
                assert!((a - b).abs() <= 5.0 / 127.0, "{a} vs {b}");
            }
        }
    }

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
        let rb = RowBlocks::f32(blocks, block_tokens, 40);
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
        let lrows = RowBlocks::f32(lb, 64, 40);
        let mut split_out = vec![0.0; 5 * 32];
        attend_group_split(&queries, &lrows, layout, 3000, 0.3, &mut split_out);
        let want_long = attend_group_reference(&queries, &long, layout, 3000, 0.3);
        for (a, b) in split_out.iter().zip(&want_long) {
            assert!((a - b).abs() < 1e-5, "split: {a} vs {b}");
        }
        // 8-bit rows: the same as attending over the dequantized rows, and close to f32.
        let rb8 = q8_row_bytes(40);
        let mut q8 = vec![0u8; 3000 * rb8];
        let mut deq = vec![0.0f32; 3000 * 40];
        for t in 0..3000 {
            q8_quantize_row(&long[t * 40..(t + 1) * 40], &mut q8[t * rb8..(t + 1) * rb8]);
            q8_dequantize_row(&q8[t * rb8..(t + 1) * rb8], &mut deq[t * 40..(t + 1) * 40]);
        }
        for (a, b) in deq.iter().zip(&long) {
            assert!((a - b).abs() <= 1.0 / 127.0 * 0.5 * 1.01, "{a} vs {b}");
        }
        let q8rows = RowBlocks {
            data: RowData::Q8(q8.chunks(64 * rb8).collect()),
            block_tokens: 64,
            row_width: 40,
        };
        let mut q8_out = vec![0.0; 5 * 32];
        attend_group_split(&queries, &q8rows, layout, 3000, 0.3, &mut q8_out);
        let want_deq = attend_group_reference(&queries, &deq, layout, 3000, 0.3);
        for ((a, b), c) in q8_out.iter().zip(&want_deq).zip(&want_long) {
            assert!((a - b).abs() < 1e-5, "q8: {a} vs {b}");
            assert!((a - c).abs() < 2e-2, "q8 vs f32: {a} vs {c}");
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

    /// bf16 rows: the AMX kernel (whole 64-row blocks, where the CPU has AMX) and the f32
    /// fallback (8-row blocks) both equal the reference over the bf16-rounded rows; heads not a
    /// multiple of 16, contexts not a multiple of 64 or 32, split and unsplit, MLA and GQA
    /// layouts.
    #[test]
    fn bf16_rows_match_reference_on_amx_and_fallback() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mla = RowLayout {
            row_width: 96,
            key_offset: 0,
            key_len: 96,
            value_offset: 0,
            value_len: 64,
        };
        let gqa = RowLayout {
            row_width: 130,
            key_offset: 32,
            key_len: 32,
            value_offset: 64,
            value_len: 64,
        };
        for (layout, groups) in [(mla, 16), (mla, 20), (mla, 3), (gqa, 5), (gqa, 1)] {
            let w = layout.row_width;
            let rl = bf16_row_len(w);
            for n_ctx in [1, 17, 33, 64, 100, 1500] {
                let rows: Vec<f32> = (0..n_ctx * w)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let q: Vec<f32> = (0..groups * layout.key_len)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let mut stored = vec![0u16; n_ctx.next_multiple_of(64) * rl];
                let mut rounded = vec![0.0f32; n_ctx * w];
                for t in 0..n_ctx {
                    bf16_round_row(&rows[t * w..(t + 1) * w], &mut stored[t * rl..(t + 1) * rl]);
                    for c in 0..w {
                        rounded[t * w + c] = f32::from_bits((stored[t * rl + c] as u32) << 16);
                    }
                }
                let want = attend_group_reference(&q, &rounded, layout, n_ctx, 0.2);
                for block_tokens in [64, 8] {
                    let blocks = || stored.chunks(block_tokens * rl).collect::<Vec<_>>();
                    let rb = RowBlocks {
                        data: RowData::Bf16(blocks()),
                        block_tokens,
                        row_width: w,
                    };
                    let mut out = vec![f32::NAN; groups * layout.value_len];
                    attend_group(&q, &rb, layout, n_ctx, 0.2, &mut out);
                    let mut split = vec![f32::NAN; groups * layout.value_len];
                    attend_group_split(&q, &rb, layout, n_ctx, 0.2, &mut split);
                    for (i, ((a, b), c)) in out.iter().zip(&split).zip(&want).enumerate() {
                        assert!(
                            (a - c).abs() < 2e-5 && (b - c).abs() < 2e-5,
                            "{layout:?} groups {groups} n_ctx {n_ctx} blocks of {block_tokens} [{i}]: {a} / {b} vs {c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn attend_causal_matches_one_query_at_a_time() {
        // Per-head keys and values at offsets, as in decompressed MLA prefill; contexts that
        // cross blocks, and query groups larger than the score tiles.
        let layout = RowLayout {
            row_width: 70,
            key_offset: 35,
            key_len: 20,
            value_offset: 55,
            value_len: 15,
        };
        let n = 150;
        let rows: Vec<f32> = (0..n * 70)
            .map(|i| ((i * 41 % 113) as f32 / 56.0) - 1.0)
            .collect();
        let blocks: Vec<&[f32]> = rows.chunks(64 * 70).collect();
        let rb = RowBlocks::f32(blocks, 64, 70);
        for (first_ctx, groups) in [(1, 1), (1, 16), (63, 5), (100, 16), (130, 20)] {
            let q: Vec<f32> = (0..groups * 20)
                .map(|i| ((i * 7 % 31) as f32 / 15.0) - 1.0)
                .collect();
            let mut out = vec![f32::NAN; groups * 15];
            attend_causal(&q, &rb, layout, first_ctx, 0.4, &mut out);
            for j in 0..groups {
                let want = attend_group_reference(
                    &q[j * 20..(j + 1) * 20],
                    &rows,
                    layout,
                    first_ctx + j,
                    0.4,
                );
                for (a, b) in out[j * 15..(j + 1) * 15].iter().zip(&want) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "ctx {first_ctx} query {j}: {a} vs {b}"
                    );
                }
            }
        }
    }
}
