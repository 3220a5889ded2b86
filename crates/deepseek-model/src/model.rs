//! The decoder stack: embeddings → layers (attention + dense MLP or MoE) → norm → lm_head.

use std::path::Path;

use deepseek_cache::{BlockPool, CacheDtype, CacheError, CacheShape, SequenceCache};
use deepseek_kernels::ops::{add_inplace, rms_norm};
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{AttentionKind, LoadError, ModelConfig, WeightStore};

use crate::batch::BatchLayout;
use crate::llama_attention::LlamaAttention;
use crate::mla::{AttentionPath, MlaAttention};
use crate::mlp::Mlp;
use crate::moe::Moe;
use crate::rope::Rope;
use crate::router::Routing;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("token id {id} is out of range: the vocabulary has {vocab} tokens (ids 0..{})", vocab - 1)]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "position {pos} is beyond the model's context of {max} tokens (max_position_embeddings)"
    )]
    ContextExceeded { pos: usize, max: usize },
}

#[allow(clippy::large_enum_variant)] // one per layer
pub enum Attention {
    Mla(MlaAttention),
    Llama(LlamaAttention),
}

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

pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Matrix,
    pub layers: Vec<DecoderLayer>,
    pub norm: Vec<f32>,
    pub lm_head: Matrix,
    rope: Rope,
    /// How activations meet the weights in every matmul ([`Model::with_precision`]).
    precision: Precision,
    /// The weights' identity ([`WeightStore::fingerprint`]).
    pub weights_fingerprint: [u8; 32],
}

/// Which attention path prefill uses (decode steps of one token always use the absorbed one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefillPath {
    /// Decompressed when a sequence brings more new tokens than it has cached, else absorbed.
    Auto,
    Absorbed,
    Decompressed,
}

/// What one forward step returns logits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsFor {
    /// Every new token (for `forward` and scoring).
    AllTokens,
    /// The last new token of each sequence (generation).
    LastToken,
}

/// Optional record of intermediate values, for parity tests against the reference.
#[derive(Default)]
pub struct Trace {
    /// `[layers + 1]` residual streams, each `[tokens, hidden]`.
    pub resid: Vec<Vec<f32>>,
    /// Per layer: routing of every token (empty for dense layers).
    pub routing: Vec<Vec<Routing>>,
    /// Per layer: raw router logits `[tokens, experts]` (empty for dense layers).
    pub router_logits: Vec<Vec<f32>>,
    pub final_norm: Vec<f32>,
}

/// One sequence's part of a step: its new tokens and its cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SequenceCache,
}

impl Model {
    /// Loads `path`: a Hugging Face folder (config.json + safetensors) or a GGUF file.
    /// `progress(done, total)` is called per layer.
    pub fn load(path: &Path, progress: &mut dyn FnMut(usize, usize)) -> Result<Self, LoadError> {
        let (config, w) = deepseek_loader::open_checkpoint(path)?;
        Self::from_store(config, &w, progress)
    }

    pub fn from_store(
        config: ModelConfig,
        w: &WeightStore,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, LoadError> {
        let c = &config;
        let (v, hid) = (c.vocab_size, c.hidden_size);
        let embed_tokens = w.matrix("model.embed_tokens.weight", v, hid)?;
        // Nothing is sized by the config before the checkpoint shows it holds that much: a
        // layer count of a billion must be an error naming the field, not an allocation abort.
        let layer_norm = |i: usize| format!("model.layers.{i}.input_layernorm.weight");
        if !w.contains(&layer_norm(c.num_hidden_layers - 1)) {
            let present = (0..).take_while(|&i| w.contains(&layer_norm(i))).count();
            return Err(LoadError::config(
                "num_hidden_layers",
                format!(
                    "is {} (GGUF: block_count), but the checkpoint holds {present} layers (it has no `{}`)",
                    c.num_hidden_layers,
                    layer_norm(c.num_hidden_layers - 1)
                ),
            ));
        }
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let self_attn = match &c.attention {
                AttentionKind::Gqa => {
                    Attention::Llama(LlamaAttention::load(w, c, &format!("{p}.self_attn"))?)
                }
                AttentionKind::Mla(d) => {
                    Attention::Mla(MlaAttention::load(w, c, d, &format!("{p}.self_attn"))?)
                }
            };
            let mlp = match &c.moe {
                Some(m) if m.is_moe_layer(i) => {
                    FeedForward::Moe(Moe::load(w, c, m, &format!("{p}.mlp"))?)
                }
                _ => {
                    FeedForward::Dense(Mlp::load(w, &format!("{p}.mlp"), hid, c.intermediate_size)?)
                }
            };
            layers.push(DecoderLayer {
                input_layernorm: w.vector(&format!("{p}.input_layernorm.weight"), hid)?,
                self_attn,
                post_attention_layernorm: w
                    .vector(&format!("{p}.post_attention_layernorm.weight"), hid)?,
                mlp,
            });
            progress(i + 1, c.num_hidden_layers);
        }
        let lm_head = if w.contains("lm_head.weight") || !c.tie_word_embeddings {
            w.matrix("lm_head.weight", v, hid)?
        } else {
            embed_tokens.clone()
        };
        Ok(Model {
            rope: Rope::new(c),
            embed_tokens,
            layers,
            norm: w.vector("model.norm.weight", hid)?,
            lm_head,
            config,
            precision: Precision::default(),
            weights_fingerprint: w.fingerprint(),
        })
    }

