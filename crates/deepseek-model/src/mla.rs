//! Multi-head Latent Attention (DeepSeek-V2 §2.1).
//!
//! Per token and layer only `[c_kv | k_pe]` is cached: the RMS-normalised latent (kv_lora_rank
//! values) and the rotated RoPE key shared by all heads (qk_rope_head_dim values).
//!
//! Two ways to attend, which agree up to rounding:
//! - **absorbed** (decode, and any step over a long cached prefix): `kv_b_proj`'s key half `W_UK`
//!   is folded into the query, `absorbed_q[h] = W_UK[h]ᵀ · q_nope[h]`, which is scored directly
//!   against the cached latents; the softmax-weighted sum of latents goes through the value half
//!   `W_UV[h]` afterwards. Full per-head K and V are never built.
//! - **decompressed** (prefill): `kv_b_proj` expands every cached latent into per-head `k_nope`
//!   and `v`, then ordinary attention; cheaper when many new tokens attend to a short context.

use deepseek_cache::{BlockPool, SequenceCache};
use deepseek_kernels::attention::{
    attend_causal, attend_group_split, attend_group_split_serial, RowBlocks, RowLayout,
};

use deepseek_kernels::matmul::{matmul_serial, matmul_transposed};
use deepseek_kernels::ops::{rms_norm_inplace, rope, RopeStyle};
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{LoadError, MlaConfig, ModelConfig, WeightStore};

use crate::batch::BatchLayout;
use crate::observe::{show, MatmulObserver};
use crate::rope::{mla_softmax_scale, Rope};
use deepseek_loader::imatrix::kv_b_half_name;

/// DeepSeek's q_a_layernorm and kv_a_layernorm use the RMSNorm default, not config.rms_norm_eps.
pub(crate) const LATENT_NORM_EPS: f32 = 1e-6;

/// Query tokens of one head attended together in decompressed prefill: enough to fill the
/// score tiles and amortise each row load, few enough that the per-token tails stay short.
const CAUSAL_RUN: usize = 16;

