//! What one forward step's layers share: the launcher, scratch memory, where the batch's tokens
//! sit (positions, cache slots, block tables), and the matrix products every layer runs.

use std::cell::RefCell;

use deepseek_cuda::launch::{as_bytes, Buffer, Dtype, Gemm, Launch, Pod};
use deepseek_cuda::ops::{self, PagedCache, RopeSlice};

use super::error::Result;
use super::weights::Weight;

/// Per-step scratch memory: one device buffer handed out in 256-byte-aligned pieces, reset
/// every step and given back after each layer (a device allocation per intermediate and step
/// would cost more than the kernels; the stream runs in order, so a piece is reused only by
/// work queued after its last use). A step that needs more gets separate allocations, and the
/// buffer grows to the step's peak for the next.
#[derive(Default)]
pub struct Scratch {
    arena: Option<Buffer>,
    pub used: usize,
    peak: usize,
    spilled: Vec<Buffer>,
}

impl Scratch {
    pub fn take(&mut self, l: &dyn Launch, bytes: usize) -> Result<u64> {
        let b = bytes.max(1).div_ceil(256) * 256;
        self.used += b;
        self.peak = self.peak.max(self.used);
        if let Some(a) = self.arena.as_ref().filter(|a| self.used <= a.bytes()) {
            return Ok(a.ptr() + (self.used - b) as u64);
        }
        let buf = l.alloc(b)?;
        let p = buf.ptr();
        self.spilled.push(buf);
        Ok(p)
    }

    /// Starts a step (the last one's work is finished: its logits were copied back).
    pub fn reset(&mut self, l: &dyn Launch) -> Result<()> {
        if !self.spilled.is_empty() {
            self.spilled.clear();
            self.arena = None;
            self.arena = Some(l.alloc(self.peak)?);
        }
        self.used = 0;
        self.peak = 0;
        Ok(())
    }
}

/// One step's batch on the device, and the tools its layers use.
pub struct Step<'a> {
    pub l: &'a dyn Launch,
    pub scratch: &'a RefCell<Scratch>,
    /// Tokens in the step.
    pub n: usize,
    /// Per token: position, cache slot (block · block_tokens + row), sequence, context length.
    pub positions: u64,
    pub slots: u64,
    pub token_seq: u64,
    pub ctx_lens: u64,
    /// `[sequences][max_blocks]` block ids.
    pub block_tables: u64,
    pub max_blocks: usize,
    pub max_ctx: usize,
    pub cache: PagedCache,
    /// RoPE's `[max_pos][dim/2]` cos then sin, and max_pos.
    pub rope_table: u64,
    pub max_pos: usize,
}

impl Step<'_> {
    /// `bytes` of this step's scratch memory.
    pub fn tmp(&self, bytes: usize) -> Result<u64> {
        self.scratch.borrow_mut().take(self.l, bytes)
    }

    /// `v` copied into this step's scratch memory.
    pub fn put<T: Pod>(&self, v: &[T]) -> Result<u64> {
        let p = self.tmp(std::mem::size_of_val(v))?;
        self.l.upload_bytes(p, as_bytes(v))?;
        Ok(p)
    }

    /// Rotates `dim` values at `offset` of each of `heads` heads of every token's row.
    pub fn rope(&self, x: u64, s: RopeSlice) -> Result<()> {
        Ok(ops::rope(
            self.l,
            x,
            self.rope_table,
            self.max_pos,
            self.positions,
            self.n,
            s,
        )?)
    }

    /// `C = x · Wᵀ` for `rows` rows of `x` (f32), into `out` (f32); bf16 weights meet a bf16
    /// copy of x.
    pub fn linear(
        &self,
        w: &Weight,
        x: u64,
        rows: usize,
        out: u64,
        accumulate: bool,
    ) -> Result<()> {
        let g = Gemm {
            accumulate,
            ..Gemm::linear(rows, w.rows, w.cols, w.dtype)
        };
        self.product(g, x, rows * w.cols, &w.buf, out)
    }

    /// A strided batched product whose B operand is the weight `b`; A (f32 on the device,
    /// `a_len` values) is converted to bf16 first when `b` is.
    pub fn batched(&self, g: Gemm, a: u64, a_len: usize, b: &Weight, c: u64) -> Result<()> {
        self.product(
            Gemm {
                dtype: b.dtype,
                ..g
            },
            a,
            a_len,
            &b.buf,
            c,
        )
    }

    fn product(&self, g: Gemm, a: u64, a_len: usize, b: &Buffer, c: u64) -> Result<()> {
        match g.dtype {
            Dtype::F32 => self.l.gemm(&g, a, b.ptr(), c)?,
            Dtype::Bf16 => {
                let ab = self.tmp(a_len * 2)?;
                ops::f32_to_bf16(self.l, a, ab, a_len)?;
                self.l.gemm(&g, ab, b.ptr(), c)?;
            }
        }
        Ok(())
    }
}
