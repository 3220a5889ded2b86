//! The per-sequence cache, paged.
//!
//! Every sequence owns a *block table*: a list of block ids, each block holding
//! [`BLOCK_TOKENS`] token rows for every layer. What a row holds depends on the model:
//! - MLA models cache only the normalised latent `c_kv` (kv_lora_rank) and the rotated shared
//!   RoPE key `k_pe` (qk_rope_head_dim): 576 values per token and layer for DeepSeek-V2.
//! - Llama models cache K and V for every KV head.
//!
//! Blocks are reference counted so sequences with a common prefix can share them (the serving
//! layer's prefix cache builds on this); a block returns to the free list when its last user
//! releases it.

/// Tokens per block.
pub const BLOCK_TOKENS: usize = 64;

/// Shape of the cache: what one token row is, and how many layers there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    /// f32 values per token and layer.
    pub row_width: usize,
}

impl CacheShape {
    /// Bytes the cache really allocates per token (all layers).
    pub fn bytes_per_token(&self) -> usize {
        self.layers * self.row_width * std::mem::size_of::<f32>()
    }
    fn block_len(&self) -> usize {
        self.layers * BLOCK_TOKENS * self.row_width
    }
    fn layer_len(&self) -> usize {
        BLOCK_TOKENS * self.row_width
    }
}

/// One sequence's view of the cache: its blocks, in order, and how many token rows are filled.
#[derive(Clone, Debug, Default)]
pub struct SequenceCache {
    pub block_table: Vec<u32>,
    pub len: usize,
}

#[derive(Debug)]
pub enum CacheError {
    OutOfBlocks { needed: usize, limit: usize },
}

impl std::error::Error for CacheError {}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::OutOfBlocks { needed, limit } => write!(f, "cache is full: {needed} more blocks needed, limit is {limit} blocks of {BLOCK_TOKENS} tokens"),
        }
    }
}

/// All blocks of one model's cache.
pub struct BlockPool {
    shape: CacheShape,
    blocks: Vec<Box<[f32]>>,
    refcount: Vec<u32>,
    free: Vec<u32>,
    max_blocks: usize,
}

impl BlockPool {
    /// A pool that grows on demand up to `max_blocks` blocks.
    pub fn new(shape: CacheShape, max_blocks: usize) -> Self {
        BlockPool {
            shape,
            blocks: vec![],
            refcount: vec![],
            free: vec![],
            max_blocks,
        }
    }

    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// Blocks currently referenced by some sequence (or by the prefix cache).
    pub fn used_blocks(&self) -> usize {
        self.refcount.iter().filter(|&&r| r > 0).count()
    }

    /// Most blocks the pool may ever hold.
    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// Blocks that can still be handed out: freed ones plus room to grow.
    pub fn available_blocks(&self) -> usize {
        self.free.len() + self.max_blocks.saturating_sub(self.blocks.len())
    }

    /// Holders of block `b`.
    pub fn refcount(&self, b: u32) -> u32 {
        self.refcount[b as usize]
    }

    /// One more holder of block `b`.
    pub fn retain(&mut self, b: u32) {
        self.refcount[b as usize] += 1;
    }

    /// One holder fewer of block `b`; it is freed when none is left.
    pub fn release_block(&mut self, b: u32) {
        let r = &mut self.refcount[b as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(b);
        }
    }

    pub fn allocated_bytes(&self) -> usize {
        self.blocks.len() * self.shape.block_len() * std::mem::size_of::<f32>()
    }

    fn alloc(&mut self) -> Result<u32, CacheError> {
        if let Some(id) = self.free.pop() {
            self.refcount[id as usize] = 1;
            return Ok(id);
        }
        if self.blocks.len() >= self.max_blocks {
            return Err(CacheError::OutOfBlocks {
                needed: 1,
                limit: self.max_blocks,
            });
        }
        self.blocks
            .push(vec![0.0; self.shape.block_len()].into_boxed_slice());
        self.refcount.push(1);
        Ok((self.blocks.len() - 1) as u32)
    }

    /// Makes room for `seq` to hold `new_len` token rows.
    pub fn reserve(&mut self, seq: &mut SequenceCache, new_len: usize) -> Result<(), CacheError> {
        let need = new_len.div_ceil(BLOCK_TOKENS);
        let more = need.saturating_sub(seq.block_table.len());
        if more > self.free.len() + self.max_blocks.saturating_sub(self.blocks.len()) {
            return Err(CacheError::OutOfBlocks {
                needed: more,
                limit: self.max_blocks,
            });
        }
        while seq.block_table.len() < need {
            let id = self.alloc()?;
            seq.block_table.push(id);
        }
        Ok(())
    }

    /// Another reference to the same blocks (prefix sharing).
    pub fn share(&mut self, seq: &SequenceCache) -> SequenceCache {
        for &b in &seq.block_table {
            self.refcount[b as usize] += 1;
        }
        seq.clone()
    }

    /// Gives back `seq`'s blocks; a block is freed when nobody else holds it.
    pub fn release(&mut self, seq: &mut SequenceCache) {
        for b in std::mem::take(&mut seq.block_table) {
            self.release_block(b);
        }
        seq.len = 0;
    }

    /// Mutable row of token `pos` in `layer`. The block must be reserved.
    pub fn row_mut(&mut self, seq: &SequenceCache, layer: usize, pos: usize) -> &mut [f32] {
        let w = self.shape.row_width;
        let b = seq.block_table[pos / BLOCK_TOKENS] as usize;
        let o = layer * self.shape.layer_len() + (pos % BLOCK_TOKENS) * w;
        &mut self.blocks[b][o..o + w]
    }

    /// The layer's part of each of `seq`'s blocks, in order: [`BLOCK_TOKENS`] rows each.
    pub fn layer_blocks(&self, seq: &SequenceCache, layer: usize) -> Vec<&[f32]> {
        let l = self.shape.layer_len();
        seq.block_table
            .iter()
            .map(|&b| &self.blocks[b as usize][layer * l..(layer + 1) * l])
            .collect()
    }
}

mod prefix;
pub use prefix::PrefixCache;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_in_the_right_block_and_blocks_are_recycled() {
        let shape = CacheShape {
            layers: 2,
            row_width: 3,
        };
        let mut pool = BlockPool::new(shape, 4);
        let mut a = SequenceCache::default();
        pool.reserve(&mut a, 70).unwrap();
        assert_eq!(a.block_table.len(), 2);
        pool.row_mut(&a, 1, 65).copy_from_slice(&[1.0, 2.0, 3.0]);
        let blocks = pool.layer_blocks(&a, 1);
        assert_eq!(&blocks[1][3..6], &[1.0, 2.0, 3.0]);
        let b = pool.share(&a);
        pool.release(&mut a);
        assert_eq!(pool.used_blocks(), 2);
        let mut b = b;
        pool.release(&mut b);
        assert_eq!(pool.used_blocks(), 0);
        let mut c = SequenceCache::default();
        assert!(pool.reserve(&mut c, 64 * 5).is_err());
        pool.reserve(&mut c, 64 * 4).unwrap();
        assert_eq!(pool.allocated_bytes(), 4 * 2 * 64 * 3 * 4);
    }
}