pub enum QueryProjection {
    /// V2-Lite: `q_proj`.
    Direct { q_proj: Matrix },
    /// V2/V3: `q_a_proj → q_a_layernorm → q_b_proj`.
    LowRank {
        q_a_proj: Matrix,
        q_a_layernorm: Vec<f32>,
        q_b_proj: Matrix,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    Absorbed,
    Decompressed,
}

pub struct MlaAttention {
    /// The checkpoint's prefix (`model.layers.3.self_attn`).
    pub(crate) prefix: String,
    pub(crate) dims: MlaConfig,
    pub(crate) heads: usize,
    pub(crate) q: QueryProjection,
    pub(crate) kv_a_proj_with_mqa: Matrix,
    pub(crate) kv_a_layernorm: Vec<f32>,
    pub(crate) kv_b_proj: Matrix,
    /// Per head `W_UK[h]`: `[qk_nope_head_dim, kv_lora_rank]`, rows of `kv_b_proj` (shared
    /// storage); `absorbed_q = W_UKᵀ · q_nope` is read through it without a transposed copy.
    pub(crate) w_uk: Vec<Matrix>,
    /// Per head `W_UV[h]`: `[v_head_dim, kv_lora_rank]`, rows of `kv_b_proj` (shared storage),
    /// or of the checkpoint's own `v_b_proj` when it has one.
    pub(crate) w_uv: Vec<Matrix>,
    /// Per head `W_UK[h]ᵀ`: `[kv_lora_rank, qk_nope_head_dim]`, when the checkpoint stores the
    /// key half pre-transposed (llama.cpp's `attn_k_b`): the absorbed query is then an ordinary
    /// matmul, on the weights' own (possibly quantized) format.
    pub(crate) w_uk_t: Option<Vec<Matrix>>,
    pub(crate) o_proj: Matrix,
    pub(crate) softmax_scale: f32,
}

impl MlaAttention {
    pub fn load(
        w: &WeightStore,
        cfg: &ModelConfig,
        d: &MlaConfig,
        prefix: &str,
    ) -> Result<Self, LoadError> {
        let d = d.clone();
        let (h, hid) = (cfg.num_attention_heads, cfg.hidden_size);
        let name = |n: &str| format!("{prefix}.{n}");
        let q = match d.q_lora_rank {
            None => QueryProjection::Direct {
                q_proj: w.matrix(&name("q_proj.weight"), h * d.qk_head_dim(), hid)?,
            },
            Some(r) => QueryProjection::LowRank {
                q_a_proj: w.matrix(&name("q_a_proj.weight"), r, hid)?,
                q_a_layernorm: w.vector(&name("q_a_layernorm.weight"), r)?,
                q_b_proj: w.matrix(&name("q_b_proj.weight"), h * d.qk_head_dim(), r)?,
            },
        };
        let kv_b_proj = w.matrix(
            &name("kv_b_proj.weight"),
            h * (d.qk_nope_head_dim + d.v_head_dim),
            d.kv_lora_rank,
        )?;
        let per_head = d.qk_nope_head_dim + d.v_head_dim;
        let w_uk = (0..h)
            .map(|i| kv_b_proj.row_range(i * per_head, d.qk_nope_head_dim))
            .collect();
        let mut w_uv: Vec<Matrix> = (0..h)
            .map(|i| kv_b_proj.row_range(i * per_head + d.qk_nope_head_dim, d.v_head_dim))
            .collect();
        // Split per-head weights (GGUF's attn_k_b / attn_v_b, named k_b_proj / v_b_proj by the
        // loader) serve decode directly.
        let w_uk_t = if w.contains(&name("k_b_proj.weight")) && w.contains(&name("v_b_proj.weight"))
        {
            let k_b = w.matrix(
                &name("k_b_proj.weight"),
                h * d.kv_lora_rank,
                d.qk_nope_head_dim,
            )?;
            let v_b = w.matrix(&name("v_b_proj.weight"), h * d.v_head_dim, d.kv_lora_rank)?;
            w_uv = (0..h)
                .map(|i| v_b.row_range(i * d.v_head_dim, d.v_head_dim))
                .collect();
            Some(
                (0..h)
                    .map(|i| k_b.row_range(i * d.kv_lora_rank, d.kv_lora_rank))
                    .collect(),
            )
        } else {
            None
        };
        Ok(MlaAttention {
            prefix: prefix.to_string(),
            heads: h,
            q,
            kv_a_proj_with_mqa: w.matrix(
                &name("kv_a_proj_with_mqa.weight"),
                d.kv_lora_rank + d.qk_rope_head_dim,
                hid,
            )?,
            kv_a_layernorm: w.vector(&name("kv_a_layernorm.weight"), d.kv_lora_rank)?,
            kv_b_proj,
            w_uk,
            w_uv,
            w_uk_t,
            o_proj: w.matrix(&name("o_proj.weight"), hid, h * d.v_head_dim)?,
            softmax_scale: mla_softmax_scale(cfg),
            dims: d,
        })
    }

    /// Weights held only for the decompressed prefill: `kv_b_proj` when decode reads the split
    /// per-head weights instead (GGUF files, where it is rebuilt at load).
    pub fn prefill_only_matrices(&self) -> Vec<&Matrix> {
        match &self.w_uk_t {
            Some(_) => vec![&self.kv_b_proj],
            None => vec![],
        }
    }

    /// The stored weights (the per-head absorbed views are derived from `kv_b_proj`).
    pub fn matrices(&self) -> Vec<&Matrix> {
        let mut v = match &self.q {
            QueryProjection::Direct { q_proj } => vec![q_proj],
            QueryProjection::LowRank {
                q_a_proj, q_b_proj, ..
            } => vec![q_a_proj, q_b_proj],
        };
        v.push(&self.kv_a_proj_with_mqa);
        match &self.w_uk_t {
            // Decode reads the split weights, not the rebuilt kv_b_proj.
            Some(k) => {
                v.extend(k.iter());
                v.extend(self.w_uv.iter());
            }
            None => v.push(&self.kv_b_proj),
        }
        v.push(&self.o_proj);
        v
    }

