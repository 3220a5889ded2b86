//! The DeepSeek-V2/V3 decoder stack on a GPU (or on the CPU emulation of its kernels): the
//! layers of a loaded [`Model`] uploaded once, each step's compute a sequence of kernel launches
//! and cuBLAS products from `deepseek-cuda`.
//!
//! The math is the CPU model's (mla.rs, router.rs, moe.rs), step for step: RMSNorm → MLA (query,
//! latent + RoPE key appended to the paged cache, absorbed attention, W_UV, o_proj) → residual →
//! RMSNorm → dense SwiGLU MLP or DeepSeekMoE (router on the GPU, each token's experts read by id,
//! shared experts) → residual. Attention is always absorbed (prefill too: each new token attends
//! to the rows before it, a causal mask by context length). Llama-architecture models (DeepSeek
//! LLM) are not supported here yet.
//!
//! Weights: [`GpuPrecision::Exact`] keeps f32 on the device (parity with the reference, 4 bytes
//! a weight); [`GpuPrecision::Bf16`] stores every non-f32 checkpoint weight as bf16 and rounds
//! activations to bf16 before each product, as PyTorch's bf16 inference does.

use std::cell::RefCell;

use deepseek_cuda::launch::{as_bytes, download_at, upload, Buffer, Dtype, Gemm, Launch, Pod};
use deepseek_cuda::ops::{
    self, MlaDecode, PagedCache, RopeSlice, RouterRule, TopkMethod as GpuTopk,
};
use deepseek_cuda::CudaError;
use deepseek_kernels::{DType, Matrix};
use deepseek_loader::{AttentionKind, MlaConfig, ModelConfig, ScoringFunc, TopkMethod};

use crate::layer::{Attention, FeedForward};
use crate::mla::{QueryProjection, LATENT_NORM_EPS};
use crate::mlp::Mlp;
use crate::model::{LogitsFor, Model};
use crate::moe::Moe;

/// Rows per cache block, as the CPU's pool.
const BLOCK_TOKENS: usize = deepseek_cache::BLOCK_TOKENS;

/// How weights are held on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPrecision {
    /// f32 weights and activations throughout (the parity tests' mode).
    Exact,
    /// bf16 weights (f32 checkpoint tensors stay f32) and bf16-rounded activations into them.
    Bf16,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error("the GPU path does not run this model yet: {0}")]
    Unsupported(String),
    #[error("token id {id} is out of range: the vocabulary has {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "position {pos} is beyond the model's context of {max} tokens (max_position_embeddings)"
    )]
    ContextExceeded { pos: usize, max: usize },
    #[error(
        "the GPU cache is full: {needed} more blocks of {BLOCK_TOKENS} tokens needed, {free} free"
    )]
    OutOfBlocks { needed: usize, free: usize },
}

type Result<T> = std::result::Result<T, GpuModelError>;

/// A weight matrix `[rows][cols]` on the device.
struct Weight {
    buf: Buffer,
    dtype: Dtype,
    rows: usize,
    cols: usize,
}

/// How a checkpoint tensor of `dtype` is stored under `p`.
fn device_dtype(dtype: DType, p: GpuPrecision) -> Dtype {
    match (p, dtype) {
        (GpuPrecision::Exact, _) | (_, DType::F32) => Dtype::F32,
        _ => Dtype::Bf16,
    }
}

/// Uploads `values` (f32) as `dtype`.
fn upload_as(l: &dyn Launch, values: &[f32], dtype: Dtype) -> Result<Buffer> {
    Ok(match dtype {
        Dtype::F32 => upload(l, values)?,
        Dtype::Bf16 => {
            let v: Vec<u16> = values
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            upload(l, &v)?
        }
    })
}

impl Weight {
    fn new(l: &dyn Launch, m: &Matrix, p: GpuPrecision) -> Result<Weight> {
        Self::stacked(l, &[m], p)
    }