    /// The same model with its matmuls' activations at precision `p` (bf16-rounded for bf16
    /// weights, or f32 for quantized ones; the default is f32 and 8-bit respectively).
    pub fn with_precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// What a cache block's rows depend on: the weights, the configuration (RoPE scaling
    /// shapes the stored keys), the cache layout and this engine's row format. Blocks kept on
    /// disk are keyed by it, so they are never served to another model or layout.
    pub fn cache_fingerprint(&self, dtype: CacheDtype) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(b"deepseek-rs cache rows v1");
        h.update(self.weights_fingerprint);
        h.update(format!("{:?}", self.config).as_bytes());
        h.update(format!("{:?}", self.cache_shape(dtype)).as_bytes());
        h.finalize()[..16].try_into().unwrap()
    }

    /// The rows this model's cache holds, stored as `dtype` (f32, bf16, or 8-bit with
    /// `--cache-type q8`).
    pub fn cache_shape(&self, dtype: CacheDtype) -> CacheShape {
        CacheShape {
            layers: self.config.num_hidden_layers,
            row_width: self.config.cache_row_width(),
            dtype,
        }
    }

    /// A cache pool for this model that can hold `max_tokens` tokens in all, rows as `dtype`.
    pub fn new_cache_pool(&self, max_tokens: usize, dtype: CacheDtype) -> BlockPool {
        BlockPool::new(
            self.cache_shape(dtype),
            max_tokens.div_ceil(deepseek_cache::BLOCK_TOKENS).max(1),
        )
    }

    /// Parameter counts: (total, active per token). Active counts the chosen routed experts
    /// (num_experts_per_tok of them) and everything else except the embedding table.
    pub fn parameter_counts(&self) -> (usize, usize) {
        let (mut total, mut active) = (self.embed_tokens.rows * self.embed_tokens.cols, 0);
        self.for_each_weight(&mut |m, share| {
            let p = (m.rows * m.cols) as f64;
            total += p as usize;
            active += (p * share) as usize;
        });
        (total, active)
    }

    /// Bytes of weights one decode token reads (embedding row excluded).
    pub fn active_weight_bytes(&self) -> usize {
        let mut b = 0.0;
        self.for_each_weight(&mut |m, share| b += m.size_bytes() as f64 * share);
        b as usize
    }

    /// Bytes of every weight the model holds, in the layout it holds them (repacked or
    /// widened quantized rows, matrices rebuilt at load included): what a fully resident model
    /// occupies, the yardstick for its peak RSS.
    pub fn held_weight_bytes(&self) -> usize {
        let mut b = self.embed_tokens.size_bytes() + 4 * self.norm.len();
        self.for_each_weight(&mut |m, _| b += m.size_bytes());
        for l in &self.layers {
            b += 4 * (l.input_layernorm.len() + l.post_attention_layernorm.len());
            if let Attention::Mla(a) = &l.self_attn {
                b += a
                    .prefill_only_matrices()
                    .iter()
                    .map(|m| m.size_bytes())
                    .sum::<usize>();
            }
        }
        b
    }

    /// Every weight matrix except the embeddings, with the share of tokens that read it
    /// (k / n_routed for a routed expert, 1 otherwise).
    fn for_each_weight(&self, f: &mut dyn FnMut(&Matrix, f64)) {
        if !self.config.tie_word_embeddings {
            f(&self.lm_head, 1.0);
        }
        for l in &self.layers {
            match &l.self_attn {
                Attention::Mla(a) => a.matrices().into_iter().for_each(|m| f(m, 1.0)),
                Attention::Llama(a) => a.matrices().into_iter().for_each(|m| f(m, 1.0)),
            }
            match &l.mlp {
                FeedForward::Dense(m) => m.matrices().into_iter().for_each(|m| f(m, 1.0)),
                FeedForward::Moe(moe) => {
                    let share = moe.router.top_k() as f64 / moe.experts.len() as f64;
                    f(moe.router.weight(), 1.0);
                    for e in &moe.experts {
                        e.matrices().into_iter().for_each(|m| f(m, share));
                    }
                    if let Some(s) = &moe.shared_experts {
                        s.matrices().into_iter().for_each(|m| f(m, 1.0));
                    }
                }
            }
        }
    }

    /// Runs one step over the new tokens of every sequence in `seqs`, appending to their caches.
    /// Returns logits `[rows, vocab]`: every new token, or each sequence's last one.
    pub fn forward(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [SeqStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
        trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>, ModelError> {
        // The whole step on one of the pool's threads: a parallel region started from outside
        // the pool puts the caller to sleep until it ends and wakes it after, twice per region
        // (about 60 regions per decoded token).
        deepseek_kernels::threads::on_pool(|| {
            self.forward_on_pool(pool, seqs, logits_for, prefill, trace)
        })
    }

    fn forward_on_pool(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [SeqStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
        mut trace: Option<&mut Trace>,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let hid = c.hidden_size;
        let p = self.precision;
        for s in seqs.iter() {
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
                return Err(ModelError::TokenOutOfRange {
                    id,
                    vocab: c.vocab_size,
                });
            }
            let end = s.cache.len + s.tokens.len();
            if end > c.max_position_embeddings {
                return Err(ModelError::ContextExceeded {
                    pos: end,
                    max: c.max_position_embeddings,
                });
            }
        }
        for s in seqs.iter_mut() {
            let end = s.cache.len + s.tokens.len();
            pool.reserve(s.cache, end)?;
        }
        let batch = BatchLayout::new(seqs.iter().map(|s| (s.tokens.len(), s.cache.len)));
        let n = batch.tokens();
        // Absorbed when every sequence brings fewer new tokens than it will have in context
        // after this step would suggest decompressing is cheaper (decode, short chunks).
        let path = match prefill {
            PrefillPath::Absorbed => AttentionPath::Absorbed,
            PrefillPath::Decompressed => AttentionPath::Decompressed,
            PrefillPath::Auto => {
                if seqs.iter().all(|s| s.tokens.len() <= s.cache.len.max(1)) {
                    AttentionPath::Absorbed
                } else {
                    AttentionPath::Decompressed
                }
            }
        };

        let mut x = vec![0.0; n * hid];
        let tokens: Vec<u32> = seqs.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        for (t, &id) in tokens.iter().enumerate() {
            self.embed_tokens
                .row_f32(id as usize, &mut x[t * hid..(t + 1) * hid]);
        }
        if let Some(tr) = trace.as_deref_mut() {
            tr.resid.push(x.clone());
        }
        let mut caches: Vec<&mut SequenceCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
        let mut h = vec![0.0; n * hid];
        let mut o = vec![0.0; n * hid];
        for (li, layer) in self.layers.iter().enumerate() {
            rms_norm(&x, &layer.input_layernorm, c.rms_norm_eps, &mut h);
            match &layer.self_attn {
                Attention::Mla(a) => {
                    a.forward(&h, &batch, li, &self.rope, pool, &caches, path, p, &mut o)
                }
                Attention::Llama(a) => {
                    a.forward(&h, &batch, li, &self.rope, pool, &caches, p, &mut o)
                }
            }
            add_inplace(&mut x, &o);
            rms_norm(&x, &layer.post_attention_layernorm, c.rms_norm_eps, &mut h);
            match &layer.mlp {
                FeedForward::Dense(m) => {
                    m.forward(&h, n, &mut o, p);
                    if let Some(tr) = trace.as_deref_mut() {
                        tr.routing.push(vec![]);
                        tr.router_logits.push(vec![]);
                    }
                }
                FeedForward::Moe(m) => {
                    let routing = m.forward(&h, n, &mut o, p);
                    if let Some(tr) = trace.as_deref_mut() {
                        tr.router_logits.push(m.router.logits(&h, n, p));
                        tr.routing.push(routing);
                    }
                }
            }
            add_inplace(&mut x, &o);
            if let Some(tr) = trace.as_deref_mut() {
                tr.resid.push(x.clone());
            }
        }
        for (si, s) in caches.iter_mut().enumerate() {
            s.len += batch.tokens_of(si).len();
        }
        let rows: Vec<usize> = match logits_for {
            LogitsFor::AllTokens => (0..n).collect(),
            LogitsFor::LastToken => (0..batch.sequences())
                .filter_map(|s| batch.tokens_of(s).last())
                .collect(),
        };
        let mut normed = vec![0.0; rows.len() * hid];
        for (i, &t) in rows.iter().enumerate() {
            rms_norm(
                &x[t * hid..(t + 1) * hid],
                &self.norm,
                c.rms_norm_eps,
                &mut normed[i * hid..(i + 1) * hid],
            );
        }
        if let Some(tr) = trace {
            tr.final_norm = normed.clone();
        }
        let mut logits = vec![0.0; rows.len() * c.vocab_size];
        matmul(&self.lm_head, &normed, rows.len(), &mut logits, p);
        Ok(logits)
    }
}
