//! The attention half of a layer on the device: MLA (as mla.rs's absorbed path: latent + RoPE
//! key into the paged cache, `[W_UK[h]ᵀ q_nope | q_pe]` scored against cached rows, W_UV after)
//! and Llama's (as llama_attention.rs: rows `[K | V]`, query heads grouped per KV head).

use deepseek_cuda::launch::{upload, Buffer, Dtype, Gemm, Launch};
use deepseek_cuda::ops::{self, AttentionShape, RopeSlice};
use deepseek_kernels::Matrix;
use deepseek_loader::MlaConfig;

use super::error::Result;
use super::step::Step;
use super::weights::{GpuPrecision, Weight};
use crate::layer::Attention;
use crate::llama_attention::LlamaAttention;
use crate::mla::{MlaAttention, QueryProjection, LATENT_NORM_EPS};

enum GpuQuery {
    Direct(Weight),
    LowRank { a: Weight, norm: Buffer, b: Weight },
}

pub struct GpuMla {
    dims: MlaConfig,
    heads: usize,
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

impl GpuMla {
    fn new(l: &dyn Launch, a: &MlaAttention, p: GpuPrecision) -> Result<GpuMla> {
        // Per head, from kv_b_proj (rebuilt at load for GGUF files) or GGUF's attn_v_b.
        let uk: Vec<&Matrix> = a.w_uk.iter().collect();
        let uv: Vec<&Matrix> = a.w_uv.iter().collect();
        let q = match &a.q {
            QueryProjection::Direct { q_proj } => GpuQuery::Direct(Weight::new(l, q_proj, p)?),
            QueryProjection::LowRank {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => GpuQuery::LowRank {
                a: Weight::new(l, q_a_proj, p)?,
                norm: upload(l, q_a_layernorm)?,
                b: Weight::new(l, q_b_proj, p)?,
            },
        };
        Ok(GpuMla {
            dims: a.dims.clone(),
            heads: a.heads,
            q,
            kv_a: Weight::new(l, &a.kv_a_proj_with_mqa, p)?,
            kv_a_norm: upload(l, &a.kv_a_layernorm)?,
            w_uk: Weight::stacked(l, &uk, p)?,
            w_uv: Weight::stacked(l, &uv, p)?,
            o_proj: Weight::new(l, &a.o_proj, p)?,
            scale: a.softmax_scale,
        })
    }

    /// Adds attention over the step's rows of `h` (normalised) to the residual `x`; appends
    /// the new latent rows to layer `layer` of the cache.
    fn forward(&self, st: &Step, layer: usize, h: u64, x: u64) -> Result<()> {
        let (l, n, heads) = (st.l, st.n, self.heads);
        let d = &self.dims;
        let (nope, rdim, lora, vdim) = (
            d.qk_nope_head_dim,
            d.qk_rope_head_dim,
            d.kv_lora_rank,
            d.v_head_dim,
        );
        let (qk, row_w) = (nope + rdim, lora + rdim);
        // Queries [n, h, nope | rope].
        let q = st.tmp(n * heads * qk * 4)?;
        match &self.q {
            GpuQuery::Direct(w) => st.linear(w, h, n, q, false)?,
            GpuQuery::LowRank { a, norm, b } => {
                let qa = st.tmp(n * a.rows * 4)?;
                st.linear(a, h, n, qa, false)?;
                ops::rms_norm(
                    l,
                    qa,
                    norm.ptr(),
                    qa,
                    n,
                    a.rows,
                    a.rows,
                    a.rows,
                    LATENT_NORM_EPS,
                )?;
                st.linear(b, qa, n, q, false)?;
            }
        }
        // Latent + RoPE key: normalised, rotated, into the cache.
        let kv = st.tmp(n * row_w * 4)?;
        st.linear(&self.kv_a, h, n, kv, false)?;
        let eps = LATENT_NORM_EPS;
        ops::rms_norm(l, kv, self.kv_a_norm.ptr(), kv, n, lora, row_w, row_w, eps)?;
        let rope = |heads, token_stride, head_stride, offset| RopeSlice {
            heads,
            token_stride,
            head_stride,
            offset,
            dim: rdim,
            interleaved: true,
        };
        st.rope(kv, rope(1, row_w, row_w, lora))?;
        st.rope(q, rope(heads, heads * qk, qk, nope))?;
        ops::cache_append(l, kv, &st.cache, layer, st.slots, n)?;
        // Absorbed query per head: [W_UK[h]ᵀ q_nope | q_pe].
        let q_full = st.tmp(n * heads * row_w * 4)?;
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
        st.batched(g, q, n * heads * qk, &self.w_uk, q_full)?;
        let (q_pe, q_full_pe) = (q + (nope * 4) as u64, q_full + (lora * 4) as u64);
        ops::copy_rows(l, q_pe, q_full_pe, n * heads, rdim, qk, row_w)?;
        let mut shape = AttentionShape::mla(heads, lora, rdim, self.scale);
        shape.split_len = shape.split_len(n, st.max_ctx, 2 * l.multiprocessors());
        let latent = attend(st, &shape, q_full, layer)?;
        // Back from latent space per head: W_UV[h] · latent.
        let attn = st.tmp(n * heads * vdim * 4)?;
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
        st.batched(g, latent, n * heads * lora, &self.w_uv, attn)?;
        st.linear(&self.o_proj, attn, n, x, true)
    }
}

/// The step's paged attention for queries `q` at layer `layer`: its output rows.
fn attend(st: &Step, shape: &AttentionShape, q: u64, layer: usize) -> Result<u64> {
    let n = st.n;
    let ws = st.tmp(shape.workspace_len(n, st.max_ctx) * 4)?;
    let out = st.tmp(n * shape.heads() * shape.value_len * 4)?;
    ops::paged_attention(
        st.l,
        shape,
        q,
        &st.cache,
        layer,
        st.block_tables,
        st.max_blocks,
        st.token_seq,
        st.ctx_lens,
        n,
        st.max_ctx,
        ws,
        out,
    )?;
    Ok(out)
}

pub struct GpuLlama {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    q_proj: Weight,
    k_proj: Weight,
    v_proj: Weight,
    o_proj: Weight,
}

impl GpuLlama {
    fn new(l: &dyn Launch, a: &LlamaAttention, p: GpuPrecision) -> Result<GpuLlama> {
        Ok(GpuLlama {
            heads: a.heads,
            kv_heads: a.kv_heads,
            head_dim: a.head_dim,
            q_proj: Weight::new(l, &a.q_proj, p)?,
            k_proj: Weight::new(l, &a.k_proj, p)?,
            v_proj: Weight::new(l, &a.v_proj, p)?,
            o_proj: Weight::new(l, &a.o_proj, p)?,
        })
    }