    /// Matrices of equal width one after another (gate and up as one `[2I][H]` product, or
    /// every expert's `[E][rows][cols]`).
    fn stacked(l: &dyn Launch, ms: &[&Matrix], p: GpuPrecision) -> Result<Weight> {
        let cols = ms[0].cols;
        if ms.iter().any(|m| m.cols != cols) {
            return Err(GpuModelError::Unsupported(
                "stacked matrices of unequal widths".into(),
            ));
        }
        let dtype = device_dtype(ms[0].dtype(), p);
        let values: Vec<f32> = ms.iter().flat_map(|m| m.to_f32()).collect();
        Ok(Weight {
            buf: upload_as(l, &values, dtype)?,
            dtype,
            rows: ms.iter().map(|m| m.rows).sum(),
            cols,
        })
    }
}

struct GpuMlp {
    /// gate_proj rows, then up_proj rows.
    gate_up: Weight,
    down: Weight,
}

impl GpuMlp {
    fn new(l: &dyn Launch, m: &Mlp, p: GpuPrecision) -> Result<GpuMlp> {
        Ok(GpuMlp {
            gate_up: Weight::stacked(l, &[&m.gate_proj, &m.up_proj], p)?,
            down: Weight::new(l, &m.down_proj, p)?,
        })
    }
}

struct GpuMoe {
    router: Weight,
    bias: Option<Buffer>,
    rule: RouterRule,
    /// Every expert's `[gate; up]`: `[E][2I][H]`.
    gate_up: Weight,
    /// Every expert's down_proj: `[E][H][I]`.
    down: Weight,
    inter: usize,
    shared: Option<GpuMlp>,
}

impl GpuMoe {
    fn new(l: &dyn Launch, m: &Moe, p: GpuPrecision) -> Result<GpuMoe> {
        let c = &m.router.cfg;
        let experts: Vec<&Mlp> = m.experts.iter().flatten().collect();
        if experts.len() != c.n_routed_experts {
            return Err(GpuModelError::Unsupported(
                "some routed experts live on other ranks (expert parallelism)".into(),
            ));
        }
        let gate_up: Vec<&Matrix> = experts
            .iter()
            .flat_map(|e| [&e.gate_proj, &e.up_proj])
            .collect();
        let down: Vec<&Matrix> = experts.iter().map(|e| &e.down_proj).collect();
        let (normalize, scale) = m.router.weight_rule();
        let rule = RouterRule {
            n_experts: c.n_routed_experts,
            top_k: c.num_experts_per_tok,
            n_group: c.n_group.max(1),
            topk_group: c.topk_group.max(1),
            sigmoid: c.scoring_func == ScoringFunc::Sigmoid,
            method: match c.topk_method {
                TopkMethod::Greedy => GpuTopk::Greedy,
                TopkMethod::GroupLimitedGreedy => GpuTopk::GroupLimitedGreedy,
                TopkMethod::NoauxTc => GpuTopk::NoauxTc,
            },
            normalize,
            scale,
            scaling: c.routed_scaling_factor,
        };
        Ok(GpuMoe {
            // The router's product stays f32, as the reference computes it.
            router: Weight::new(l, m.router.weight(), GpuPrecision::Exact)?,
            bias: match &m.router.e_score_correction_bias {
                Some(b) if c.topk_method == TopkMethod::NoauxTc => Some(upload(l, b)?),
                _ => None,
            },
            rule,
            gate_up: Weight::stacked(l, &gate_up, p)?,
            down: Weight::stacked(l, &down, p)?,
            inter: c.moe_intermediate_size,
            shared: m
                .shared_experts
                .as_ref()
                .map(|s| GpuMlp::new(l, s, p))
                .transpose()?,
        })
    }
}

enum GpuQuery {
    Direct(Weight),
    LowRank { a: Weight, norm: Buffer, b: Weight },
}

struct GpuMla {
    q: GpuQuery,
    kv_a: Weight,
    kv_a_norm: Buffer,
    /// `[H][nope][lora]`: the key half of kv_b_proj, per head.
    w_uk: Weight,
    /// `[H][v][lora]`: the value half, per head.
    w_uv: Weight,
    o_proj: Weight,
    scale: f32,
}