    /// Attention for all tokens of the batch. `x` is the normalised hidden state `[n, hidden]`;
    /// writes `[n, hidden]` into `out`. The new tokens' latent rows are appended to the cache.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        batch: &BatchLayout,
        layer: usize,
        rope_table: &Rope,
        pool: &mut BlockPool,
        caches: &[&mut SequenceCache],
        path: AttentionPath,
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
        out: &mut [f32],
    ) {
        let d = &self.dims;
        let (h, n) = (self.heads, batch.tokens());
        let (nope, rdim, lora, vdim) = (
            d.qk_nope_head_dim,
            d.qk_rope_head_dim,
            d.kv_lora_rank,
            d.v_head_dim,
        );
        let qk = nope + rdim;

        // Queries [n, h, nope | rope].
        let mut q = vec![0.0; n * h * qk];
        match &self.q {
            QueryProjection::Direct { q_proj } => {
                show(obs, &self.prefix, "q_proj", x, n);
                matmul(q_proj, x, n, &mut q, p)
            }
            QueryProjection::LowRank {
                q_a_proj,
                q_a_layernorm,
                q_b_proj,
            } => {
                let mut qa = vec![0.0; n * q_a_proj.rows];
                matmul(q_a_proj, x, n, &mut qa, p);
                rms_norm_inplace(&mut qa, q_a_layernorm, LATENT_NORM_EPS);
                show(obs, &self.prefix, "q_a_proj", x, n);
                show(obs, &self.prefix, "q_b_proj", &qa, n);
                matmul(q_b_proj, &qa, n, &mut q, p);
            }
        }
        show(obs, &self.prefix, "kv_a_proj_with_mqa", x, n);
        // Latent + shared RoPE key [n, lora | rope].
        let width = lora + rdim;
        let mut kv_a = vec![0.0; n * width];
        matmul(&self.kv_a_proj_with_mqa, x, n, &mut kv_a, p);

        let (mut cos, mut sin) = (vec![0.0; rdim / 2], vec![0.0; rdim / 2]);
        for t in 0..n {
            let pos = batch.position(t);
            rope_table.cos_sin(pos, &mut cos, &mut sin);
            let row = &mut kv_a[t * width..(t + 1) * width];
            rms_norm_inplace(&mut row[..lora], &self.kv_a_layernorm, LATENT_NORM_EPS);
            rope(&mut row[lora..], &cos, &sin, RopeStyle::Interleaved);
            for hh in 0..h {
                let qh = &mut q[(t * h + hh) * qk..(t * h + hh + 1) * qk];
                rope(&mut qh[nope..], &cos, &sin, RopeStyle::Interleaved);
            }
            pool.write_row(caches[batch.seq_of(t)], layer, pos, row);
        }

        let mut attn = vec![0.0; n * h * vdim];
        // An observer sees the absorbed path's per-head inputs, as llama.cpp's graph (which
        // always absorbs) forms them for its `attn_k_b`/`attn_v_b`.
        let path = if obs.is_some() {
            AttentionPath::Absorbed
        } else {
            path
        };
        match path {
            AttentionPath::Absorbed => {
                self.attend_absorbed(&q, batch, layer, pool, caches, p, obs, &mut attn)
            }
            AttentionPath::Decompressed => {
                self.attend_decompressed(&q, batch, layer, pool, caches, p, &mut attn)
            }
        }
        show(obs, &self.prefix, "o_proj", &attn, n);
        matmul(&self.o_proj, &attn, n, out, p);
    }

