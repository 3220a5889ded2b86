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

use deepseek_kernels::attention::{
    bf16_round_row, bf16_row_len, q8_quantize_row, q8_row_bytes, RowBlocks, RowData,
};

/// Tokens per block.
pub const BLOCK_TOKENS: usize = 64;

/// How a cache row is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CacheDtype {
    /// f32 values: exact.
    #[default]
    F32,
    /// bf16 values (round to nearest even): half the bytes, the precision a bf16 model's
    /// reference keeps its cache in; where the CPU has AMX, decode attention runs on tiles.
    Bf16,
    /// 8 bits per value with an f32 scale per 32 values (3.6× smaller for MLA's 576-wide
    /// rows); attention dequantizes a block of rows at a time.
    Q8,
}

/// Shape of the cache: what one token row is, and how many layers there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheShape {
    pub layers: usize,
    /// Values per token and layer.
    pub row_width: usize,
    pub dtype: CacheDtype,
}

impl CacheShape {
    /// Bytes of one token's row in one layer.
    pub fn row_bytes(&self) -> usize {
        match self.dtype {
            CacheDtype::F32 => self.row_width * 4,
            CacheDtype::Bf16 => bf16_row_len(self.row_width) * 2,
            CacheDtype::Q8 => q8_row_bytes(self.row_width),
        }
    }
    /// Bytes the cache really allocates per token (all layers).
    pub fn bytes_per_token(&self) -> usize {
        self.layers * self.row_bytes()
    }
    /// f32 words per block (rows are stored in f32 words; 8-bit rows are 4-byte multiples).
    fn block_len(&self) -> usize {
        self.layers * self.layer_len()
    }
    fn layer_len(&self) -> usize {
        BLOCK_TOKENS * self.row_bytes() / 4
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

    /// Bytes of one block (every layer's rows), as the disk tier stores it.
    pub fn block_bytes_len(&self) -> usize {
        self.shape.block_len() * std::mem::size_of::<f32>()
    }

    /// The raw bytes of block `b`.
    pub fn block_bytes(&self, b: u32) -> &[u8] {
        bytes(&self.blocks[b as usize])
    }

    /// The raw bytes of block `b`, to fill (from disk).
    pub fn block_bytes_mut(&mut self, b: u32) -> &mut [u8] {
        bytes_mut(&mut self.blocks[b as usize])
    }

    /// A block with one holder, contents unspecified (to be filled from disk).
    pub fn alloc_block(&mut self) -> Result<u32, CacheError> {
        self.alloc()
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

    /// Drops `seq`'s rows from `len` on (the rejected drafts of a speculative step): blocks past
    /// the new end go back to the pool. A kept last block that is partly filled and shared with
    /// someone else is copied first, so the rows written after `len` never reach the sharer.
    pub fn truncate(&mut self, seq: &mut SequenceCache, len: usize) -> Result<(), CacheError> {
        assert!(
            len <= seq.len,
            "truncate: {len} rows asked, {} held",
            seq.len
        );
        let keep = len.div_ceil(BLOCK_TOKENS);
        for b in seq.block_table.split_off(keep) {
            self.release_block(b);
        }
        if !len.is_multiple_of(BLOCK_TOKENS) {
            let last = seq.block_table[keep - 1];
            if self.refcount[last as usize] > 1 {
                let copy = self.alloc()?;
                let (src, dst) = (last as usize, copy as usize);
                let rows = self.blocks[src].clone();
                self.blocks[dst].copy_from_slice(&rows);
                self.release_block(last);
                seq.block_table[keep - 1] = copy;
            }
        }
        seq.len = len;
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

    /// Mutable f32 row of token `pos` in `layer` (f32 caches only). The block must be reserved.
    pub fn row_mut(&mut self, seq: &SequenceCache, layer: usize, pos: usize) -> &mut [f32] {
        assert_eq!(
            self.shape.dtype,
            CacheDtype::F32,
            "row_mut needs an f32 cache"
        );
        let w = self.shape.row_width;
        let b = seq.block_table[pos / BLOCK_TOKENS] as usize;
        let o = layer * self.shape.layer_len() + (pos % BLOCK_TOKENS) * w;
        &mut self.blocks[b][o..o + w]
    }

    /// Stores `row` as token `pos`'s row in `layer` (rounded to bf16 or 8 bits in those
    /// caches).
    pub fn write_row(&mut self, seq: &SequenceCache, layer: usize, pos: usize, row: &[f32]) {
        if self.shape.dtype == CacheDtype::F32 {
            self.row_mut(seq, layer, pos).copy_from_slice(row);
            return;
        }
        let words = self.shape.row_bytes() / 4;
        let b = seq.block_table[pos / BLOCK_TOKENS] as usize;
        let o = layer * self.shape.layer_len() + (pos % BLOCK_TOKENS) * words;
        let dst = bytes_mut(&mut self.blocks[b][o..o + words]);
        match self.shape.dtype {
            CacheDtype::Bf16 => bf16_round_row(row, halves_mut(dst)),
            _ => q8_quantize_row(row, dst),
        }
    }

    /// The layer's part of each of `seq`'s blocks, in order: [`BLOCK_TOKENS`] rows each (the
    /// raw words of 8-bit rows in a Q8 cache; see [`BlockPool::layer_rows`]).
    pub fn layer_blocks(&self, seq: &SequenceCache, layer: usize) -> Vec<&[f32]> {
        let l = self.shape.layer_len();
        seq.block_table
            .iter()
            .map(|&b| &self.blocks[b as usize][layer * l..(layer + 1) * l])
            .collect()
    }

    /// `seq`'s rows of `layer`, for the attention kernels, in whatever form they are stored.
    pub fn layer_rows(&self, seq: &SequenceCache, layer: usize) -> RowBlocks<'_> {
        let blocks = self.layer_blocks(seq, layer);
        let data = match self.shape.dtype {
            CacheDtype::F32 => RowData::F32(blocks),
            CacheDtype::Bf16 => RowData::Bf16(blocks.into_iter().map(halves).collect()),
            CacheDtype::Q8 => RowData::Q8(blocks.into_iter().map(bytes).collect()),
        };
        RowBlocks {
            data,
            block_tokens: BLOCK_TOKENS,
            row_width: self.shape.row_width,
        }
    }
}

/// The bytes of f32 storage (8-bit rows live in f32-aligned blocks).
fn bytes(words: &[f32]) -> &[u8] {
    // SAFETY: any f32 memory is valid as bytes; u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), std::mem::size_of_val(words)) }
}

/// The u16 halves of f32 storage (bf16 rows).
fn halves(words: &[f32]) -> &[u16] {
    // SAFETY: any f32 memory is valid as u16 pairs; u16's alignment divides f32's.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u16>(), words.len() * 2) }
}

fn halves_mut(bytes: &mut [u8]) -> &mut [u16] {
    assert!(bytes.len().is_multiple_of(2) && (bytes.as_ptr() as usize).is_multiple_of(2));
    // SAFETY: length and alignment checked; every bit pattern is a valid u16 and byte.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<u16>(), bytes.len() / 2) }
}

fn bytes_mut(words: &mut [f32]) -> &mut [u8] {
    // SAFETY: as above; every byte pattern is a valid f32 bit pattern to write back.
    unsafe {
        std::slice::from_raw_parts_mut(
            words.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(words),
        )
    }
}

pub mod disk;
mod prefix;
pub use disk::DiskTier;
pub use prefix::PrefixCache;

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_frees_whole_blocks_and_copies_a_shared_partial_one() {
        use super::*;
        let shape = CacheShape {
            layers: 1,
            row_width: 4,
            dtype: CacheDtype::F32,
        };
        let mut pool = BlockPool::new(shape, 8);
        let mut a = SequenceCache::default();
        pool.reserve(&mut a, 3 * BLOCK_TOKENS).unwrap();
        a.len = 3 * BLOCK_TOKENS;
        for pos in 0..a.len {
            pool.write_row(&a, 0, pos, &[pos as f32; 4]);
        }
        let b = pool.share(&a);
        pool.truncate(&mut a, BLOCK_TOKENS + 5).unwrap();
        assert_eq!((a.len, a.block_table.len()), (BLOCK_TOKENS + 5, 2));
        // The second block was shared with `b`: `a` now writes into its own copy.
        assert_ne!(a.block_table[1], b.block_table[1]);
        assert_eq!(a.block_table[0], b.block_table[0]);
        pool.write_row(&a, 0, BLOCK_TOKENS + 5, &[-1.0; 4]);
        let pos = BLOCK_TOKENS + 5;
        assert_eq!(pool.row_mut(&b, 0, pos), &[pos as f32; 4]);
        assert_eq!(
            pool.row_mut(&a, 0, BLOCK_TOKENS + 4),
            &[(pos - 1) as f32; 4]
        );
        // Unshared: whole blocks go back, nothing is copied.
        let mut c = SequenceCache::default();
        pool.reserve(&mut c, 2 * BLOCK_TOKENS).unwrap();
        c.len = 2 * BLOCK_TOKENS;
        let first = c.block_table[0];
        let used = pool.used_blocks();
        pool.truncate(&mut c, 3).unwrap();
        assert_eq!(
            (c.block_table.clone(), pool.used_blocks()),
            (vec![first], used - 1)
        );
    }

    use super::*;

    #[test]
    fn rows_land_in_the_right_block_and_blocks_are_recycled() {
        let shape = CacheShape {
            layers: 2,
            row_width: 3,
            dtype: CacheDtype::F32,
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

    #[test]
    fn q8_rows_round_trip_through_the_pool() {
        let shape = CacheShape {
            layers: 2,
            row_width: 40,
            dtype: CacheDtype::Q8,
        };
        assert_eq!(shape.bytes_per_token(), 2 * (2 * 4 + 40));
        let mut pool = BlockPool::new(shape, 4);
        let mut a = SequenceCache::default();
        pool.reserve(&mut a, 100).unwrap();
        let row: Vec<f32> = (0..40).map(|i| (i as f32 - 20.0) / 7.0).collect();
        pool.write_row(&a, 1, 70, &row);
        let rows = pool.layer_rows(&a, 1);
        let mut back = vec![0.0; 40];
        rows.row_f32(70, &mut back);
        for (x, y) in row.iter().zip(&back) {
            assert!((x - y).abs() <= 20.0 / 7.0 / 254.0 * 1.01, "{x} vs {y}");
        }
        assert_eq!(pool.allocated_bytes(), 2 * 2 * 64 * 48);
    }

    #[test]
    fn bf16_rows_round_trip_through_the_pool() {
        let shape = CacheShape {
            layers: 2,
            row_width: 5,
            dtype: CacheDtype::Bf16,
        };
        // Odd widths are padded to whole 4-byte words.
        assert_eq!(shape.bytes_per_token(), 2 * 6 * 2);
        let mut pool = BlockPool::new(shape, 4);
        let mut a = SequenceCache::default();
        pool.reserve(&mut a, 100).unwrap();
        let row = [1.0, -2.5, 1.0 + 1.0 / 512.0, 3.0e-3, 65504.0];
        pool.write_row(&a, 1, 70, &row);
        pool.write_row(&a, 1, 71, &[7.0; 5]);
        let rows = pool.layer_rows(&a, 1);
        let mut back = vec![0.0; 5];
        rows.row_f32(70, &mut back);
        for (x, y) in row.iter().zip(&back) {
            assert_eq!(half::bf16::from_f32(*x).to_f32(), *y);
        }
        assert_eq!(back[2], 1.0, "1 + 2^-9 rounds to even");
        rows.row_f32(71, &mut back);
        assert_eq!(back, [7.0; 5]);
        assert_eq!(pool.allocated_bytes(), 2 * 2 * 64 * 12);
    }
}
