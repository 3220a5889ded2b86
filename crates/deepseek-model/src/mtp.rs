//! Multi-token prediction (DeepSeek-V3 §2.2): a module after the main stack that predicts the
//! token after next, used here to draft tokens for speculative decoding.
//!
//! At position i the module combines what the main model knows there, its final-normed hidden
//! state `h_i`, with the embedding of the token that follows, `x_{i+1}`:
//!
//! ```text
//! u_i    = eh_proj · [enorm(embed(x_{i+1})) ; hnorm(h_i)]     (embedding first, as the
//!                                                             published weights are used)
//! u_i    = decoder block (MLA over the module's own cache rows, MoE)
//! logits = shared_head.head · shared_head.norm(u_i)           (predicts x_{i+2})
//! ```
//!
//! The module is stored as `model.layers.{num_hidden_layers}`: an ordinary decoder layer plus
//! `enorm`, `hnorm`, `eh_proj` and `shared_head.{norm,head}`; V3 also stores a copy of the
//! embedding table there. Absent copies fall back to the main model's embedding and lm_head.
//! Its cache rows are the cache's last layer, one per position the main model has, so the
//! verify step's rollback drops them with the main model's.

use deepseek_kernels::ops::rms_norm;
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{LoadError, ModelConfig, WeightStore};

use crate::expert_parallel::ExpertParallel;
use crate::layer::{DecoderLayer, LayerContext};
use crate::observe::{show, MatmulObserver};

pub struct MtpModule {
    /// `model.layers.{L}.embed_tokens` where the checkpoint keeps its own copy.
    embed_tokens: Option<Matrix>,
    enorm: Vec<f32>,
    hnorm: Vec<f32>,
    /// `[hidden, 2 · hidden]`: columns `[embedding half | hidden-state half]`.
    eh_proj: Matrix,
    pub(crate) block: DecoderLayer,
    head_norm: Vec<f32>,
    /// `shared_head.head` where the checkpoint keeps its own copy.
    head: Option<Matrix>,
    /// The block's index in the checkpoint, also its cache layer.
    pub layer: usize,
}

impl MtpModule {
    /// The first multi-token-prediction module, when the config announces one and the
    /// checkpoint holds it (quantized files often leave it out: then there is none).
    /// Under expert parallelism (`ep`) its block holds only this rank's routed experts.
    pub fn load(
        w: &WeightStore,
        c: &ModelConfig,
        ep: Option<&ExpertParallel>,
    ) -> Result<Option<Self>, LoadError> {
        let l = c.num_hidden_layers;
        let p = format!("model.layers.{l}");
        if c.num_nextn_predict_layers == 0 || !w.contains(&format!("{p}.eh_proj.weight")) {
            return Ok(None);
        }
        let (v, hid) = (c.vocab_size, c.hidden_size);
        let optional = |name: String| -> Result<Option<Matrix>, LoadError> {
            match w.contains(&name) {
                true => w.matrix(&name, v, hid).map(Some),
                false => Ok(None),
            }
        };
        Ok(Some(MtpModule {
            embed_tokens: optional(format!("{p}.embed_tokens.weight"))?,
            enorm: w.vector(&format!("{p}.enorm.weight"), hid)?,
            hnorm: w.vector(&format!("{p}.hnorm.weight"), hid)?,
            eh_proj: w.matrix(&format!("{p}.eh_proj.weight"), hid, 2 * hid)?,
            block: DecoderLayer::load(w, c, l, ep)?,
            head_norm: w.vector(&format!("{p}.shared_head.norm.weight"), hid)?,
            head: optional(format!("{p}.shared_head.head.weight"))?,
            layer: l,
        }))
    }

    /// The block's input for each token: `eh_proj · [enorm(embed(next)) ; hnorm(hidden)]`.
    /// `hidden` is `[n, hidden]`, one row per token of `next`; `obs` sees `eh_proj`'s input.
    pub fn input(
        &self,
        main_embed: &Matrix,
        next: &[u32],
        hidden: &[f32],
        eps: f32,
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
    ) -> Vec<f32> {
        let hid = self.enorm.len();
        let embed = self.embed_tokens.as_ref().unwrap_or(main_embed);
        let n = next.len();
        let mut cat = vec![0.0; n * 2 * hid];
        let mut e = vec![0.0; hid];
        for (t, &id) in next.iter().enumerate() {
            let row = &mut cat[t * 2 * hid..(t + 1) * 2 * hid];
            embed.row_f32(id as usize, &mut e);
            rms_norm(&e, &self.enorm, eps, &mut row[..hid]);
            rms_norm(
                &hidden[t * hid..(t + 1) * hid],
                &self.hnorm,
                eps,
                &mut row[hid..],
            );
        }
        show(
            obs,
            &format!("model.layers.{}", self.layer),
            "eh_proj",
            &cat,
            n,
        );
        let mut u = vec![0.0; n * hid];
        matmul(&self.eh_proj, &cat, n, &mut u, p);
        u
    }

    /// `shared_head.norm` of every row of `x`: the module's output hidden state, which a
    /// further draft takes in place of the main model's (as the main model's final norm).
    pub fn head_norm(&self, x: &[f32], eps: f32) -> Vec<f32> {
        let hid = self.head_norm.len();
        let mut out = vec![0.0; x.len()];
        for (o, r) in out.chunks_mut(hid).zip(x.chunks(hid)) {
            rms_norm(r, &self.head_norm, eps, o);
        }
        out
    }

    /// Logits `[rows, vocab]` of normed rows.
    pub fn logits(&self, main_head: &Matrix, normed: &[f32], p: Precision) -> Vec<f32> {
        let head = self.head.as_ref().unwrap_or(main_head);
        let rows = normed.len() / self.head_norm.len();
        let mut out = vec![0.0; rows * head.rows];
        matmul(head, normed, rows, &mut out, p);
        out
    }

    /// Runs the block (see [`DecoderLayer::forward`]) over the module's inputs `x`.
    pub fn run_block(
        &self,
        x: &mut [f32],
        cx: &LayerContext,
        pool: &mut deepseek_cache::BlockPool,
        eps: f32,
    ) {
        self.block.forward(x, self.layer, cx, pool, eps, None);
    }

    /// Every weight matrix the module reads per token, as [`DecoderLayer::for_each_weight`].
    pub fn for_each_weight(&self, f: &mut dyn FnMut(&Matrix, f64)) {
        f(&self.eh_proj, 1.0);
        self.block.for_each_weight(f);
        if let Some(h) = &self.head {
            f(h, 1.0);
        }
    }

    /// Bytes held beyond [`MtpModule::for_each_weight`].
    pub fn other_bytes(&self) -> usize {
        4 * (self.enorm.len() + self.hnorm.len() + self.head_norm.len())
            + self.block.other_bytes()
            + self.embed_tokens.as_ref().map_or(0, |m| m.size_bytes())
    }
}
