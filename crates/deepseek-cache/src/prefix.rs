//! Prefix reuse: full blocks of the cache are indexed by a hash of their tokens and of the prefix
//! before them, so a request that starts with tokens another request already ran (a system
//! prompt, an earlier turn of the conversation) shares those blocks instead of computing them
//! again. The index holds one reference of its own on each block; blocks nobody else holds are
//! evicted least-recently-used when the pool runs short.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::{BlockPool, SequenceCache, BLOCK_TOKENS};

struct Entry {
    block: u32,
    parent: u64,
    tokens: Box<[u32]>,
    last_used: u64,
    depth: usize,
}

#[derive(Default)]
pub struct PrefixCache {
    entries: HashMap<u64, Entry>,
    tick: u64,
}

/// Identifies a block by its tokens and everything before it (the parent's hash).
fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks in the index.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A cache for a new sequence of `tokens` that already holds the longest indexed prefix of
    /// whole blocks, leaving at least the last token to compute (its logits are needed).
    pub fn lookup(&mut self, pool: &mut BlockPool, tokens: &[u32]) -> SequenceCache {
        self.tick += 1;
        let max_blocks = tokens.len().saturating_sub(1) / BLOCK_TOKENS;
        let mut seq = SequenceCache::default();
        let mut parent = 0;
        for t in tokens.chunks_exact(BLOCK_TOKENS).take(max_blocks) {
            let h = block_hash(parent, t);
            match self.entries.get_mut(&h) {
                // Tokens compared too: a hash collision must not hand out another prefix's rows.
                Some(e) if e.parent == parent && *e.tokens == *t => {
                    e.last_used = self.tick;
                    pool.retain(e.block);
                    seq.block_table.push(e.block);
                }
                _ => break,
            }
            parent = h;
        }
        seq.len = seq.block_table.len() * BLOCK_TOKENS;
        seq
    }

    /// Indexes the full blocks of `seq`, whose rows hold the first `seq.len` of `tokens`.
    pub fn insert(&mut self, pool: &mut BlockPool, tokens: &[u32], seq: &SequenceCache) {
        self.tick += 1;
        let full = seq.len.min(tokens.len()) / BLOCK_TOKENS;
        let mut parent = 0;
        for (i, t) in tokens.chunks_exact(BLOCK_TOKENS).take(full).enumerate() {
            let h = block_hash(parent, t);
            match self.entries.get_mut(&h) {
                // Already indexed (perhaps another sequence's copy of the same rows): keep it.
                Some(e) => e.last_used = self.tick,
                None => {
                    pool.retain(seq.block_table[i]);
                    self.entries.insert(
                        h,
                        Entry {
                            block: seq.block_table[i],
                            parent,
                            tokens: t.into(),
                            last_used: self.tick,
                            depth: i,
                        },
                    );
                }
            }
            parent = h;
        }
    }

    /// Blocks only the index holds (what [`PrefixCache::evict`] could free now).
    pub fn evictable(&self, pool: &BlockPool) -> usize {
        self.entries
            .values()
            .filter(|e| pool.refcount(e.block) == 1)
            .count()
    }

    /// Frees up to `want` blocks that only the index holds, least recently used first (and
    /// the deepest first among equals, so a prefix's head outlives its tail). Returns how many.
    pub fn evict(&mut self, pool: &mut BlockPool, want: usize) -> usize {
        let mut candidates: Vec<(u64, std::cmp::Reverse<usize>, u64)> = self
            .entries
            .iter()
            .filter(|(_, e)| pool.refcount(e.block) == 1)
            .map(|(&h, e)| (e.last_used, std::cmp::Reverse(e.depth), h))
            .collect();
        candidates.sort_unstable();
        let mut freed = 0;
        for (_, _, h) in candidates.into_iter().take(want) {
            if let Some(e) = self.entries.remove(&h) {
                pool.release_block(e.block);
                freed += 1;
            }
        }
        freed
    }

    /// Drops every entry (blocks still used by sequences stay with them).
    pub fn clear(&mut self, pool: &mut BlockPool) {
        for (_, e) in self.entries.drain() {
            pool.release_block(e.block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheShape;

    fn pool(blocks: usize) -> BlockPool {
        BlockPool::new(
            CacheShape {
                layers: 1,
                row_width: 2,
                dtype: crate::CacheDtype::F32,
            },
            blocks,
        )
    }

    fn run(pool: &mut BlockPool, seq: &mut SequenceCache, tokens: &[u32]) {
        pool.reserve(seq, tokens.len()).unwrap();
        for (p, &t) in tokens.iter().enumerate().skip(seq.len) {
            pool.row_mut(seq, 0, p).fill(t as f32);
        }
        seq.len = tokens.len();
    }

    #[test]
    fn shares_whole_blocks_of_a_common_prefix_and_keeps_one_token_to_compute() {
        let mut pool = pool(16);
        let mut pc = PrefixCache::new();
        let a: Vec<u32> = (0..150).collect();
        let mut sa = pc.lookup(&mut pool, &a);
        assert_eq!(sa.len, 0);
        run(&mut pool, &mut sa, &a);
        pc.insert(&mut pool, &a, &sa);
        assert_eq!(pc.len(), 2);

        // Same first 130 tokens, then different: both full blocks are shared.
        let mut b: Vec<u32> = (0..130).collect();
        b.extend([999; 20]);
        let sb = pc.lookup(&mut pool, &b);
        assert_eq!(sb.len, 128);
        assert_eq!(sb.block_table, sa.block_table[..2]);
        assert_eq!(pool.refcount(sa.block_table[0]), 3);
        let rows = pool.layer_blocks(&sb, 0);
        assert_eq!(rows[1][2 * 63], 127.0);

        // A prompt of exactly two blocks keeps its last block to compute.
        let c: Vec<u32> = (0..128).collect();
        assert_eq!(pc.lookup(&mut pool, &c).len, 64);

        // A different first block shares nothing, even though block two matches.
        let mut d: Vec<u32> = (0..150).collect();
        d[3] = 7777;
        assert_eq!(pc.lookup(&mut pool, &d).len, 0);
    }

    #[test]
    fn evicts_only_blocks_nobody_uses_least_recent_first() {
        let mut pool = pool(8);
        let mut pc = PrefixCache::new();
        let a: Vec<u32> = (0..129).collect();
        let b: Vec<u32> = (1000..1129).collect();
        let mut sa = SequenceCache::default();
        run(&mut pool, &mut sa, &a);
        pc.insert(&mut pool, &a, &sa);
        let mut sb = SequenceCache::default();
        run(&mut pool, &mut sb, &b);
        pc.insert(&mut pool, &b, &sb);
        pool.release(&mut sa);
        // b is still running: only a's two full blocks can go.
        assert_eq!(pc.evictable(&pool), 2);
        assert_eq!(pc.evict(&mut pool, 10), 2);
        assert_eq!(pc.len(), 2);
        pool.release(&mut sb);
        let used = pool.used_blocks();
        assert_eq!(used, 2);
        // Touch b's prefix, then evict one: the deeper block goes first.
        let mut sb2 = pc.lookup(&mut pool, &b);
        assert_eq!(sb2.len, 128);
        pool.release(&mut sb2);
        assert_eq!(pc.evict(&mut pool, 1), 1);
        assert_eq!(pc.lookup(&mut pool, &b).len, 64);
    }
}
