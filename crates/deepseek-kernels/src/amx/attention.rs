//! Attention over a bf16 cache on AMX tiles: the decode step at long context.
//!
//! At 16K tokens of context, MLA decode spends most of its attention time on two small-by-long
//! products per layer: 16 heads' scores against every latent row (`[t, 576] · [576, h]`) and the
//! weighted sum of the rows (`[h, t] · [t, 512]`). On f32 FMA code they run at a third of the
//! FMA peak and cost more than all the layer's weights (BENCHMARKS.md, "Long context"). With the
//! cache in bf16 both are AMX tile products:
//! - Scores: 16 rows × 32 values of the cache are exactly a tile (a strided load, in place);
//!   the queries are the second operand, split into bf16 `hi + lo` like the GEMM's activations,
//!   so the scores are those of f32 queries against the bf16 rows.
//! - Values: the softmax weights (split `hi + lo` too) are the first operand and the rows the
//!   second, which AMX wants pair-interleaved (two consecutive tokens' values side by side), so
//!   each 32-column strip of a block is rearranged into a 4 KiB buffer just before its products.
//!
//! The online softmax between the two is the f32 code of [`crate::attention`], so the result is
//! that of [`crate::attention::attend_group`] over the same bf16 rows, to f32 rounding. The
//! next block is prefetched into L2, a few lines per tile step, while one is computed: tile
//! loads that miss the caches stalled the kernel (`perf annotate`; a trial build without the
//! prefetch ran `examples/attention_speed` ~25% slower). Even so the kernel streams the cache
//! at well under the machine's bandwidth (BENCHMARKS.md, "Long context on AMX").

use crate::attention::partial::Partial;
use crate::attention::rows::{bf16_row_len, RowLayout, BLOCK_ROWS};

use super::{K_TILE, TILE};

/// Whether [`attend_partial`] can take these rows: AMX with AVX512-BF16 present, keys in whole
/// 32-value tiles, values in whole pairs of 16-value tiles, and 64-row steps that never cross a
/// cache block (every tile load stays inside the block, past the filled rows at most).
pub(crate) fn fits(layout: RowLayout, groups: usize, block_tokens: usize, start: usize) -> bool {
    groups > 0
        && layout.key_len.is_multiple_of(K_TILE)
        && layout.value_len.is_multiple_of(2 * TILE)
        && layout.key_offset + layout.key_len <= layout.row_width
        && layout.value_offset + layout.value_len <= layout.row_width
        && block_tokens.is_multiple_of(BLOCK_ROWS)
        && start.is_multiple_of(BLOCK_ROWS)
        && super::available()
        && super::x86::has_avx512_bf16()
}

