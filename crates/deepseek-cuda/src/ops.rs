//! Launch code for every kernel: grid and block sizes, argument order, and the checks that keep
//! a launch inside the kernel's limits. One code for the GPU and the CPU emulation
//! ([`crate::launch::Launch`]). Addresses are `u64` ([`crate::Buffer::ptr`]); sizes are counts of
//! elements.

use crate::error::CudaError;
pub use crate::launch::Dtype;
use crate::launch::{Args, Launch};

type Result<T> = std::result::Result<T, CudaError>;

fn run(
    l: &dyn Launch,
    kernel: &'static str,
    grid: (usize, usize, usize),
    block: u32,
    mut args: Args,
) -> Result<()> {
    let dims = (grid.0 as u32, grid.1 as u32, grid.2 as u32);
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(()); // nothing to do
    }
    if grid.0 > u32::MAX as usize || grid.1 > 65535 || grid.2 > 65535 {
        return Err(CudaError::Unsupported(format!(
            "{kernel}: a grid of {grid:?} blocks is beyond CUDA's limits"
        )));
    }
    l.launch(kernel, dims, (block, 1, 1), &mut args.pointers())
}

/// Blocks for a grid-stride loop over `n` values, 256 threads each.
fn stride_blocks(n: usize) -> usize {
    n.div_ceil(256).clamp(1, 4096)
}

fn need(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Unsupported(what()))
    }
}

/// RMSNorm of the first `cols` values of `rows` rows (`x_stride`, `out_stride` apart).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm(
    l: &dyn Launch,
    x: u64,
    weight: u64,
    out: u64,
    rows: usize,
    cols: usize,
    x_stride: usize,
    out_stride: usize,
    eps: f32,
) -> Result<()> {
    let args = Args::new()
        .ptr(x)
        .ptr(weight)
        .ptr(out)
        .arg(cols as i32)
        .arg(x_stride as i32)
        .arg(out_stride as i32)
        .arg(eps);
    run(l, "rms_norm_f32", (rows, 1, 1), 256, args)
}

/// `a += b` over `n` values.
pub fn add(l: &dyn Launch, a: u64, b: u64, n: usize) -> Result<()> {
    let args = Args::new().ptr(a).ptr(b).arg(n as i64);
    run(l, "add_f32", (stride_blocks(n), 1, 1), 256, args)
}

/// `out[r] = silu(gate[r]) * up[r]` from `rows` rows of `[gate | up]` (`2 * cols` values).
pub fn silu_mul(l: &dyn Launch, gate_up: u64, out: u64, cols: usize, rows: usize) -> Result<()> {
    let args = Args::new()
        .ptr(gate_up)
        .ptr(out)
        .arg(cols as i32)
        .arg(rows as i64);
    run(
        l,
        "silu_mul_f32",
        (stride_blocks(rows * cols), 1, 1),
        256,
        args,
    )
}

/// `out[t] = table[ids[t]]` as f32.
pub fn embed_rows(
    l: &dyn Launch,
    table: u64,
    dtype: Dtype,
    ids: u64,
    out: u64,
    tokens: usize,
    cols: usize,
) -> Result<()> {
    let kernel = match dtype {
        Dtype::F32 => "embed_rows_f32",
        Dtype::Bf16 => "embed_rows_bf16",
    };
    let args = Args::new().ptr(table).ptr(ids).ptr(out).arg(cols as i32);
    run(l, kernel, (tokens, 1, 1), 256, args)
}

/// `n` f32 values rounded to bf16 (nearest even).
pub fn f32_to_bf16(l: &dyn Launch, x: u64, out: u64, n: usize) -> Result<()> {
    let args = Args::new().ptr(x).ptr(out).arg(n as i64);
    run(l, "f32_to_bf16_rows", (stride_blocks(n), 1, 1), 256, args)
}

/// Copies `cols` values of each of `rows` rows, `src_stride` and `dst_stride` apart.
pub fn copy_rows(
    l: &dyn Launch,
    src: u64,
    dst: u64,
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst_stride: usize,
) -> Result<()> {
    let args = Args::new()
        .ptr(src)
        .ptr(dst)
        .arg(rows as i64)
        .arg(cols as i32)
        .arg(src_stride as i32)
        .arg(dst_stride as i32);
    run(
        l,
        "copy_rows_f32",
        (stride_blocks(rows * cols), 1, 1),
        256,
        args,
    )
}