    #[allow(clippy::too_many_arguments)]
    fn attend_absorbed(
        &self,
        q: &[f32],
        batch: &BatchLayout,
        layer: usize,
        pool: &BlockPool,
        caches: &[&mut SequenceCache],
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
        attn: &mut [f32],
    ) {
        let d = &self.dims;
        let (h, n) = (self.heads, batch.tokens());
        let (nope, rdim, lora, vdim) = (
            d.qk_nope_head_dim,
            d.qk_rope_head_dim,
            d.kv_lora_rank,
            d.v_head_dim,
        );
        let (qk, width) = (nope + rdim, lora + rdim);
        // Names only when an observer (an importance matrix) looks: decode takes this path.
        let kv_b = || format!("{}.kv_b_proj.weight", self.prefix);
        if let Some(o) = obs {
            let q_nope: Vec<f32> = q
                .chunks_exact(qk)
                .flat_map(|r| &r[..nope])
                .copied()
                .collect();
            o.observe(&kv_b_half_name(&kv_b(), "k_b"), &q_nope, n);
        }

        // absorbed_q[t, h] = [W_UK[h]ᵀ q_nope[t, h] | q_pe[t, h]]; heads in parallel, each one
        // pass over its W_UK for all tokens.
        let per_head = per_head_par(q, n, h, qk, nope, lora, |hh, q_nope, aq| {
            match &self.w_uk_t {
                Some(k) => matmul_serial(&k[hh], q_nope, n, aq, p),
                None => matmul_transposed(&self.w_uk[hh], q_nope, n, aq),
            }
        });
        let mut absorbed_q = vec![0.0; n * h * width];
        for (hh, aq) in per_head.iter().enumerate() {
            for t in 0..n {
                let dst = &mut absorbed_q[(t * h + hh) * width..(t * h + hh + 1) * width];
                dst[..lora].copy_from_slice(&aq[t * lora..(t + 1) * lora]);
                dst[lora..].copy_from_slice(&q[(t * h + hh) * qk + nope..][..rdim]);
            }
        }

        // Scores against [c_kv | k_pe], values = c_kv: multi-query attention in latent space.
        let layout = RowLayout {
            row_width: width,
            key_offset: 0,
            key_len: width,
            value_offset: 0,
            value_len: lora,
        };
        let mut latent_out = vec![0.0; n * h * lora];
        let seq_rows: Vec<RowBlocks> = caches.iter().map(|c| pool.layer_rows(c, layer)).collect();
        if n < deepseek_kernels::threads::current() {
            // Few query tokens (decode): split each one's context across the threads instead.
            for (t, o) in latent_out.chunks_mut(h * lora).enumerate() {
                let q = &absorbed_q[t * h * width..(t + 1) * h * width];
                attend_group_split(
                    q,
                    &seq_rows[batch.seq_of(t)],
                    layout,
                    batch.position(t) + 1,
                    self.softmax_scale,
                    o,
                );
            }
        } else {
            // Tokens in parallel, each split as a decode token's context is (one part below
            // 128 rows), so a token's attention does not depend on the tokens beside it.
            deepseek_kernels::threads::for_each_chunk_mut(&mut latent_out, h * lora, |t, o| {
                attend_group_split_serial(
                    &absorbed_q[t * h * width..(t + 1) * h * width],
                    &seq_rows[batch.seq_of(t)],
                    layout,
                    batch.position(t) + 1,
                    self.softmax_scale,
                    o,
                );
            });
        }

        if let Some(o) = obs {
            o.observe(&kv_b_half_name(&kv_b(), "v_b"), &latent_out, n);
        }
        // Back from latent space: out[t, h] = W_UV[h] · latent_out[t, h], heads in parallel.
        let per_head = per_head_par(&latent_out, n, h, lora, lora, vdim, |hh, lat, v| {
            matmul_serial(&self.w_uv[hh], lat, n, v, p)
        });
        for (hh, v) in per_head.iter().enumerate() {
            for t in 0..n {
                attn[(t * h + hh) * vdim..(t * h + hh + 1) * vdim]
                    .copy_from_slice(&v[t * vdim..(t + 1) * vdim]);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attend_decompressed(
        &self,
        q: &[f32],
        batch: &BatchLayout,
        layer: usize,
        pool: &BlockPool,
        caches: &[&mut SequenceCache],
        p: Precision,
        attn: &mut [f32],
    ) {
        let d = &self.dims;
        let h = self.heads;
        let (nope, rdim, lora, vdim) = (
            d.qk_nope_head_dim,
            d.qk_rope_head_dim,
            d.kv_lora_rank,
            d.v_head_dim,
        );
        let (qk, width) = (nope + rdim, lora + rdim);
        // Per context token, per head: [k_nope | k_pe | v].
        let head_w = nope + rdim + vdim;
        for (s, cache) in caches.iter().enumerate() {
            let tokens = batch.tokens_of(s);
            if tokens.is_empty() {
                continue;
            }
            let ctx = batch.position(tokens.end - 1) + 1;
            let rows = pool.layer_rows(cache, layer);
            // Split each cached row [c_kv | k_pe] once: latents for kv_b_proj, k_pe for keys.
            let (mut latents, mut k_pes) = (vec![0.0; ctx * lora], vec![0.0; ctx * rdim]);
            let mut row = vec![0.0; width];
            for c in 0..ctx {
                rows.row_f32(c, &mut row);
                latents[c * lora..(c + 1) * lora].copy_from_slice(&row[..lora]);
                k_pes[c * rdim..(c + 1) * rdim].copy_from_slice(&row[lora..]);
            }
            let mut kv = vec![0.0; ctx * h * (nope + vdim)];
            matmul(&self.kv_b_proj, &latents, ctx, &mut kv, p);
            let mut full = vec![0.0; ctx * h * head_w];
            for c in 0..ctx {
                let k_pe = &k_pes[c * rdim..(c + 1) * rdim];
                for hh in 0..h {
                    let src = &kv[(c * h + hh) * (nope + vdim)..][..nope + vdim];
                    let dst = &mut full[(c * h + hh) * head_w..][..head_w];
                    dst[..nope].copy_from_slice(&src[..nope]);
                    dst[nope..qk].copy_from_slice(k_pe);
                    dst[qk..].copy_from_slice(&src[nope..]);
                }
            }
            let full_rows = RowBlocks::f32(vec![&full[..]], ctx, h * head_w);
            // Per head, runs of consecutive query tokens share one pass over the keys and
            // values they all see (each loaded row serves every query of the run).
            let runs: Vec<(usize, usize)> = (0..h)
                .flat_map(|hh| tokens.clone().step_by(CAUSAL_RUN).map(move |t0| (hh, t0)))
                .collect();
            let outs: Vec<Vec<f32>> = deepseek_kernels::threads::map(runs.len(), |r| {
                let (hh, t0) = runs[r];
                let t1 = (t0 + CAUSAL_RUN).min(tokens.end);
                let layout = RowLayout {
                    row_width: h * head_w,
                    key_offset: hh * head_w,
                    key_len: qk,
                    value_offset: hh * head_w + qk,
                    value_len: vdim,
                };
                let queries: Vec<f32> = (t0..t1)
                    .flat_map(|t| q[(t * h + hh) * qk..][..qk].iter().copied())
                    .collect();
                let mut o = vec![0.0; (t1 - t0) * vdim];
                attend_causal(
                    &queries,
                    &full_rows,
                    layout,
                    batch.position(t0) + 1,
                    self.softmax_scale,
                    &mut o,
                );
                o
            });
            for (&(hh, t0), o) in runs.iter().zip(&outs) {
                for (j, v) in o.chunks(vdim).enumerate() {
                    let t = t0 + j;
                    attn[(t * h + hh) * vdim..(t * h + hh + 1) * vdim].copy_from_slice(v);
                }
            }
        }
    }
}

/// For each of `h` heads in parallel: gathers the first `in_len` values of that head's slot in
/// every token's `[h, stride]` row of `x` into `[n, in_len]`, and lets `f` map it to
/// `[n, out_len]`. Returns the outputs per head.
fn per_head_par(
    x: &[f32],
    n: usize,
    h: usize,
    stride: usize,
    in_len: usize,
    out_len: usize,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    deepseek_kernels::threads::map(h, |hh| {
        let input: Vec<f32> = (0..n)
            .flat_map(|t| x[(t * h + hh) * stride..][..in_len].iter().copied())
            .collect();
        let mut out = vec![0.0; n * out_len];
        f(hh, &input, &mut out);
        out
    })
}