#[allow(clippy::large_enum_variant)] // one per layer
enum GpuFfn {
    Dense(GpuMlp),
    Moe(GpuMoe),
}

struct GpuLayer {
    input_norm: Buffer,
    post_norm: Buffer,
    attn: GpuMla,
    ffn: GpuFfn,
}

/// Per-step scratch memory: one device buffer handed out in 256-byte-aligned pieces, reset
/// every step and given back after each layer (a device allocation per intermediate and step
/// would cost more than the kernels; the stream runs in order, so a piece is reused only by
/// work queued after its last use). A step that needs more gets separate allocations, and the
/// buffer grows to the step's peak for the next.
#[derive(Default)]
struct Scratch {
    arena: Option<Buffer>,
    used: usize,
    peak: usize,
    spilled: Vec<Buffer>,
}

impl Scratch {
    fn take(&mut self, l: &dyn Launch, bytes: usize) -> Result<u64> {
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
    fn reset(&mut self, l: &dyn Launch) -> Result<()> {
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
    mla: MlaConfig,
    heads: usize,
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
        let AttentionKind::Mla(mla) = cfg.attention.clone() else {
            return Err(GpuModelError::Unsupported(
                "Llama-architecture attention (DeepSeek LLM 7B/67B)".into(),
            ));
        };
        let heads = cfg.num_attention_heads;
        let lx = l.as_ref();
        let mut layers = Vec::with_capacity(model.layers.len());
        for layer in &model.layers {
            let Attention::Mla(a) = &layer.self_attn else {
                return Err(GpuModelError::Unsupported("a non-MLA layer".into()));
            };
            // Per head, from kv_b_proj (rebuilt at load for GGUF files) or GGUF's attn_v_b.
            let uk: Vec<&Matrix> = a.w_uk.iter().collect();
            let uv: Vec<&Matrix> = a.w_uv.iter().collect();
            let q = match &a.q {
                QueryProjection::Direct { q_proj } => {
                    GpuQuery::Direct(Weight::new(lx, q_proj, precision)?)
                }
                QueryProjection::LowRank {
                    q_a_proj,
                    q_a_layernorm,
                    q_b_proj,
                } => GpuQuery::LowRank {
                    a: Weight::new(lx, q_a_proj, precision)?,
                    norm: upload(lx, q_a_layernorm)?,
                    b: Weight::new(lx, q_b_proj, precision)?,
                },
            };
            layers.push(GpuLayer {
                input_norm: upload(lx, &layer.input_layernorm)?,
                post_norm: upload(lx, &layer.post_attention_layernorm)?,
                attn: GpuMla {
                    q,
                    kv_a: Weight::new(lx, &a.kv_a_proj_with_mqa, precision)?,
                    kv_a_norm: upload(lx, &a.kv_a_layernorm)?,
                    w_uk: Weight::stacked(lx, &uk, precision)?,
                    w_uv: Weight::stacked(lx, &uv, precision)?,
                    o_proj: Weight::new(lx, &a.o_proj, precision)?,
                    scale: a.softmax_scale,
                },
                ffn: match &layer.mlp {
                    FeedForward::Dense(m) => GpuFfn::Dense(GpuMlp::new(lx, m, precision)?),
                    FeedForward::Moe(m) => GpuFfn::Moe(GpuMoe::new(lx, m, precision)?),
                },
            });
        }
        let half = mla.qk_rope_head_dim / 2;
        let max_pos = cfg.max_position_embeddings;
        let (mut cos, mut sin) = (vec![0.0; max_pos * half], vec![0.0; max_pos * half]);
        for p in 0..max_pos {
            let r = p * half..(p + 1) * half;
            model.rope().cos_sin(p, &mut cos[r.clone()], &mut sin[r]);
        }
        cos.extend_from_slice(&sin);
        let row_w = mla.kv_lora_rank + mla.qk_rope_head_dim;
        let cache_layout = PagedCache {
            ptr: 0,
            row_w,
            block_tokens: BLOCK_TOKENS,
            layers: layers.len(),
        };
        let cache = lx.alloc(cache_blocks * cache_layout.block_stride() * 4)?;
        Ok(GpuModel {
            embed: Weight::new(lx, &model.embed_tokens, precision)?,
            norm: upload(lx, &model.norm)?,
            lm_head: Weight::new(lx, &model.lm_head, precision)?,
            rope_table: upload(lx, &cos)?,
            cache_layout: PagedCache {
                ptr: cache.ptr(),
                ..cache_layout
            },
            _cache: cache,
            free_blocks: (0..cache_blocks as i32).rev().collect(),
            scratch: RefCell::default(),
            layers,
            cfg,
            mla,
            heads,
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

    /// Gives the sequence's blocks back to the pool.
    pub fn release(&mut self, s: &mut GpuSequence) {
        self.free_blocks.append(&mut s.blocks);
        s.len = 0;
    }

    /// `bytes` of this step's scratch memory.
    fn tmp(&self, bytes: usize) -> Result<u64> {
        self.scratch.borrow_mut().take(self.l.as_ref(), bytes)
    }

    /// `v` copied into this step's scratch memory.
    fn put<T: Pod>(&self, v: &[T]) -> Result<u64> {
        let p = self.tmp(std::mem::size_of_val(v))?;
        self.l.upload_bytes(p, as_bytes(v))?;
        Ok(p)
    }

    /// `C = x · Wᵀ` for `rows` rows of `x` (f32), into `out` (f32); bf16 weights meet a bf16
    /// copy of x.
    fn linear(&self, w: &Weight, x: u64, rows: usize, out: u64, accumulate: bool) -> Result<()> {
        let l = self.l.as_ref();
        let g = Gemm {
            accumulate,
            ..Gemm::linear(rows, w.rows, w.cols, w.dtype)
        };
        match w.dtype {
            Dtype::F32 => l.gemm(&g, x, w.buf.ptr(), out)?,
            Dtype::Bf16 => {
                let xb = self.tmp(rows * w.cols * 2)?;
                ops::f32_to_bf16(l, x, xb, rows * w.cols)?;
                l.gemm(&g, xb, w.buf.ptr(), out)?;
            }
        }
        Ok(())
    }

    /// A strided batched product whose A operand (f32 on the device) is converted to the
    /// weight's type first when that is bf16 (`a_len` values from `a`).
    fn batched(&self, g: Gemm, a: u64, a_len: usize, b: &Weight, c: u64) -> Result<()> {
        let l = self.l.as_ref();
        let g = Gemm {
            dtype: b.dtype,
            ..g
        };
        match b.dtype {
            Dtype::F32 => l.gemm(&g, a, b.buf.ptr(), c)?,
            Dtype::Bf16 => {
                let ab = self.tmp(a_len * 2)?;
                ops::f32_to_bf16(l, a, ab, a_len)?;
                l.gemm(&g, ab, b.buf.ptr(), c)?;
            }
        }
        Ok(())
    }

    /// SwiGLU MLP on `n` rows of `h` into `out` (accumulating when asked).
    fn mlp(&self, m: &GpuMlp, h: u64, n: usize, out: u64, accumulate: bool) -> Result<()> {
        let l = self.l.as_ref();
        let inter = m.down.cols;
        let gu = self.tmp(n * 2 * inter * 4)?;
        self.linear(&m.gate_up, h, n, gu, false)?;
        let act = self.tmp(n * inter * 4)?;
        ops::silu_mul(l, gu, act, inter, n)?;
        self.linear(&m.down, act, n, out, accumulate)
    }

    /// DeepSeekMoE on `n` rows of `h`, into `out`.
    fn moe(&self, m: &GpuMoe, h: u64, n: usize, out: u64) -> Result<()> {
        let l = self.l.as_ref();
        let (e, k, hidden, inter) = (
            m.rule.n_experts,
            m.rule.top_k,
            self.cfg.hidden_size,
            m.inter,
        );
        let logits = self.tmp(n * e * 4)?;
        self.linear(&m.router, h, n, logits, false)?;
        let (ids, weights) = (self.tmp(n * k * 4)?, self.tmp(n * k * 4)?);
        let bias = m.bias.as_ref().map_or(0, |b| b.ptr());
        ops::route_topk(l, logits, bias, ids, weights, n, &m.rule)?;
        let slots = n * k;
        let gu = self.tmp(slots * 2 * inter * 4)?;
        ops::moe_gemv(
            l,
            m.gate_up.buf.ptr(),
            m.gate_up.dtype,
            h,
            ids,
            gu,
            slots,
            2 * inter,
            hidden,
            k,
            false,
        )?;
        let act = self.tmp(slots * inter * 4)?;
        ops::silu_mul(l, gu, act, inter, slots)?;
        let y = self.tmp(slots * hidden * 4)?;
        ops::moe_gemv(
            l,
            m.down.buf.ptr(),
            m.down.dtype,
            act,
            ids,
            y,
            slots,
            hidden,
            inter,
            k,
            true,
        )?;
        if let Some(s) = &m.shared {
            self.mlp(s, h, n, out, false)?;
        }
        ops::moe_combine(l, y, weights, out, hidden, n, k, m.shared.is_some())?;
        Ok(())
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
        self.scratch.borrow_mut().reset(self.l.as_ref())?;
        let logits = self.run(
            &ids, &positions, &slots, &token_seq, &ctx_lens, &tables, max_blocks, max_ctx, &last,
            logits_for,
        )?;
        for (s, toks) in steps.iter_mut() {
            s.len += toks.len();
        }
        Ok(logits)
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        ids: &[i32],
        positions: &[i32],
        slots: &[i32],
        token_seq: &[i32],
        ctx_lens: &[i32],
        tables: &[i32],
        max_blocks: usize,
        max_ctx: usize,
        last: &[i32],
        logits_for: LogitsFor,
    ) -> Result<Vec<f32>> {
        let l = self.l.as_ref();
        let n = ids.len();
        let (hidden, eps, heads) = (self.cfg.hidden_size, self.cfg.rms_norm_eps, self.heads);
        let m = &self.mla;
        let (nope, rdim, lora, vdim) = (
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.kv_lora_rank,
            m.v_head_dim,
        );
        let (qk, row_w) = (nope + rdim, lora + rdim);
        let ids_b = self.put(ids)?;
        let pos_b = self.put(positions)?;
        let slots_b = self.put(slots)?;
        let seq_b = self.put(token_seq)?;
        let ctx_b = self.put(ctx_lens)?;
        let tables_b = self.put(tables)?;

        let x = self.tmp(n * hidden * 4)?;
        let e = &self.embed;
        ops::embed_rows(l, e.buf.ptr(), e.dtype, ids_b, x, n, hidden)?;
        let h = self.tmp(n * hidden * 4)?;
        let o = self.tmp(n * hidden * 4)?;
        let q = self.tmp(n * heads * qk * 4)?;
        let kv = self.tmp(n * row_w * 4)?;
        let q_full = self.tmp(n * heads * row_w * 4)?;
        let latent = self.tmp(n * heads * lora * 4)?;
        let attn = self.tmp(n * heads * vdim * 4)?;
        let target_blocks = 2 * l.multiprocessors(); // two per multiprocessor fill the GPU
        let dec = MlaDecode {
            heads,
            lora,
            scale: 0.0,
            split_len: MlaDecode::split_len(heads, n, max_ctx, target_blocks),
        };
        let ws = self.tmp(dec.workspace_len(n, max_ctx) * 4)?;
        let max_pos = self.cfg.max_position_embeddings;
        for (li, layer) in self.layers.iter().enumerate() {
            // The layer's own temporaries are given back at its end.
            let mark = self.scratch.borrow().used;
            let a = &layer.attn;
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
            match &a.q {
                GpuQuery::Direct(w) => self.linear(w, h, n, q, false)?,
                GpuQuery::LowRank { a: wa, norm, b } => {
                    let qa = self.tmp(n * wa.rows * 4)?;
                    self.linear(wa, h, n, qa, false)?;
                    ops::rms_norm(
                        l,
                        qa,
                        norm.ptr(),
                        qa,
                        n,
                        wa.rows,
                        wa.rows,
                        wa.rows,
                        LATENT_NORM_EPS,
                    )?;
                    self.linear(b, qa, n, q, false)?;
                }
            }
            // Latent + RoPE key: normalised, rotated, into the cache.
            self.linear(&a.kv_a, h, n, kv, false)?;
            ops::rms_norm(
                l,
                kv,
                a.kv_a_norm.ptr(),
                kv,
                n,
                lora,
                row_w,
                row_w,
                LATENT_NORM_EPS,
            )?;
            let rope =
                |ptr: u64, heads: usize, token_stride: usize, head_stride: usize, offset: usize| {
                    let s = RopeSlice {
                        heads,
                        token_stride,
                        head_stride,
                        offset,
                        dim: rdim,
                        interleaved: true,
                    };
                    ops::rope(l, ptr, self.rope_table.ptr(), max_pos, pos_b, n, s)
                };
            rope(kv, 1, row_w, row_w, lora)?;
            rope(q, heads, heads * qk, qk, nope)?;
            ops::mla_append(l, kv, &self.cache_layout, li, slots_b, n)?;
            // Absorbed query per head: [W_UK[h]ᵀ q_nope | q_pe].
            let g = Gemm {
                m: n,
                n: lora,
                k: nope,
                dtype: Dtype::F32,
                b_transposed: false,
                lda: heads * qk,
                ldb: lora,
                ldc: heads * row_w,
                batch: heads,
                stride_a: qk,
                stride_b: nope * lora,
                stride_c: row_w,
                accumulate: false,
            };
            self.batched(g, q, n * heads * qk, &a.w_uk, q_full)?;
            ops::copy_rows(
                l,
                q + (nope * 4) as u64,
                q_full + (lora * 4) as u64,
                n * heads,
                rdim,
                qk,
                row_w,
            )?;
            let dec = MlaDecode {
                scale: a.scale,
                ..dec
            };
            ops::mla_decode(
                l,
                &dec,
                q_full,
                &self.cache_layout,
                li,
                tables_b,
                max_blocks,
                seq_b,
                ctx_b,
                n,
                max_ctx,
                ws,
                latent,
            )?;
            // Back from latent space per head: W_UV[h] · latent.
            let g = Gemm {
                m: n,
                n: vdim,
                k: lora,
                dtype: Dtype::F32,
                b_transposed: true,
                lda: heads * lora,
                ldb: lora,
                ldc: heads * vdim,
                batch: heads,
                stride_a: lora,
                stride_b: vdim * lora,
                stride_c: vdim,
                accumulate: false,
            };
            self.batched(g, latent, n * heads * lora, &a.w_uv, attn)?;
            self.linear(&a.o_proj, attn, n, x, true)?;
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
            match &layer.ffn {
                GpuFfn::Dense(mlp) => self.mlp(mlp, h, n, x, true)?,
                GpuFfn::Moe(moe) => {
                    self.moe(moe, h, n, o)?;
                    ops::add(l, x, o, n * hidden)?;
                }
            }
            self.scratch.borrow_mut().used = mark;
        }
        let rows = match logits_for {
            LogitsFor::AllTokens => n,
            LogitsFor::LastToken => last.len(),
        };
        let normed = self.tmp(rows * hidden * 4)?;
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
                let last_b = self.put(last)?;
                let gathered = self.tmp(rows * hidden * 4)?;
                ops::embed_rows(l, x, Dtype::F32, last_b, gathered, rows, hidden)?;
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
        let logits = self.tmp(rows * vocab * 4)?;
        self.linear(&self.lm_head, normed, rows, logits, false)?;
        Ok(download_at(l, logits, rows * vocab)?)
    }
}