/// Where RoPE applies inside each token's row of heads, and how it pairs dimensions.
#[derive(Clone, Copy, Debug)]
pub struct RopeSlice {
    pub heads: usize,
    /// Values from one token's row to the next.
    pub token_stride: usize,
    /// Values from one head to the next within a token's row.
    pub head_stride: usize,
    /// Where the rotated part starts within a head.
    pub offset: usize,
    /// Rotated values per head (even).
    pub dim: usize,
    /// DeepSeek's pairs (2i, 2i+1), else Llama's (i, i + dim/2).
    pub interleaved: bool,
}

/// Rotates `x` in place at each token's position. `table`: `[max_pos][dim/2]` cos then
/// `[max_pos][dim/2]` sin, as the CPU's `Rope::cos_sin` computes them.
pub fn rope(
    l: &dyn Launch,
    x: u64,
    table: u64,
    max_pos: usize,
    positions: u64,
    tokens: usize,
    s: RopeSlice,
) -> Result<()> {
    need(s.dim.is_multiple_of(2) && s.dim / 2 <= 1024, || {
        format!(
            "rope: {} rotated values per head (even, at most 2048)",
            s.dim
        )
    })?;
    let args = Args::new()
        .ptr(x)
        .ptr(table)
        .ptr(positions)
        .arg(s.heads as i32)
        .arg(s.token_stride as i64)
        .arg(s.head_stride as i32)
        .arg(s.offset as i32)
        .arg(s.dim as i32)
        .arg(max_pos as i32)
        .arg(s.interleaved as i32);
    let block = (s.dim / 2).div_ceil(32) * 32;
    run(l, "rope_f32", (tokens * s.heads, 1, 1), block as u32, args)
}

/// The router's rule (see `kernels/router.cu`), from a model's MoE configuration.
#[derive(Clone, Copy, Debug)]
pub struct RouterRule {
    pub n_experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub sigmoid: bool,
    pub method: TopkMethod,
    pub normalize: bool,
    pub scale: bool,
    pub scaling: f32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    Greedy = 0,
    GroupLimitedGreedy = 1,
    NoauxTc = 2,
}

/// Routes `tokens` rows of router logits: `ids`/`weights` get `top_k` entries per token.
/// `bias`: V3's `e_score_correction_bias`, or 0.
pub fn route_topk(
    l: &dyn Launch,
    logits: u64,
    bias: u64,
    ids: u64,
    weights: u64,
    tokens: usize,
    r: &RouterRule,
) -> Result<()> {
    need(r.n_experts <= 256 && r.n_group <= 64, || {
        format!(
            "router: {} experts in {} groups (the GPU router takes at most 256 in 64)",
            r.n_experts, r.n_group
        )
    })?;
    need(
        r.top_k >= 1
            && r.top_k <= r.n_experts
            && r.n_group >= 1
            && r.n_experts.is_multiple_of(r.n_group)
            && r.topk_group <= r.n_group,
        || format!("router: inconsistent rule {r:?}"),
    )?;
    let args = Args::new()
        .ptr(logits)
        .ptr(bias)
        .ptr(ids)
        .ptr(weights)
        .arg(tokens as i32)
        .arg(r.n_experts as i32)
        .arg(r.top_k as i32)
        .arg(r.n_group as i32)
        .arg(r.topk_group as i32)
        .arg(r.sigmoid as i32)
        .arg(r.method as i32)
        .arg(r.normalize as i32)
        .arg(r.scale as i32)
        .arg(r.scaling);
    run(l, "route_topk", (tokens.div_ceil(64), 1, 1), 64, args)
}

/// `out[s] = W[ids[s]] · x(s)` for `slots` slots: weights `[experts][rows][cols]` of `dtype`,
/// x per slot (`x_per_slot`) or per token (slot / top_k). `ids` 0: a dense GEMV with expert 0.
#[allow(clippy::too_many_arguments)]
pub fn moe_gemv(
    l: &dyn Launch,
    w: u64,
    dtype: Dtype,
    x: u64,
    ids: u64,
    out: u64,
    slots: usize,
    rows: usize,
    cols: usize,
    top_k: usize,
    x_per_slot: bool,
) -> Result<()> {
    let args = Args::new()
        .ptr(w)
        .ptr(x)
        .ptr(ids)
        .ptr(out)
        .arg(rows as i32)
        .arg(cols as i32)
        .arg(top_k as i32)
        .arg(x_per_slot as i32);
    let kernel = match dtype {
        Dtype::F32 => "moe_gemv_f32",
        Dtype::Bf16 => "moe_gemv_bf16",
    };
    run(l, kernel, (rows.div_ceil(8), slots, 1), 256, args)
}

