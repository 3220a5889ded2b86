//! One decoder layer: `x + attn(norm(x))`, then `x + ffn(norm(x))`, where the attention is MLA
//! or Llama's and the feed-forward a dense MLP or DeepSeekMoE.

use deepseek_cache::{BlockPool, SequenceCache};
use deepseek_kernels::ops::{add_inplace, rms_norm};
use deepseek_kernels::{Matrix, Precision};
use deepseek_loader::{AttentionKind, LoadError, ModelConfig, WeightStore};

use crate::batch::BatchLayout;
use crate::expert_parallel::ExpertParallel;
use crate::llama_attention::LlamaAttention;
use crate::mla::{AttentionPath, MlaAttention};
use crate::mlp::Mlp;
use crate::moe::Moe;
use crate::observe::MatmulObserver;
use crate::rope::Rope;
use crate::trace::Trace;

#[allow(clippy::large_enum_variant)] // one per layer
pub enum Attention {
    Mla(MlaAttention),
    Llama(LlamaAttention),
}

#[allow(clippy::large_enum_variant)] // one per layer
pub enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

pub struct DecoderLayer {
    pub input_layernorm: Vec<f32>,
    pub self_attn: Attention,
    pub post_attention_layernorm: Vec<f32>,
    pub mlp: FeedForward,
}

/// What a layer's step attends over: the batch, the cache and how attention reads it.
pub struct LayerContext<'a, 'b> {
    pub batch: &'a BatchLayout,
    pub rope: &'a Rope,
    pub caches: &'a [&'b mut SequenceCache],
    pub path: AttentionPath,
    pub precision: Precision,
    /// Sees every matrix product's input (`deepseek imatrix`); None in inference.
    pub observer: Option<&'a dyn MatmulObserver>,
    /// The other ranks' routed experts, under expert parallelism.
    pub experts: Option<&'a ExpertParallel>,
}

impl DecoderLayer {
    /// Layer `i` of the checkpoint: `model.layers.{i}` (also the index a multi-token-prediction
    /// block has after the main stack, which decides whether its feed-forward is MoE), with
    /// only this rank's routed experts under expert parallelism (`ep`).
    pub fn load(
        w: &WeightStore,
        c: &ModelConfig,
        i: usize,
        ep: Option<&ExpertParallel>,
    ) -> Result<Self, LoadError> {
        let p = format!("model.layers.{i}");
        let hid = c.hidden_size;
        let self_attn = match &c.attention {
            AttentionKind::Gqa => {
                Attention::Llama(LlamaAttention::load(w, c, &format!("{p}.self_attn"))?)
            }
            AttentionKind::Mla(d) => {
                Attention::Mla(MlaAttention::load(w, c, d, &format!("{p}.self_attn"))?)
            }
        };
        let mlp = match &c.moe {
            Some(m) if m.is_moe_layer(i) => FeedForward::Moe(Moe::load(w, c, m, i, ep)?),
            _ => FeedForward::Dense(Mlp::load(w, &format!("{p}.mlp"), hid, c.intermediate_size)?),
        };
        Ok(DecoderLayer {
            input_layernorm: w.vector(&format!("{p}.input_layernorm.weight"), hid)?,
            self_attn,
            post_attention_layernorm: w
                .vector(&format!("{p}.post_attention_layernorm.weight"), hid)?,
            mlp,
        })
    }

    /// Runs the layer over `x` (`[tokens, hidden]`, updated in place), writing its cache rows
    /// as cache layer `cache_layer`.
    pub fn forward(
        &self,
        x: &mut [f32],
        cache_layer: usize,
        cx: &LayerContext,
        pool: &mut BlockPool,
        eps: f32,
        trace: Option<&mut Trace>,
    ) {
        let n = cx.batch.tokens();
        let p = cx.precision;
        let mut h = vec![0.0; x.len()];
        let mut o = vec![0.0; x.len()];
        rms_norm(x, &self.input_layernorm, eps, &mut h);
        match &self.self_attn {
            Attention::Mla(a) => a.forward(
                &h,
                cx.batch,
                cache_layer,
                cx.rope,
                pool,
                cx.caches,
                cx.path,
                p,
                cx.observer,
                &mut o,
            ),
            Attention::Llama(a) => a.forward(
                &h,
                cx.batch,
                cache_layer,
                cx.rope,
                pool,
                cx.caches,
                p,
                cx.observer,
                &mut o,
            ),
        }
        add_inplace(x, &o);
        rms_norm(x, &self.post_attention_layernorm, eps, &mut h);
        match &self.mlp {
            FeedForward::Dense(m) => {
                m.forward(&h, n, &mut o, p, cx.observer);
                if let Some(tr) = trace {
                    tr.routing.push(vec![]);
                    tr.router_logits.push(vec![]);
                }
            }
            FeedForward::Moe(m) => {
                let routing = m.forward(&h, n, &mut o, p, cx.observer, cx.experts);
                if let Some(tr) = trace {
                    tr.router_logits.push(m.router.logits(&h, n, p));
                    tr.routing.push(routing);
                }
            }
        }
        add_inplace(x, &o);
    }

    /// Every weight matrix with the share of tokens that read it (k / n_routed for a routed
    /// expert, 1 otherwise).
    pub fn for_each_weight(&self, f: &mut dyn FnMut(&Matrix, f64)) {
        match &self.self_attn {
            Attention::Mla(a) => a.matrices().into_iter().for_each(|m| f(m, 1.0)),
            Attention::Llama(a) => a.matrices().into_iter().for_each(|m| f(m, 1.0)),
        }
        match &self.mlp {
            FeedForward::Dense(m) => m.matrices().into_iter().for_each(|m| f(m, 1.0)),
            FeedForward::Moe(moe) => {
                let share = moe.router.top_k() as f64 / moe.experts.len() as f64;
                f(moe.router.weight(), 1.0);
                for e in moe.experts.iter().flatten() {
                    e.matrices().into_iter().for_each(|m| f(m, share));
                }
                if let Some(s) = &moe.shared_experts {
                    s.matrices().into_iter().for_each(|m| f(m, 1.0));
                }
            }
        }
    }

    /// Bytes held beyond [`DecoderLayer::for_each_weight`]: norms and prefill-only matrices.
    pub fn other_bytes(&self) -> usize {
        let mut b = 4 * (self.input_layernorm.len() + self.post_attention_layernorm.len());
        if let Attention::Mla(a) = &self.self_attn {
            b += a
                .prefill_only_matrices()
                .iter()
                .map(|m| m.size_bytes())
                .sum::<usize>();
        }
        b
    }
}
