//! The decoder stack on a GPU (or on the CPU emulation of its kernels): the layers of a loaded
//! [`Model`] uploaded once, each step's compute a sequence of kernel launches and cuBLAS
//! products from `deepseek-cuda`.
//!
//! The math is the CPU model's, step for step: RMSNorm → attention ([`attention`]: MLA with the
//! latent + RoPE key appended to the paged cache and absorbed attention, or Llama's K/V rows) →
//! residual → RMSNorm → dense SwiGLU MLP or DeepSeekMoE ([`ffn`]) → residual. Attention is always
//! the cached kind (prefill too: each new token attends to the rows before it, a causal mask by
//! context length). [`step`] holds what a step's layers share, [`weights`] how weights are kept.
//!
//! Weights: [`GpuPrecision::Exact`] keeps f32 on the device (parity with the reference, 4 bytes
//! a weight); [`GpuPrecision::Bf16`] stores every non-f32 checkpoint weight as bf16 and rounds
//! activations to bf16 before each product, as PyTorch's bf16 inference does.

mod attention;
mod error;
mod ffn;
mod step;
mod weights;

use std::cell::RefCell;

use deepseek_cuda::launch::{download_at, upload, Buffer, Dtype, Launch};
use deepseek_cuda::ops::{self, PagedCache};
use deepseek_loader::{AttentionKind, ModelConfig};

use crate::model::{LogitsFor, Model};
use attention::GpuAttention;
pub use error::{GpuModelError, Result, BLOCK_TOKENS};
use ffn::GpuFfn;
use step::{Scratch, Step};
pub use weights::GpuPrecision;
use weights::Weight;

struct GpuLayer {
    input_norm: Buffer,
    post_norm: Buffer,
    attn: GpuAttention,
    ffn: GpuFfn,
}

/// A sequence's cache on the device: its blocks and how many rows are filled.
#[derive(Debug, Default)]
pub struct GpuSequence {
    blocks: Vec<i32>,
    len: usize,
}

