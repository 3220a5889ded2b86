//! The decoder stack: embeddings → layers (attention + dense MLP or MoE) → norm → lm_head.

use std::path::Path;
use std::sync::Arc;

use deepseek_cache::{BlockPool, CacheDtype, CacheError, CacheShape, SequenceCache};
use deepseek_kernels::ops::rms_norm;
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{LoadError, ModelConfig, WeightStore};

use crate::batch::BatchLayout;
use crate::expert_parallel::ExpertParallel;
use crate::layer::{DecoderLayer, LayerContext};
use crate::mla::AttentionPath;
use crate::mtp::MtpModule;
use crate::observe::MatmulObserver;
use crate::rope::Rope;
use crate::trace::Trace;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("token id {id} is out of range: the vocabulary has {vocab} tokens (ids 0..{})", vocab - 1)]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("this checkpoint has no multi-token-prediction module (num_nextn_predict_layers is 0, or the file leaves its `model.layers.N` / `blk.N.nextn` tensors out)")]
    NoMtp,
    #[error(
        "position {pos} is beyond the model's context of {max} tokens (max_position_embeddings)"
    )]
    ContextExceeded { pos: usize, max: usize },
}

pub struct Model {
    pub config: ModelConfig,
    pub embed_tokens: Matrix,
    pub layers: Vec<DecoderLayer>,
    pub norm: Vec<f32>,
    pub lm_head: Matrix,
    /// DeepSeek-V3's multi-token-prediction module, where the checkpoint has one: drafts for
    /// speculative decoding ([`Model::mtp_forward`]).
    pub mtp: Option<MtpModule>,
    rope: Rope,
    /// How activations meet the weights in every matmul ([`Model::with_precision`]).
    precision: Precision,
    /// The weights' identity ([`WeightStore::fingerprint`]).
    pub weights_fingerprint: [u8; 32],
    /// Where the routed experts live when they are split across processes (rank 0's view);
    /// None when this process holds them all.
    expert_parallel: Option<Arc<ExpertParallel>>,
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

/// One sequence's part of a step: its new tokens and its cache.
pub struct SeqStep<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut SequenceCache,
}

