//! Generation for one sequence: prefill the prompt (in chunks), then decode token by token
//! through the latent cache, streaming text pieces as they complete. What each sampled token
//! does is [`SequenceState`]'s to decide, as in the scheduler.

use std::sync::Arc;

use deepseek_cache::{BlockPool, CacheDtype, SequenceCache};
use deepseek_model::{LogitsFor, Model, ModelError, PrefillPath, SeqStep};

use crate::draft::{
    self, mtp_drafts, DraftMethod, DraftOptions, MtpDraftRequest, MtpDrafter, LOOKUP_MAX_NGRAM,
};
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
    /// Speculative decoding: draft tokens checked several per step (None: one token a step).
    /// The output is the same either way; only the number of steps changes.
    pub draft: Option<DraftOptions>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            sampling: SamplingParams::default(),
            stop: vec![],
            stop_on_eos: true,
            draft: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Generated {
    pub prompt_tokens: usize,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Forward steps after the prompt's: one per output token without drafts, fewer with.
    pub steps: usize,
    /// Draft tokens checked, and how many of them the model agreed with.
    pub draft_proposed: usize,
    pub draft_accepted: usize,
    /// Steps that checked at least one draft, and those whose first draft was accepted.
    pub draft_steps: usize,
    pub first_draft_accepted: usize,
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
        if let Some(why) = opts.draft.and_then(|d| d.method.unsupported_by(model)) {
            return Err(EngineError::Input(format!("--draft mtp: {why}")));
        }
        let mtp = matches!(opts.draft, Some(d) if d.method == DraftMethod::Mtp);
        let mut drafter = MtpDrafter::default();
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
        let tok = self.tokenizer.as_deref();
        let logits = match mtp {
            true => prefill_with_drafter(model, &mut pool, &mut cache, prompt, &mut drafter)?,
            false => prefill(model, &mut pool, &mut cache, prompt)?,
        };
        let (mut steps, mut proposed, mut accepted) = (0, 0, 0);
        let (mut draft_steps, mut first_accepted) = (0, 0);
        let mut emit = |text: &str| {
            if !text.is_empty() {
                on_text(text)
            }
        };
        // `next`: what the last logits said; a token goes on only while the sequence continues.
        let mut next = seq.accept(&logits, tok);
        let finish_reason = loop {
            let token = match next {
                Accepted::Continue { token, text } => {
                    emit(&text);
                    token
                }
                Accepted::Finished {
                    token,
                    reason,
                    tail,
                } => {
                    emit(&token.map(|t| t.1).unwrap_or_default());
                    emit(&tail);
                    break reason;
                }
                Accepted::Failed(Failure::Unsatisfiable(m)) => return Err(EngineError::Input(m)),
                Accepted::Failed(f) => return Err(EngineError::Internal(f.to_string())),
            };
            // `token` is sampled, not yet in the cache. Drafts follow it: as many as the context
            // has rows for and the output has tokens left for.
            let drafts = match opts.draft {
                Some(d) => {
                    let room = max_ctx.saturating_sub(cache.len + 1);
                    let left = opts.max_new_tokens.saturating_sub(seq.generated);
                    let k = d.max_tokens.min(room).min(left);
                    match d.method {
                        DraftMethod::Lookup => draft::lookup(&seq.tokens, LOOKUP_MAX_NGRAM, k),
                        DraftMethod::Mtp => mtp_drafts(
                            model,
                            &mut pool,
                            &mut [MtpDraftRequest {
                                drafter: &mut drafter,
                                cache: &mut cache,
                                token,
                                k,
                            }],
                        )?
                        .remove(0),
                    }
                }
                None => vec![],
            };
            let mut step = Vec::with_capacity(1 + drafts.len());
            step.push(token);
            step.extend_from_slice(&drafts);
            let base = cache.len;
            // The decode step's attention for every token (absorbed, as one token's), so a
            // verified token sees what it would have seen alone.
            let out = model.step_output(
                &mut pool,
                &mut [SeqStep {
                    tokens: &step,
                    cache: &mut cache,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Absorbed,
                mtp,
            )?;
            let all = &out.logits;
            steps += 1;
            proposed += drafts.len();
            // Row i of `all`: the logits after step[i]. The model's own choice after each row
            // either matches the next draft (kept, go on) or replaces it (the rest dropped).
            let vocab = model.config.vocab_size;
            let mut i = 0;
            next = loop {
                let a = seq.accept(&all[i * vocab..(i + 1) * vocab], tok);
                match &a {
                    Accepted::Continue { token, text }
                        if i < drafts.len() && *token == drafts[i] =>
                    {
                        emit(text);
                        accepted += 1;
                        i += 1;
                    }
                    _ => break a,
                }
            };
            if !drafts.is_empty() {
                draft_steps += 1;
                first_accepted += usize::from(i > 0);
            }
            // The cache keeps `token` and the drafts the model agreed with.
            pool.truncate(&mut cache, base + 1 + i)
                .map_err(|e| EngineError::Model(e.into()))?;
            if mtp {
                let hid = model.config.hidden_size;
                let kept = &out.hidden[..(i + 1) * hid];
                drafter.add(model, &mut pool, &mut cache, base, kept, &step[1..=i])?;
            }
        };
        Ok(Generated {
            prompt_tokens: prompt.len(),
            token_ids: seq.output().to_vec(),
            text: seq.text().to_string(),
            finish_reason,
            steps,
            draft_proposed: proposed,
            draft_accepted: accepted,
            draft_steps,
            first_draft_accepted: first_accepted,
        })
    }
}

/// [`prefill`], handing each chunk's hidden states to the multi-token-prediction drafter.
fn prefill_with_drafter(
    model: &Model,
    pool: &mut BlockPool,
    cache: &mut SequenceCache,
    tokens: &[u32],
    drafter: &mut MtpDrafter,
) -> Result<Vec<f32>, ModelError> {
    let mut logits = vec![];
    for (c, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
        let start = c * PREFILL_CHUNK;
        let out = model.forward_with_hidden(
            pool,
            &mut [SeqStep {
                tokens: chunk,
                cache,
            }],
            LogitsFor::LastToken,
            PrefillPath::Auto,
        )?;
        let following = &tokens[start + 1..(start + chunk.len() + 1).min(tokens.len())];
        drafter.add(model, pool, cache, start, &out.hidden, following)?;
        logits = out.logits;
    }
    Ok(logits)
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