impl GpuSequence {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

pub struct GpuModel {
    l: Box<dyn Launch>,
    cfg: ModelConfig,
    precision: GpuPrecision,
    embed: Weight,
    norm: Buffer,
    lm_head: Weight,
    layers: Vec<GpuLayer>,
    /// `[max_pos][rope/2]` cos, then sin: the CPU's `Rope::cos_sin` for every position.
    rope_table: Buffer,
    /// Owns the memory `cache_layout` points into.
    _cache: Buffer,
    cache_layout: PagedCache,
    free_blocks: Vec<i32>,
    scratch: RefCell<Scratch>,
    /// Bytes of weights one decode token reads, as the device stores them.
    active_bytes: usize,
}

impl GpuModel {
    /// Uploads `model` to `l` with room for `cache_blocks` blocks of [`BLOCK_TOKENS`] rows.
    pub fn upload(
        model: &Model,
        l: Box<dyn Launch>,
        precision: GpuPrecision,
        cache_blocks: usize,
    ) -> Result<GpuModel> {
        let cfg = model.config.clone();
        let lx = l.as_ref();
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            layers.push(GpuLayer {
                input_norm: upload(lx, &layer.input_layernorm)?,
                post_norm: upload(lx, &layer.post_attention_layernorm)?,
                attn: GpuAttention::new(lx, &layer.self_attn, precision)?,
                ffn: GpuFfn::new(lx, &layer.mlp, precision)?,
            });
        }
        // What a cached row holds and how wide RoPE is, by attention kind.
        let (row_w, rope_dim) = match &cfg.attention {
            AttentionKind::Mla(m) => (m.kv_lora_rank + m.qk_rope_head_dim, m.qk_rope_head_dim),
            AttentionKind::Gqa => (2 * cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim),
        };
        let half = rope_dim / 2;
        let max_pos = cfg.max_position_embeddings;
        let (mut cos, mut sin) = (vec![0.0; max_pos * half], vec![0.0; max_pos * half]);
        for p in 0..max_pos {
            let r = p * half..(p + 1) * half;
            model.rope().cos_sin(p, &mut cos[r.clone()], &mut sin[r]);
        }
        cos.extend_from_slice(&sin);
        let layout = PagedCache {
            ptr: 0,
            row_w,
            block_tokens: BLOCK_TOKENS,
            layers: layers.len(),
        };
        let cache = lx.alloc(cache_blocks * layout.block_stride() * 4)?;
        let mut active = 0.0;
        model.for_each_weight(&mut |m, share| {
            let bytes = weights::device_dtype(m.dtype(), precision).bytes();
            active += (m.rows * m.cols * bytes) as f64 * share;
        });
        Ok(GpuModel {
            embed: Weight::new(lx, &model.embed_tokens, precision)?,
            norm: upload(lx, &model.norm)?,
            lm_head: Weight::new(lx, &model.lm_head, precision)?,
            rope_table: upload(lx, &cos)?,
            cache_layout: PagedCache {
                ptr: cache.ptr(),
                ..layout
            },
            _cache: cache,
            free_blocks: (0..cache_blocks as i32).rev().collect(),
            scratch: RefCell::default(),
            active_bytes: active as usize,
            layers,
            cfg,
            precision,
            l,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    pub fn precision(&self) -> GpuPrecision {
        self.precision
    }

    /// Bytes of weights one decode token reads (embedding row excluded), as stored on the
    /// device: the yardstick for decode's share of memory bandwidth.
    pub fn active_weight_bytes(&self) -> usize {
        self.active_bytes
    }

    /// Gives the sequence's blocks back to the pool.
    pub fn release(&mut self, s: &mut GpuSequence) {
        self.free_blocks.append(&mut s.blocks);
        s.len = 0;
    }

    /// One step over several sequences: each brings its new tokens, whose latent rows are
    /// appended to its cache. Returns logits (`[tokens or sequences][vocab]`, as `logits_for`).
    pub fn forward(
        &mut self,
        steps: &mut [(&mut GpuSequence, &[u32])],
        logits_for: LogitsFor,
    ) -> Result<Vec<f32>> {
        let (vocab, max_pos) = (self.cfg.vocab_size, self.cfg.max_position_embeddings);
        // Host-side bookkeeping: positions, cache slots, block tables.
        let mut need = 0;
        for (s, toks) in steps.iter() {
            if let Some(&id) = toks.iter().find(|&&t| t as usize >= vocab) {
                return Err(GpuModelError::TokenOutOfRange { id, vocab });
            }
            let end = s.len + toks.len();
            if end > max_pos {
                return Err(GpuModelError::ContextExceeded {
                    pos: end - 1,
                    max: max_pos,
                });
            }
            need += end.div_ceil(BLOCK_TOKENS).saturating_sub(s.blocks.len());
        }
        if need > self.free_blocks.len() {
            return Err(GpuModelError::OutOfBlocks {
                needed: need,
                free: self.free_blocks.len(),
            });
        }
        let (mut ids, mut positions, mut slots, mut token_seq, mut ctx_lens, mut last) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (si, (s, toks)) in steps.iter_mut().enumerate() {
            while s.blocks.len() < (s.len + toks.len()).div_ceil(BLOCK_TOKENS) {
                s.blocks
                    .push(self.free_blocks.pop().expect("counted above"));
            }
            for (i, &t) in toks.iter().enumerate() {
                let pos = s.len + i;
                ids.push(t as i32);
                positions.push(pos as i32);
                slots.push(
                    s.blocks[pos / BLOCK_TOKENS] * BLOCK_TOKENS as i32
                        + (pos % BLOCK_TOKENS) as i32,
                );
                token_seq.push(si as i32);
                ctx_lens.push(pos as i32 + 1);
            }
            if !toks.is_empty() {
                last.push(ids.len() as i32 - 1);
            }
        }
        let n = ids.len();
        if n == 0 {
            return Ok(vec![]);
        }
        let max_blocks = steps.iter().map(|(s, _)| s.blocks.len()).max().unwrap_or(1);
        let mut tables = vec![0i32; steps.len() * max_blocks];
        for (si, (s, _)) in steps.iter().enumerate() {
            tables[si * max_blocks..si * max_blocks + s.blocks.len()].copy_from_slice(&s.blocks);
        }
        let max_ctx = *ctx_lens.iter().max().expect("n > 0") as usize;
        let l = self.l.as_ref();
        self.scratch.borrow_mut().reset(l)?;
        let st = Step {
            l,
            scratch: &self.scratch,
            n,
            positions: 0,
            slots: 0,
            token_seq: 0,
            ctx_lens: 0,
            block_tables: 0,
            max_blocks,
            max_ctx,
            cache: self.cache_layout,
            rope_table: self.rope_table.ptr(),
            max_pos: self.cfg.max_position_embeddings,
        };
        let st = Step {
            positions: st.put(&positions)?,
            slots: st.put(&slots)?,
            token_seq: st.put(&token_seq)?,
            ctx_lens: st.put(&ctx_lens)?,
            block_tables: st.put(&tables)?,
            ..st
        };
        let logits = self.run(&st, &ids, &last, logits_for)?;
        for (s, toks) in steps.iter_mut() {
            s.len += toks.len();
        }
        Ok(logits)
    }

    /// The layers over the step's tokens, then the logits asked for.
    fn run(&self, st: &Step, ids: &[i32], last: &[i32], logits_for: LogitsFor) -> Result<Vec<f32>> {
        let (l, n) = (st.l, st.n);
        let (hidden, eps) = (self.cfg.hidden_size, self.cfg.rms_norm_eps);
        let x = st.tmp(n * hidden * 4)?;
        let e = &self.embed;
        // Host copies synchronise the stream: all of them before the first launch.
        let ids = st.put(ids)?;
        let last_rows = st.put(last)?;
        ops::embed_rows(l, e.buf.ptr(), e.dtype, ids, x, n, hidden)?;
        let h = st.tmp(n * hidden * 4)?;
        for (li, layer) in self.layers.iter().enumerate() {
            // The layer's own temporaries are given back at its end.
            let mark = self.scratch.borrow().used;
            ops::rms_norm(
                l,
                x,
                layer.input_norm.ptr(),
                h,
                n,
                hidden,
                hidden,
                hidden,
                eps,
            )?;
            layer.attn.forward(st, li, h, x)?;
            ops::rms_norm(
                l,
                x,
                layer.post_norm.ptr(),
                h,
                n,
                hidden,
                hidden,
                hidden,
                eps,
            )?;
            layer.ffn.forward(st, h, hidden, x)?;
            self.scratch.borrow_mut().used = mark;
        }
        let rows = match logits_for {
            LogitsFor::AllTokens => n,
            LogitsFor::LastToken => last.len(),
        };
        let normed = st.tmp(rows * hidden * 4)?;
        match logits_for {
            LogitsFor::AllTokens => ops::rms_norm(
                l,
                x,
                self.norm.ptr(),
                normed,
                n,
                hidden,
                hidden,
                hidden,
                eps,
            )?,
            LogitsFor::LastToken => {
                // Gather the last rows (an embedding lookup into x), then normalise them.
                let gathered = st.tmp(rows * hidden * 4)?;
                ops::embed_rows(l, x, Dtype::F32, last_rows, gathered, rows, hidden)?;
                ops::rms_norm(
                    l,
                    gathered,
                    self.norm.ptr(),
                    normed,
                    rows,
                    hidden,
                    hidden,
                    hidden,
                    eps,
                )?;
            }
        }
        let vocab = self.cfg.vocab_size;
        let logits = st.tmp(rows * vocab * 4)?;
        st.linear(&self.lm_head, normed, rows, logits, false)?;
        Ok(download_at(l, logits, rows * vocab)?)
    }
}