/// `out[t] (+)= Σ_k weights[t, k] · y[t·top_k + k]`.
#[allow(clippy::too_many_arguments)]
pub fn moe_combine(
    l: &dyn Launch,
    y: u64,
    weights: u64,
    out: u64,
    cols: usize,
    tokens: usize,
    top_k: usize,
    accumulate: bool,
) -> Result<()> {
    let args = Args::new()
        .ptr(y)
        .ptr(weights)
        .ptr(out)
        .arg(cols as i32)
        .arg(tokens as i32)
        .arg(top_k as i32)
        .arg(accumulate as i32);
    run(
        l,
        "moe_combine_f32",
        (stride_blocks(tokens * cols), 1, 1),
        256,
        args,
    )
}

/// `out[r]` = index of the largest value of row r (lowest among equals).
pub fn argmax_rows(l: &dyn Launch, x: u64, out: u64, rows: usize, cols: usize) -> Result<()> {
    let args = Args::new().ptr(x).ptr(out).arg(cols as i32);
    run(l, "argmax_rows", (rows, 1, 1), 256, args)
}

/// The paged latent cache on the device, laid out as the CPU's `BlockPool`: block `b` holds
/// `block_tokens` rows of `row_w` f32 values for each layer in turn.
#[derive(Clone, Copy, Debug)]
pub struct PagedCache {
    pub ptr: u64,
    pub row_w: usize,
    pub block_tokens: usize,
    pub layers: usize,
}

impl PagedCache {
    pub fn block_stride(&self) -> usize {
        self.layers * self.layer_len()
    }

    pub fn layer_len(&self) -> usize {
        self.block_tokens * self.row_w
    }
}

/// Writes `tokens` rows (`row_w` each) into layer `layer` at `slots[t]` (block · block_tokens +
/// position in block).
pub fn cache_append(
    l: &dyn Launch,
    rows: u64,
    cache: &PagedCache,
    layer: usize,
    slots: u64,
    tokens: usize,
) -> Result<()> {
    let args = Args::new()
        .ptr(rows)
        .ptr(cache.ptr)
        .ptr(slots)
        .arg(cache.row_w as i32)
        .arg(cache.block_tokens as i32)
        .arg(cache.block_stride() as i64)
        .arg((layer * cache.layer_len()) as i64);
    run(l, "cache_append_rows", (tokens, 1, 1), 128, args)
}

/// Where a cached row's keys and values lie, and the query heads that read them (the CPU's
/// `RowLayout`, per KV head): KV head j's key is `row[key_offset + j·kv_stride ..][..key_len]`,
/// its value `row[value_offset + j·kv_stride ..][..value_len]`; `group` query heads per KV head.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    pub kv_heads: usize,
    pub group: usize,
    pub key_offset: usize,
    pub key_len: usize,
    pub value_offset: usize,
    pub value_len: usize,
    pub kv_stride: usize,
    pub scale: f32,
    /// Context rows per split (a multiple of 8); [`AttentionShape::split_len`] picks one.
    pub split_len: usize,
}

impl AttentionShape {
    /// Absorbed MLA: one KV head whose key is the whole row `[c_kv | k_pe]` and whose value is
    /// the latent `c_kv` (`lora` values), read by every query head.
    pub fn mla(heads: usize, lora: usize, rope: usize, scale: f32) -> AttentionShape {
        AttentionShape {
            kv_heads: 1,
            group: heads,
            key_offset: 0,
            key_len: lora + rope,
            value_offset: 0,
            value_len: lora,
            kv_stride: 0,
            scale,
            split_len: 64,
        }
    }

    /// Llama's rows `[K | V]`: `kv_heads` heads of `head_dim`, `group` query heads each.
    pub fn llama(kv_heads: usize, group: usize, head_dim: usize, scale: f32) -> AttentionShape {
        AttentionShape {
            kv_heads,
            group,
            key_offset: 0,
            key_len: head_dim,
            value_offset: kv_heads * head_dim,
            value_len: head_dim,
            kv_stride: head_dim,
            scale,
            split_len: 64,
        }
    }