    fn forward(&self, st: &Step, layer: usize, h: u64, x: u64) -> Result<()> {
        let (n, heads, kvh, hd) = (st.n, self.heads, self.kv_heads, self.head_dim);
        let (kvw, hidden) = (kvh * hd, self.q_proj.cols);
        let q = st.tmp(n * heads * hd * 4)?;
        st.linear(&self.q_proj, h, n, q, false)?;
        // K and V straight into the cache rows [K | V].
        let rows = st.tmp(n * 2 * kvw * 4)?;
        let g = Gemm {
            ldc: 2 * kvw,
            ..Gemm::linear(n, kvw, hidden, Dtype::F32)
        };
        st.batched(g, h, n * hidden, &self.k_proj, rows)?;
        st.batched(g, h, n * hidden, &self.v_proj, rows + (kvw * 4) as u64)?;
        let rope = |heads, token_stride| RopeSlice {
            heads,
            token_stride,
            head_stride: hd,
            offset: 0,
            dim: hd,
            interleaved: false,
        };
        st.rope(q, rope(heads, heads * hd))?;
        st.rope(rows, rope(kvh, 2 * kvw))?;
        ops::cache_append(st.l, rows, &st.cache, layer, st.slots, n)?;
        let mut shape = AttentionShape::llama(kvh, heads / kvh, hd, 1.0 / (hd as f32).sqrt());
        shape.split_len = shape.split_len(n, st.max_ctx, 2 * st.l.multiprocessors());
        let attn = attend(st, &shape, q, layer)?;
        st.linear(&self.o_proj, attn, n, x, true)
    }
}

#[allow(clippy::large_enum_variant)] // one per layer
pub enum GpuAttention {
    Mla(GpuMla),
    Llama(GpuLlama),
}

impl GpuAttention {
    pub fn new(l: &dyn Launch, a: &Attention, p: GpuPrecision) -> Result<GpuAttention> {
        Ok(match a {
            Attention::Mla(a) => GpuAttention::Mla(GpuMla::new(l, a, p)?),
            Attention::Llama(a) => GpuAttention::Llama(GpuLlama::new(l, a, p)?),
        })
    }

    /// Adds attention over the step's rows of `h` to the residual `x`, appending the new
    /// tokens' rows to layer `layer` of the cache.
    pub fn forward(&self, st: &Step, layer: usize, h: u64, x: u64) -> Result<()> {
        match self {
            GpuAttention::Mla(a) => a.forward(st, layer, h, x),
            GpuAttention::Llama(a) => a.forward(st, layer, h, x),
        }
    }
}