impl Model {
    /// RoPE's frequencies and magnitude (YaRN included) for this model.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

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
        Self::from_store_with_experts(config, w, progress, None)
    }

    /// [`Model::from_store`] for rank 0 of expert parallelism: only the routed experts `ep`
    /// places here are loaded, and every MoE layer asks the other ranks for the rest.
    pub fn from_store_with_experts(
        config: ModelConfig,
        w: &WeightStore,
        progress: &mut dyn FnMut(usize, usize),
        ep: Option<Arc<ExpertParallel>>,
    ) -> Result<Self, LoadError> {
        let c = &config;
        let (v, hid) = (c.vocab_size, c.hidden_size);
        let embed_tokens = w.matrix("model.embed_tokens.weight", v, hid)?;
        // Nothing is sized by the config before the checkpoint shows it holds that much: a
        // layer count of a billion must be an error naming the field, not an allocation abort.
        let layer_norm = |i: usize| format!("model.layers.{i}.input_layernorm.weight");
        if !w.contains(&layer_norm(c.num_hidden_layers - 1)) {
            let blocks = (0..).take_while(|&i| w.contains(&layer_norm(i))).count();
            // Multi-token-prediction blocks after the main stack are not main layers.
            let mtp = (0..blocks)
                .filter(|i| w.contains(&format!("model.layers.{i}.eh_proj.weight")))
                .count();
            let and_mtp = match mtp {
                0 => String::new(),
                n => format!(" and {n} multi-token-prediction module"),
            };
            return Err(LoadError::config(
                "num_hidden_layers",
                format!(
                    "is {} (GGUF: block_count), but the checkpoint holds {} layers{and_mtp} (it has no `{}`)",
                    c.num_hidden_layers,
                    blocks - mtp,
                    layer_norm(c.num_hidden_layers - 1)
                ),
            ));
        }
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            layers.push(DecoderLayer::load(w, c, i, ep.as_deref())?);
            progress(i + 1, c.num_hidden_layers);
        }
        let mtp = MtpModule::load(w, c, ep.as_deref())?;
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
            mtp,
            config,
            precision: Precision::default(),
            weights_fingerprint: w.fingerprint(),
            expert_parallel: ep,
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

    /// The expert-parallel group this model's MoE layers exchange with, on rank 0.
    pub fn expert_parallel(&self) -> Option<&ExpertParallel> {
        self.expert_parallel.as_deref()
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
            // The multi-token-prediction block keeps its rows as one more layer.
            layers: self.config.num_hidden_layers + usize::from(self.mtp.is_some()),
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
        b += self.layers.iter().map(|l| l.other_bytes()).sum::<usize>();
        if let Some(mtp) = &self.mtp {
            mtp.for_each_weight(&mut |m, _| b += m.size_bytes());
            b += mtp.other_bytes();
        }
        b
    }

    /// Bytes of each routed expert, by expert id, summed over the MoE layers (the
    /// multi-token-prediction block's too): what the rank holding that id holds of it under
    /// expert parallelism. Empty for a dense model.
    pub fn routed_expert_bytes(&self) -> Vec<usize> {
        let blocks = self
            .layers
            .iter()
            .chain(self.mtp.as_ref().map(|m| &m.block));
        let mut bytes = vec![];
        for l in blocks {
            if let crate::layer::FeedForward::Moe(moe) = &l.mlp {
                bytes.resize(moe.experts.len(), 0);
                for (b, e) in bytes.iter_mut().zip(&moe.experts) {
                    *b += e.as_ref().map_or(0, |e| e.weight_bytes());
                }
            }
        }
        bytes
    }

    /// Every weight matrix of the main stack except the embeddings, with the share of tokens
    /// that read it (k / n_routed for a routed expert, 1 otherwise).
    pub(crate) fn for_each_weight(&self, f: &mut dyn FnMut(&Matrix, f64)) {
        if !self.config.tie_word_embeddings {
            f(&self.lm_head, 1.0);
        }
        for l in &self.layers {
            l.for_each_weight(f);
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
        let step = self.step(pool, seqs, logits_for, prefill, false, trace, None)?;
        Ok(step.logits)
    }

    /// Runs one sequence's `tokens` from an empty `cache` with `observer` shown the input of
    /// every matrix product (`deepseek imatrix`): the main stack's, then the
    /// multi-token-prediction module's where there is one (positions up to the last but one,
    /// each with the token after it).
    pub fn forward_observed(
        &self,
        pool: &mut BlockPool,
        tokens: &[u32],
        cache: &mut SequenceCache,
        observer: &dyn MatmulObserver,
    ) -> Result<(), ModelError> {
        let out = self.step(
            pool,
            &mut [SeqStep { tokens, cache }],
            LogitsFor::LastToken,
            PrefillPath::Auto,
            self.mtp.is_some(),
            None,
            Some(observer),
        )?;
        if self.mtp.is_some() && tokens.len() > 1 {
            let n = tokens.len() - 1;
            let hid = self.config.hidden_size;
            self.mtp_step(
                pool,
                &mut [MtpStep {
                    next: &tokens[1..],
                    hidden: &out.hidden[..n * hid],
                    start: 0,
                    cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
                Some(observer),
            )?;
        }
        Ok(())
    }

    /// [`Model::forward`], with the hidden states too when `keep_hidden`.
    pub fn step_output(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [SeqStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
        keep_hidden: bool,
    ) -> Result<StepOutput, ModelError> {
        self.step(pool, seqs, logits_for, prefill, keep_hidden, None, None)
    }

    /// [`Model::forward`], also returning every new token's final-normed hidden state: what
    /// the multi-token-prediction module continues from ([`Model::mtp_forward`]).
    pub fn forward_with_hidden(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [SeqStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
    ) -> Result<StepOutput, ModelError> {
        self.step(pool, seqs, logits_for, prefill, true, None, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [SeqStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
        keep_hidden: bool,
        trace: Option<&mut Trace>,
        observer: Option<&dyn MatmulObserver>,
    ) -> Result<StepOutput, ModelError> {
        // The whole step on one of the pool's threads: a parallel region started from outside
        // the pool puts the caller to sleep until it ends and wakes it after, twice per region
        // (about 60 regions per decoded token).
        deepseek_kernels::threads::on_pool(|| {
            self.step_on_pool(
                pool,
                seqs,
                logits_for,
                prefill,
                keep_hidden,
                trace,
                observer,
            )
        })
    }

    /// Refuses tokens outside the vocabulary and steps past the context.
    fn check(&self, tokens: &[u32], end: usize) -> Result<(), ModelError> {
        let c = &self.config;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: c.vocab_size,
            });
        }
        if end > c.max_position_embeddings {
            return Err(ModelError::ContextExceeded {
                pos: end,
                max: c.max_position_embeddings,
            });
        }
        Ok(())
    }

    /// Absorbed when every sequence brings fewer new tokens than it will have in context after
    /// this step would suggest decompressing is cheaper (decode, short chunks).
    fn attention_path(
        prefill: PrefillPath,
        seqs: impl Iterator<Item = (usize, usize)>,
    ) -> AttentionPath {
        match prefill {
            PrefillPath::Absorbed => AttentionPath::Absorbed,
            PrefillPath::Decompressed => AttentionPath::Decompressed,
            PrefillPath::Auto => {
                let mut seqs = seqs;
                if seqs.all(|(new, cached)| new <= cached.max(1)) {
                    AttentionPath::Absorbed
                } else {
                    AttentionPath::Decompressed
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn step_on_pool(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [SeqStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
        keep_hidden: bool,
        mut trace: Option<&mut Trace>,
        observer: Option<&dyn MatmulObserver>,
    ) -> Result<StepOutput, ModelError> {
        let c = &self.config;
        let hid = c.hidden_size;
        for s in seqs.iter() {
            self.check(s.tokens, s.cache.len + s.tokens.len())?;
        }
        for s in seqs.iter_mut() {
            let end = s.cache.len + s.tokens.len();
            pool.reserve(s.cache, end)?;
        }
        let batch = BatchLayout::new(seqs.iter().map(|s| (s.tokens.len(), s.cache.len)));
        let n = batch.tokens();
        let path =
            Self::attention_path(prefill, seqs.iter().map(|s| (s.tokens.len(), s.cache.len)));

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
        let cx = LayerContext {
            batch: &batch,
            rope: &self.rope,
            caches: &caches,
            path,
            precision: self.precision,
            observer,
            experts: self.expert_parallel.as_deref(),
        };
        for (li, layer) in self.layers.iter().enumerate() {
            layer.forward(&mut x, li, &cx, pool, c.rms_norm_eps, trace.as_deref_mut());
            if let Some(tr) = trace.as_deref_mut() {
                tr.resid.push(x.clone());
            }
        }
        for (si, s) in caches.iter_mut().enumerate() {
            s.len += batch.tokens_of(si).len();
        }
        let rows = logit_rows(&batch, logits_for);
        // The final norm of the rows that get logits, or of every token when asked for.
        let normed_all = keep_hidden.then(|| self.final_norm(&x, 0..n));
        let normed = match &normed_all {
            Some(all) => rows
                .iter()
                .flat_map(|&t| all[t * hid..(t + 1) * hid].iter().copied())
                .collect(),
            None => self.final_norm_rows(&x, &rows),
        };
        if let Some(tr) = trace {
            tr.final_norm = normed.clone();
        }
        let mut logits = vec![0.0; rows.len() * c.vocab_size];
        matmul(
            &self.lm_head,
            &normed,
            rows.len(),
            &mut logits,
            self.precision,
        );
        Ok(StepOutput {
            logits,
            hidden: normed_all.unwrap_or_default(),
        })
    }

    fn final_norm(&self, x: &[f32], rows: std::ops::Range<usize>) -> Vec<f32> {
        self.final_norm_rows(x, &rows.collect::<Vec<_>>())
    }

    fn final_norm_rows(&self, x: &[f32], rows: &[usize]) -> Vec<f32> {
        let hid = self.config.hidden_size;
        let mut normed = vec![0.0; rows.len() * hid];
        for (i, &t) in rows.iter().enumerate() {
            rms_norm(
                &x[t * hid..(t + 1) * hid],
                &self.norm,
                self.config.rms_norm_eps,
                &mut normed[i * hid..(i + 1) * hid],
            );
        }
        normed
    }

    /// One step of the multi-token-prediction module over each sequence's positions
    /// `start..start + next.len()`: position i takes the hidden state there (the main model's
    /// from [`Model::forward_with_hidden`], or the module's own from an earlier draft) and the
    /// token that follows it, and predicts the one after. Writes the module's cache rows at those
    /// positions (reserving them when they lie past what the main model holds, as chained drafts
    /// do; the cache length is not changed). The module's rows before `start` must be written. Returns logits for `logits_for` and every position's new hidden state.
    /// An error when the model has no module.
    pub fn mtp_forward(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [MtpStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
    ) -> Result<StepOutput, ModelError> {
        self.mtp_step(pool, seqs, logits_for, prefill, None)
    }

    fn mtp_step(
        &self,
        pool: &mut BlockPool,
        seqs: &mut [MtpStep],
        logits_for: LogitsFor,
        prefill: PrefillPath,
        observer: Option<&dyn MatmulObserver>,
    ) -> Result<StepOutput, ModelError> {
        let Some(mtp) = &self.mtp else {
            return Err(ModelError::NoMtp);
        };
        let c = &self.config;
        let hid = c.hidden_size;
        for s in seqs.iter_mut() {
            let end = s.start + s.next.len();
            self.check(s.next, end)?;
            assert_eq!(
                s.hidden.len(),
                s.next.len() * hid,
                "one hidden row per token"
            );
            pool.reserve(s.cache, end)?;
        }
        deepseek_kernels::threads::on_pool(|| {
            let batch = BatchLayout::new(seqs.iter().map(|s| (s.next.len(), s.start)));
            let path = Self::attention_path(prefill, seqs.iter().map(|s| (s.next.len(), s.start)));
            let next: Vec<u32> = seqs.iter().flat_map(|s| s.next.iter().copied()).collect();
            let hidden: Vec<f32> = seqs.iter().flat_map(|s| s.hidden.iter().copied()).collect();
            let mut x = mtp.input(
                &self.embed_tokens,
                &next,
                &hidden,
                c.rms_norm_eps,
                self.precision,
                observer,
            );
            let caches: Vec<&mut SequenceCache> = seqs.iter_mut().map(|s| &mut *s.cache).collect();
            let cx = LayerContext {
                batch: &batch,
                rope: &self.rope,
                caches: &caches,
                path,
                precision: self.precision,
                observer,
                experts: self.expert_parallel.as_deref(),
            };
            mtp.run_block(&mut x, &cx, pool, c.rms_norm_eps);
            let normed = mtp.head_norm(&x, c.rms_norm_eps);
            let rows = logit_rows(&batch, logits_for);
            let picked: Vec<f32> = rows
                .iter()
                .flat_map(|&t| normed[t * hid..(t + 1) * hid].iter().copied())
                .collect();
            Ok(StepOutput {
                logits: mtp.logits(&self.lm_head, &picked, self.precision),
                hidden: normed,
            })
        })
    }
}

/// One sequence's part of a multi-token-prediction step ([`Model::mtp_forward`]).
pub struct MtpStep<'a> {
    /// The token following each position.
    pub next: &'a [u32],
    /// `[next.len(), hidden]`: the hidden state at each position.
    pub hidden: &'a [f32],
    /// The first position.
    pub start: usize,
    pub cache: &'a mut SequenceCache,
}

/// What a step returns.
pub struct StepOutput {
    /// `[rows, vocab]`, rows as [`LogitsFor`] asked.
    pub logits: Vec<f32>,
    /// `[tokens, hidden]`: every token's final-normed hidden state (empty unless asked for).
    pub hidden: Vec<f32>,
}

/// The batch rows that get logits.
fn logit_rows(batch: &BatchLayout, logits_for: LogitsFor) -> Vec<usize> {
    match logits_for {
        LogitsFor::AllTokens => (0..batch.tokens()).collect(),
        LogitsFor::LastToken => (0..batch.sequences())
            .filter_map(|s| batch.tokens_of(s).last())
            .collect(),
    }
}