    pub fn heads(&self) -> usize {
        self.kv_heads * self.group
    }

    /// Blocks along the heads: a block takes 8 query heads of one KV head.
    fn head_blocks(&self) -> usize {
        self.kv_heads * self.group.div_ceil(8)
    }

    /// A split length giving about `target_blocks` blocks for `tokens` tokens of at most
    /// `max_ctx` rows (2 per multiprocessor fill a GPU).
    pub fn split_len(&self, tokens: usize, max_ctx: usize, target_blocks: usize) -> usize {
        let per_split = tokens.max(1) * self.head_blocks();
        let splits = target_blocks.div_ceil(per_split).max(1);
        max_ctx.div_ceil(splits).max(64).div_ceil(8) * 8
    }

    pub fn splits(&self, max_ctx: usize) -> usize {
        max_ctx.div_ceil(self.split_len).max(1)
    }

    /// f32 values of scratch [`paged_attention`] needs.
    pub fn workspace_len(&self, tokens: usize, max_ctx: usize) -> usize {
        tokens * self.heads() * self.splits(max_ctx) * (self.value_len + 1)
    }
}

/// Attention of `tokens` query tokens over their sequences' cached rows. `q`:
/// `[tokens][heads][key_len]`; token t belongs to sequence `token_seq[t]`, whose cache blocks
/// are row `token_seq[t]` of `block_tables` (`max_blocks` wide), and attends to its first
/// `ctx_lens[t]` rows (at most `max_ctx`). Writes `out`: `[tokens][heads][value_len]`.
/// `workspace` holds [`AttentionShape::workspace_len`] f32s.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    l: &dyn Launch,
    a: &AttentionShape,
    q: u64,
    cache: &PagedCache,
    layer: usize,
    block_tables: u64,
    max_blocks: usize,
    token_seq: u64,
    ctx_lens: u64,
    tokens: usize,
    max_ctx: usize,
    workspace: u64,
    out: u64,
) -> Result<()> {
    let value_in_key =
        a.value_offset >= a.key_offset && a.value_offset + a.value_len <= a.key_offset + a.key_len;
    let tile_w = if value_in_key {
        a.key_len
    } else {
        a.key_len + a.value_len
    };
    need(
        tile_w <= 640 && a.value_len <= 576 && a.key_len > 0 && a.value_len > 0,
        || {
            format!(
            "attention: keys of {} and values of {} values (the kernel takes keys up to 640, values up to 576, together up to 640 when apart)",
            a.key_len, a.value_len
        )
        },
    )?;
    let last = a.kv_heads.saturating_sub(1) * a.kv_stride;
    need(
        a.key_offset + last + a.key_len <= cache.row_w
            && a.value_offset + last + a.value_len <= cache.row_w,
        || format!("attention: {a:?} reaches past rows of {}", cache.row_w),
    )?;
    need(a.split_len.is_multiple_of(8) && a.split_len > 0, || {
        format!("attention: split length {} (a multiple of 8)", a.split_len)
    })?;
    let splits = a.splits(max_ctx);
    let heads = a.heads();
    let part_out = workspace;
    let part_lse = workspace + (tokens * heads * splits * a.value_len * 4) as u64;
    let args = Args::new()
        .ptr(q)
        .ptr(cache.ptr)
        .ptr(block_tables)
        .ptr(token_seq)
        .ptr(ctx_lens)
        .ptr(part_out)
        .ptr(part_lse)
        .arg(a.group as i32)
        .arg(a.kv_heads as i32)
        .arg(cache.row_w as i32)
        .arg(a.key_offset as i32)
        .arg(a.key_len as i32)
        .arg(a.value_offset as i32)
        .arg(a.value_len as i32)
        .arg(a.kv_stride as i32)
        .arg(max_blocks as i32)
        .arg(cache.block_tokens as i32)
        .arg(cache.block_stride() as i64)
        .arg((layer * cache.layer_len()) as i64)
        .arg(a.split_len as i32)
        .arg(splits as i32)
        .arg(a.scale);
    run(
        l,
        "attention_partial",
        (tokens, a.head_blocks(), splits),
        256,
        args,
    )?;
    let args = Args::new()
        .ptr(part_out)
        .ptr(part_lse)
        .ptr(out)
        .arg(a.value_len as i32)
        .arg(splits as i32);
    run(l, "attention_combine", (tokens * heads, 1, 1), 128, args)
}
