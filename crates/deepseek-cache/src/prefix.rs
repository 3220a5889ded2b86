//! Prefix reuse: full blocks of the cache are indexed by a hash of their tokens and of the prefix
//! before them, so a request that starts with tokens another request already ran (a system
//! prompt, an earlier turn of the conversation) shares those blocks instead of computing them
//! again. The index holds one reference of its own on each block; blocks nobody else holds are
//! evicted least-recently-used when the pool runs short.
//!
//! With a disk tier ([`DiskTier`], `--cache-dir`), every block indexed here is also written to
//! disk (in the background), and a lookup that runs out of blocks in memory goes on reading
//! the prefix's next blocks from disk, so a prefix outlives eviction and restarts.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::disk::{block_key, BlockKey, DiskTier};
use crate::{BlockPool, SequenceCache, BLOCK_TOKENS};

struct Entry {
    block: u32,
    parent: u64,
    tokens: Box<[u32]>,
    last_used: u64,
    depth: usize,
    /// Written to (or read from) the disk tier.
    on_disk: bool,
}

#[derive(Default)]
pub struct PrefixCache {
    entries: HashMap<u64, Entry>,
    tick: u64,
    disk: Option<DiskTier>,
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

    /// A prefix cache whose blocks also go to (and come back from) `disk`.
    pub fn with_disk(disk: DiskTier) -> Self {
        PrefixCache {
            disk: Some(disk),
            ..Self::default()
        }
    }

    pub fn disk(&self) -> Option<&DiskTier> {
        self.disk.as_ref()
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
    /// Blocks read from disk are counted in the disk tier's `hit_blocks`.
    pub fn lookup(&mut self, pool: &mut BlockPool, tokens: &[u32]) -> SequenceCache {
        self.tick += 1;
        let max_blocks = tokens.len().saturating_sub(1) / BLOCK_TOKENS;
        let mut seq = SequenceCache::default();
        let mut parent = 0;
        let mut blocks = tokens.chunks_exact(BLOCK_TOKENS).take(max_blocks);
        for t in blocks.by_ref() {
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
        if self.disk.as_ref().is_some_and(|d| d.is_enabled()) {
            // Memory ran out of this prefix: go on from disk, block by block, each read into a
            // fresh block that then joins the memory index.
            let n = seq.block_table.len();
            let keys = self.disk_keys(&tokens[..max_blocks * BLOCK_TOKENS]);
            for (i, t) in tokens
                .chunks_exact(BLOCK_TOKENS)
                .enumerate()
                .take(max_blocks)
                .skip(n)
            {
                let disk = self.disk.as_ref().unwrap();
                let parent_key = if i == 0 { [0; 16] } else { keys[i - 1] };
                let h = block_hash(parent, t);
                // (An entry under `h` here is a hash collision's: leave it be.)
                if !disk.contains(&keys[i]) || self.entries.contains_key(&h) {
                    break;
                }
                if pool.available_blocks() == 0 && self.evict(pool, 1) == 0 {
                    break;
                }
                let Ok(b) = pool.alloc_block() else { break };
                let disk = self.disk.as_ref().unwrap();
                if !disk.load(&keys[i], &parent_key, t, pool.block_bytes_mut(b)) {
                    pool.release_block(b);
                    break;
                }
                // The index holds a reference of its own, as for blocks computed here.
                pool.retain(b);
                self.entries.insert(
                    h,
                    Entry {
                        block: b,
                        parent,
                        tokens: t.into(),
                        last_used: self.tick,
                        depth: i,
                        on_disk: true,
                    },
                );
                seq.block_table.push(b);
                parent = h;
            }
        }
        seq.len = seq.block_table.len() * BLOCK_TOKENS;
        seq
    }

    /// The disk keys of the whole blocks of `tokens`.
    fn disk_keys(&self, tokens: &[u32]) -> Vec<BlockKey> {
        match &self.disk {
            Some(d) => crate::disk::block_keys(d.fingerprint(), tokens),
            None => vec![],
        }
    }

    /// Indexes the full blocks of `seq`, whose rows hold the first `seq.len` of `tokens`.
    pub fn insert(&mut self, pool: &mut BlockPool, tokens: &[u32], seq: &SequenceCache) {
        self.tick += 1;
        let full = seq.len.min(tokens.len()) / BLOCK_TOKENS;
        let mut parent = 0;
        let mut parent_key: BlockKey = [0; 16];
        for (i, t) in tokens.chunks_exact(BLOCK_TOKENS).take(full).enumerate() {
            let h = block_hash(parent, t);
            let e = match self.entries.get_mut(&h) {
                // Already indexed (perhaps another sequence's copy of the same rows): keep it.
                Some(e) => {
                    e.last_used = self.tick;
                    e
                }
                None => {
                    pool.retain(seq.block_table[i]);
                    self.entries.entry(h).or_insert(Entry {
                        block: seq.block_table[i],
                        parent,
                        tokens: t.into(),
                        last_used: self.tick,
                        depth: i,
                        on_disk: false,
                    })
                }
            };
            if let Some(disk) = &self.disk {
                let key = block_key(disk.fingerprint(), &parent_key, t);
                // Queued once; a block the full queue dropped is offered again next time.
                if !e.on_disk && disk.is_enabled() {
                    e.on_disk = disk.contains(&key)
                        || disk.store(key, parent_key, t, pool.block_bytes(e.block));
                }
                parent_key = key;
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
    fn blocks_come_back_from_disk_after_a_restart_and_after_eviction() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = std::env::temp_dir().join(format!("deepseek-prefix-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fp = [5u8; 16];
        let a: Vec<u32> = (0..200).collect();
        {
            let mut pool = pool(16);
            let bytes = pool.block_bytes_len();
            let mut pc = PrefixCache::with_disk(DiskTier::open(&dir, fp, bytes, 1 << 30));
            let mut sa = pc.lookup(&mut pool, &a);
            run(&mut pool, &mut sa, &a);
            pc.insert(&mut pool, &a, &sa);
            // Dropping the cache waits for its writes.
        }
        // A restart: nothing in memory, three whole blocks on disk.
        let mut pool = pool(16);
        let bytes = pool.block_bytes_len();
        let mut pc = PrefixCache::with_disk(DiskTier::open(&dir, fp, bytes, 1 << 30));
        let from_disk = |pc: &PrefixCache| pc.disk().unwrap().stats.hit_blocks.load(Relaxed);
        let found = pc.lookup(&mut pool, &a);
        assert_eq!((found.len, from_disk(&pc)), (192, 3));
        let rows = pool.layer_blocks(&found, 0);
        assert_eq!((rows[0][0], rows[2][2 * 63]), (0.0, 191.0));
        // Now in memory too: the next lookup reads nothing from disk.
        let again = pc.lookup(&mut pool, &a);
        assert_eq!((again.len, from_disk(&pc)), (192, 3));
        // Evicted from memory, back from disk.
        let (mut s1, mut s2) = (found, again);
        pool.release(&mut s1);
        pool.release(&mut s2);
        assert_eq!(pc.evict(&mut pool, 10), 3);
        let back = pc.lookup(&mut pool, &a);
        assert_eq!((back.len, from_disk(&pc)), (192, 6));
        // Another model (fingerprint) finds nothing.
        let mut other = PrefixCache::with_disk(DiskTier::open(&dir, [6u8; 16], bytes, 1 << 30));
        assert_eq!(other.lookup(&mut pool, &a).len, 0);
        let _ = std::fs::remove_dir_all(&dir);
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