/// Online-softmax attention of `queries` (`groups × key_len`) over rows `start..end` of bf16
/// cache blocks (`block_tokens` rows of [`bf16_row_len`] values each). Needs [`fits`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn attend_partial(
    queries: &[f32],
    blocks: &[&[u16]],
    block_tokens: usize,
    layout: RowLayout,
    start: usize,
    end: usize,
    scale: f32,
) -> Partial {
    let groups = queries.len() / layout.key_len;
    assert!(fits(layout, groups, block_tokens, start));
    let head_tiles = groups.div_ceil(TILE);
    let rl = bf16_row_len(layout.row_width);
    let vl = layout.value_len;
    let mut p = Partial::new(groups, head_tiles * TILE, vl);
    let q = QueryTiles::new(queries, layout.key_len, scale);
    let mut s = vec![0.0f32; head_tiles * TILE * BLOCK_ROWS];
    let mut weights: Vec<WeightTiles> = (0..head_tiles).map(|_| WeightTiles::default()).collect();
    // SAFETY: `fits` checked AMX and AVX512-BF16. Every tile load below reads 64 rows of a
    // block from `first`, inside it: `start` and each step are multiples of BLOCK_ROWS, which
    // divides `block_tokens` (asserted via `fits`, slice bounds asserted per block).
    unsafe {
        super::x86::configure_tiles();
        let mut b0 = start;
        while b0 < end {
            let len = (end - b0).min(BLOCK_ROWS);
            let block = blocks[b0 / block_tokens];
            let first = (b0 % block_tokens) * rl;
            let rows = &block[first..first + BLOCK_ROWS * rl];
            // The next block's rows, fetched into L2 while this one is computed.
            let ahead = b0 + BLOCK_ROWS;
            let next = (ahead < end).then(|| {
                let (nb, nf) = (ahead / block_tokens, ahead % block_tokens);
                let n_len = (end - ahead).min(BLOCK_ROWS);
                &blocks[nb][nf * rl..(nf + n_len) * rl]
            });
            let mut prefetch = Prefetcher::new(next, q.key_tiles + vl / (2 * TILE));
            x86::scores(rows, &mut prefetch, rl, layout, &q, groups, len, &mut s);
            p.fold_block(&mut s, len, vl);
            for g in 0..groups {
                s[g * BLOCK_ROWS + len..(g + 1) * BLOCK_ROWS].fill(0.0);
            }
            for (hb, w) in weights.iter_mut().enumerate() {
                w.split(&s[hb * TILE * BLOCK_ROWS..(hb + 1) * TILE * BLOCK_ROWS]);
            }
            x86::values(
                rows,
                &mut prefetch,
                rl,
                layout.value_offset,
                vl,
                len,
                &weights,
                &mut p.out,
            );
            b0 += len;
        }
        super::x86::release_tiles();
    }
    p
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn attend_partial(
    _: &[f32],
    _: &[&[u16]],
    _: usize,
    _: RowLayout,
    _: usize,
    _: usize,
    _: f32,
) -> Partial {
    unreachable!("AMX is x86-only")
}

/// Prefetches a block's lines into L2 a few at a time, spread over the previous block's work
/// (bursts stall the tile loads, which need the same line fill buffers).
struct Prefetcher {
    ptr: *const i8,
    lines: usize,
    fetched: usize,
    per_step: usize,
}

impl Prefetcher {
    fn new(next: Option<&[u16]>, steps: usize) -> Self {
        let next = next.unwrap_or(&[]);
        let lines = (next.len() * 2).div_ceil(64);
        Prefetcher {
            ptr: next.as_ptr() as *const i8,
            lines,
            fetched: 0,
            per_step: lines.div_ceil(steps.max(1)),
        }
    }

    #[inline]
    fn step(&mut self) {
        let end = (self.fetched + self.per_step).min(self.lines);
        #[cfg(target_arch = "x86_64")]
        while self.fetched < end {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
            // SAFETY: the line lies inside the `next` slice given to `new`.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(self.ptr.add(self.fetched * 64)) };
            self.fetched += 1;
        }
        self.fetched = end;
    }
}

/// The queries as AMX second operands: for head tile `hb` and key tile `kc`, 16 rows × 16 u32
/// at `(hb * key_tiles + kc) * 256`, row `k` column `h` = the bf16 pair (q[16hb + h][32kc + 2k],
/// q[16hb + h][32kc + 2k + 1]); `hi` and `lo` parts, heads past the last zero.
struct QueryTiles {
    key_tiles: usize,
    hi: Vec<u32>,
    lo: Vec<u32>,
}

impl QueryTiles {
    /// `scale` is folded into the queries, so the tile products are the scaled scores.
    fn new(queries: &[f32], key_len: usize, scale: f32) -> Self {
        let groups = queries.len() / key_len;
        let key_tiles = key_len / K_TILE;
        let len = groups.div_ceil(TILE) * key_tiles * TILE * TILE;
        let (mut hi, mut lo) = (vec![0u32; len], vec![0u32; len]);
        let scaled: Vec<f32> = queries.iter().map(|v| v * scale).collect();
        let (mut row_hi, mut row_lo) = (vec![0u16; key_len], vec![0u16; key_len]);
        for (g, q) in scaled.chunks(key_len).enumerate() {
            let (hb, h) = (g / TILE, g % TILE);
            super::split_contiguous(q, &mut row_hi, &mut row_lo);
            for pair in 0..key_len / 2 {
                let (kc, k) = (pair / TILE, pair % TILE);
                let at = (hb * key_tiles + kc) * TILE * TILE + k * TILE + h;
                hi[at] = row_hi[2 * pair] as u32 | (row_hi[2 * pair + 1] as u32) << 16;
                lo[at] = row_lo[2 * pair] as u32 | (row_lo[2 * pair + 1] as u32) << 16;
            }
        }
        QueryTiles { key_tiles, hi, lo }
    }
}

/// One head tile's softmax weights for a block as AMX first operands: 16 heads × 64 rows of
/// bf16, `hi` and `lo` parts; token chunk `c` (32 rows) is the tile at column `32c`.
struct WeightTiles {
    hi: [u16; TILE * BLOCK_ROWS],
    lo: [u16; TILE * BLOCK_ROWS],
}

impl Default for WeightTiles {
    fn default() -> Self {
        WeightTiles {
            hi: [0; TILE * BLOCK_ROWS],
            lo: [0; TILE * BLOCK_ROWS],
        }
    }
}

impl WeightTiles {
    /// Splits 16 heads' weights (`w[h * BLOCK_ROWS + t]`).
    fn split(&mut self, w: &[f32]) {
        super::split_contiguous(&w[..TILE * BLOCK_ROWS], &mut self.hi, &mut self.lo);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Prefetcher, QueryTiles, RowLayout, WeightTiles, BLOCK_ROWS, K_TILE, TILE};
    use std::arch::asm;

    /// Scores of the first `len` rows of a block against every query head:
    /// `s[g * BLOCK_ROWS + t] = q[g] · key(row t)` (the queries carry the scale), all four
    /// 16-row tiles of the block at a time (two when `len` ≤ 32), so each query tile load
    /// serves four products and the four row tiles' loads are in flight together. Steps
    /// `prefetch` (the following block) once per key tile.
    ///
    /// # Safety
    /// Tiles configured (`configure_tiles`); `rows` holds 64 rows of `rl` values.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn scores(
        rows: &[u16],
        prefetch: &mut Prefetcher,
        rl: usize,
        layout: RowLayout,
        q: &QueryTiles,
        groups: usize,
        len: usize,
        s: &mut [f32],
    ) {
        assert!(rows.len() >= BLOCK_ROWS * rl && layout.key_offset + layout.key_len <= rl);
        assert!(len <= BLOCK_ROWS);
        let mut c = [0.0f32; BLOCK_ROWS * TILE];
        let stride = rl * 2;
        let a = |i: usize, kc: usize| {
            rows.as_ptr()
                .add(i * TILE * rl + layout.key_offset + kc * K_TILE)
        };
        for hb in 0..groups.div_ceil(TILE) {
            let heads = (groups - hb * TILE).min(TILE);
            super::super::x86::zero_accumulators();
            for kc in 0..q.key_tiles {
                if hb == 0 {
                    prefetch.step();
                }
                let at = (hb * q.key_tiles + kc) * TILE * TILE;
                let (hi, lo) = (q.hi.as_ptr().add(at), q.lo.as_ptr().add(at));
                if len > 2 * TILE {
                    asm!(
                        "tileloadd tmm4, [{hi} + {qs}*1]",
                        "tileloadd tmm5, [{lo} + {qs}*1]",
                        "tileloadd tmm6, [{a0} + {s}*1]",
                        "tileloadd tmm7, [{a1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm6, tmm4",
                        "tdpbf16ps tmm0, tmm6, tmm5",
                        "tileloadd tmm6, [{a2} + {s}*1]",
                        "tdpbf16ps tmm1, tmm7, tmm4",
                        "tdpbf16ps tmm1, tmm7, tmm5",
                        "tileloadd tmm7, [{a3} + {s}*1]",
                        "tdpbf16ps tmm2, tmm6, tmm4",
                        "tdpbf16ps tmm2, tmm6, tmm5",
                        "tdpbf16ps tmm3, tmm7, tmm4",
                        "tdpbf16ps tmm3, tmm7, tmm5",
                        a0 = in(reg) a(0, kc),
                        a1 = in(reg) a(1, kc),
                        a2 = in(reg) a(2, kc),
                        a3 = in(reg) a(3, kc),
                        s = in(reg) stride,
                        hi = in(reg) hi,
                        lo = in(reg) lo,
                        qs = in(reg) TILE * 4,
                        options(nostack, readonly),
                    );
                } else {
                    asm!(
                        "tileloadd tmm4, [{hi} + {qs}*1]",
                        "tileloadd tmm5, [{lo} + {qs}*1]",
                        "tileloadd tmm6, [{a0} + {s}*1]",
                        "tileloadd tmm7, [{a1} + {s}*1]",
                        "tdpbf16ps tmm0, tmm6, tmm4",
                        "tdpbf16ps tmm0, tmm6, tmm5",
                        "tdpbf16ps tmm1, tmm7, tmm4",
                        "tdpbf16ps tmm1, tmm7, tmm5",
                        a0 = in(reg) a(0, kc),
                        a1 = in(reg) a(1, kc),
                        s = in(reg) stride,
                        hi = in(reg) hi,
                        lo = in(reg) lo,
                        qs = in(reg) TILE * 4,
                        options(nostack, readonly),
                    );
                }
            }
            super::super::x86::store_accumulators(&mut c);
            // c[t][h] (row t of the block) → s[head][row].
            for t in 0..len {
                for h in 0..heads {
                    s[(hb * TILE + h) * BLOCK_ROWS + t] = c[t * TILE + h];
                }
            }
        }
    }

    /// `out[h][c] += Σ_t w[h][t] · row_t[value_offset + c]` over the first `len` rows of a
    /// block, for every head tile (`out` is `16 · weights.len()` rows of `vl`). AMX wants the
    /// rows pair-interleaved (u32 `c` of pair `pr` = rows `2pr`, `2pr + 1` at column `c`): each
    /// 32-column strip of the block is rearranged into an L1-resident 4 KiB buffer and used at
    /// once; rows past `len` are zero.
    ///
    /// # Safety
    /// Tiles configured (`configure_tiles`), AVX-512 (BW) present; `rows` holds 64 rows of
    /// `rl` values.
    #[target_feature(enable = "avx512f,avx512bw")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn values(
        rows: &[u16],
        prefetch: &mut Prefetcher,
        rl: usize,
        offset: usize,
        vl: usize,
        len: usize,
        weights: &[WeightTiles],
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        assert!(rows.len() >= BLOCK_ROWS * rl && offset + vl <= rl && len <= BLOCK_ROWS);
        assert!(out.len() >= weights.len() * TILE * vl && vl.is_multiple_of(2 * TILE));
        let chunks = len.div_ceil(2 * TILE);
        // Output u16 `i` of a 32-value half is value i/2 of row a (even i) or row b (odd i).
        let order: [i16; 32] = std::array::from_fn(|i| (i / 2 + (i % 2) * 32) as i16);
        let lo_idx = _mm512_loadu_si512(order.as_ptr() as *const _);
        let hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
        let load = |r: usize, c: usize| {
            if r < len {
                _mm512_loadu_si512(rows.as_ptr().add(r * rl + offset + c) as *const _)
            } else {
                _mm512_setzero_si512()
            }
        };
        // 32 pairs × 32 columns: tile row `k` of chunk `ch`, columns 16j.. at
        // `(16ch + k) * 32 + 16j`, rows 128 bytes apart. Two strips: the next one is written
        // while the tiles read this one (a tile load waits for stores to its bytes to drain).
        let mut strips = [[0u32; BLOCK_ROWS / 2 * 2 * TILE]; 2];
        let (ss, os, ws) = (2 * TILE * 4, vl * 4, BLOCK_ROWS * 2);
        let fill = |strip: &mut [u32; BLOCK_ROWS / 2 * 2 * TILE], c: usize| {
            for pr in 0..chunks * TILE {
                let (a, b) = (load(2 * pr, c), load(2 * pr + 1, c));
                let dst = strip.as_mut_ptr().add(pr * 2 * TILE);
                _mm512_storeu_si512(dst as *mut _, _mm512_permutex2var_epi16(a, lo_idx, b));
                _mm512_storeu_si512(
                    dst.add(TILE) as *mut _,
                    _mm512_permutex2var_epi16(a, hi_idx, b),
                );
            }
        };
        fill(&mut strips[0], 0);
        for (i, c) in (0..vl).step_by(2 * TILE).enumerate() {
            let (now, next) = strips.split_at_mut(1);
            let (strip, next) = if i % 2 == 0 {
                (&now[0], &mut next[0])
            } else {
                (&next[0], &mut now[0])
            };
            prefetch.step();
            for (hb, w) in weights.iter().enumerate() {
                let o = out.as_mut_ptr().add(hb * TILE * vl + c);
                let b = strip.as_ptr();
                // Every tile this head tile needs from the strip is loaded before the next
                // strip's stores are issued: a tile load queued behind stores waits for them.
                asm!(
                    "tileloadd tmm0, [{o0} + {os}*1]",
                    "tileloadd tmm1, [{o1} + {os}*1]",
                    "tileloadd tmm2, [{b0} + {ss}*1]",
                    "tileloadd tmm3, [{b1} + {ss}*1]",
                    "tileloadd tmm4, [{b2} + {ss}*1]",
                    "tileloadd tmm5, [{b3} + {ss}*1]",
                    "tileloadd tmm6, [{hi} + {ws}*1]",
                    "tileloadd tmm7, [{lo} + {ws}*1]",
                    o0 = in(reg) o,
                    o1 = in(reg) o.add(TILE),
                    os = in(reg) os,
                    b0 = in(reg) b,
                    b1 = in(reg) b.add(TILE),
                    b2 = in(reg) b.add(TILE * 2 * TILE),
                    b3 = in(reg) b.add(TILE * 2 * TILE + TILE),
                    ss = in(reg) ss,
                    hi = in(reg) w.hi.as_ptr(),
                    lo = in(reg) w.lo.as_ptr(),
                    ws = in(reg) ws,
                    options(nostack, readonly),
                );
                if hb == 0 && c + 2 * TILE < vl {
                    fill(next, c + 2 * TILE);
                }
                asm!(
                    "tdpbf16ps tmm0, tmm6, tmm2",
                    "tdpbf16ps tmm0, tmm7, tmm2",
                    "tdpbf16ps tmm1, tmm6, tmm3",
                    "tdpbf16ps tmm1, tmm7, tmm3",
                    options(nostack, nomem),
                );
                if chunks == 2 {
                    asm!(
                        "tileloadd tmm6, [{hi} + {ws}*1]",
                        "tileloadd tmm7, [{lo} + {ws}*1]",
                        "tdpbf16ps tmm0, tmm6, tmm4",
                        "tdpbf16ps tmm0, tmm7, tmm4",
                        "tdpbf16ps tmm1, tmm6, tmm5",
                        "tdpbf16ps tmm1, tmm7, tmm5",
                        hi = in(reg) w.hi.as_ptr().add(2 * TILE),
                        lo = in(reg) w.lo.as_ptr().add(2 * TILE),
                        ws = in(reg) ws,
                        options(nostack, readonly),
                    );
                }
                asm!(
                    "tilestored [{o0} + {os}*1], tmm0",
                    "tilestored [{o1} + {os}*1], tmm1",
                    o0 = in(reg) o,
                    o1 = in(reg) o.add(TILE),
                    os = in(reg) os,
                    options(nostack),
                );
            }
        }
    }
}
