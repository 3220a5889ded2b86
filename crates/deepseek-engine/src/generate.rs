//! Generation for one sequence: prefill the prompt (in chunks), then decode token by token
//! through the latent cache, streaming text pieces as they complete. What each sampled token
//! does is [`SequenceState`]'s to decide, as in the scheduler.

use std::sync::Arc;

use deepseek_cache::{BlockPool, CacheDtype, SequenceCache};
use deepseek_model::{LogitsFor, Model, ModelError, PrefillPath, SeqStep};

use crate::sampler::SamplingParams;
use crate::sequence::{Accepted, Failure, FinishReason, Limits, SequenceState};
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// Prompt tokens per prefill step: bounds activation memory on long prompts.
pub const PREFILL_CHUNK: usize = 512;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Generation stops when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Stop on the model's end-of-sequence tokens.
    pub stop_on_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            sampling: SamplingParams::default(),
            stop: vec![],
            stop_on_eos: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generated {
    pub prompt_tokens: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
}

pub struct Generator {
    pub model: Arc<Model>,
    pub tokenizer: Option<Arc<Tokenizer>>,
    /// How the cache of each generation stores rows.
    pub cache_dtype: CacheDtype,
}

impl Generator {
    /// A generator whose caches hold f32 rows (see [`Generator::with_cache_dtype`]).
    pub fn new(model: Arc<Model>, tokenizer: Option<Arc<Tokenizer>>) -> Self {
        Generator {
            model,
            tokenizer,
            cache_dtype: CacheDtype::F32,
        }
    }

    /// The same generator with caches storing rows as `dtype` (`--cache-type`).
    pub fn with_cache_dtype(mut self, dtype: CacheDtype) -> Self {
        self.cache_dtype = dtype;
        self
    }

    /// End-of-sequence ids: the config's plus the tokenizer's.
    pub fn eos_ids(&self) -> Vec<u32> {
        let mut v = self.model.config.eos_token_ids.clone();
        if let Some(e) = self.tokenizer.as_ref().and_then(|t| t.eos_id) {
            if !v.contains(&e) {
                v.push(e);
            }
        }
        v
    }

    /// Generates from `prompt` ids; `on_text` receives each completed text piece (stop strings
    /// are held back until it is clear they do not match).
    pub fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generated, EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::Input(
                "the prompt is empty: give at least one token".into(),
            ));
        }
        let model = &self.model;
        let max_ctx = model.config.max_position_embeddings;
        let total = prompt.len() + opts.max_new_tokens;
        let mut pool = model.new_cache_pool(total.min(max_ctx), self.cache_dtype);
        let mut cache = SequenceCache::default();
        let limits = Limits {
            max_new_tokens: opts.max_new_tokens,
            max_context: max_ctx,
            stop_on_eos: opts.stop_on_eos,
            eos_ids: self.eos_ids(),
        };
        let mut seq = SequenceState::new(
            prompt.to_vec(),
            opts.sampling.clone(),
            &opts.stop,
            true,
            limits,
            None,
        );
        let mut logits = prefill(model, &mut pool, &mut cache, prompt)?;
        let finish_reason = loop {
            match seq.accept(&logits, self.tokenizer.as_deref()) {
                Accepted::Continue { token, text } => {
                    if !text.is_empty() {
                        on_text(&text);
                    }
                    logits = model.forward(
                        &mut pool,
                        &mut [SeqStep {
                            tokens: &[token],
                            cache: &mut cache,
                        }],
                        LogitsFor::LastToken,
                        PrefillPath::Auto,
                        None,
                    )?;
                }
                Accepted::Finished {
                    token,
                    reason,
                    tail,
                } => {
                    for piece in [token.map(|t| t.1).unwrap_or_default(), tail] {
                        if !piece.is_empty() {
                            on_text(&piece);
                        }
                    }
                    break reason;
                }
                Accepted::Failed(Failure::Unsatisfiable(m)) => return Err(EngineError::Input(m)),
                Accepted::Failed(f) => return Err(EngineError::Internal(f.to_string())),
            }
        };
        Ok(Generated {
            prompt_tokens: prompt.len(),
            token_ids: seq.output().to_vec(),
            text: seq.text().to_string(),
            finish_reason,
        })
    }
}

/// Runs `tokens` into `cache` in chunks of [`PREFILL_CHUNK`]; returns the last token's logits.
pub fn prefill(
    model: &Model,
    pool: &mut BlockPool,
    cache: &mut SequenceCache,
    tokens: &[u32],
) -> Result<Vec<f32>, ModelError> {
    let mut logits = vec![];
    for chunk in tokens.chunks(PREFILL_CHUNK) {
        logits = model.forward(
            pool,
            &mut [SeqStep {
                tokens: chunk,
                cache,
            }],
            LogitsFor::LastToken,
            PrefillPath::Auto,
            None,
        )?;
    }
    Ok(logits)
}
