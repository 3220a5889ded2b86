//! The generation loop for one sequence: prefill the prompt (in chunks), then decode token by
//! token through the latent cache, streaming text pieces as they complete.

use std::sync::Arc;

use deepseek_cache::{BlockPool, SequenceCache};
use deepseek_model::{LogitsFor, Model, ModelError, PrefillPath, SeqStep};

use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
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
}

impl Generator {
    pub fn new(model: Arc<Model>, tokenizer: Option<Arc<Tokenizer>>) -> Self {
        Generator { model, tokenizer }
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
        let mut pool = model.new_cache_pool(total.min(max_ctx));
        let mut cache = SequenceCache::default();
        let mut sampler = Sampler::new(opts.sampling.clone());
        let eos = self.eos_ids();

        let mut logits = prefill(model, &mut pool, &mut cache, prompt)?;
        let mut history = prompt.to_vec();
        let mut out_ids = vec![];
        let mut text = String::new();
        let mut emitted = 0;
        let mut decoder = StreamDecoder::new(true);
        let mut finish = FinishReason::Length;
        for step in 0..opts.max_new_tokens {
            let next = sampler.sample(&logits, &history);
            if opts.stop_on_eos && eos.contains(&next) {
                finish = FinishReason::Stop;
                break;
            }
            out_ids.push(next);
            history.push(next);
            if let Some(tok) = &self.tokenizer {
                if let Some(piece) = decoder.push(tok, next)? {
                    text.push_str(&piece);
                    if let Some(cut) = opts
                        .stop
                        .iter()
                        .filter(|s| !s.is_empty())
                        .filter_map(|s| text.find(s.as_str()))
                        .min()
                    {
                        text.truncate(cut);
                        if text.len() > emitted {
                            on_text(&text[emitted..]);
                        }
                        emitted = text.len();
                        finish = FinishReason::Stop;
                        break;
                    }
                    let safe = text.len() - held_back(&text, &opts.stop);
                    if safe > emitted {
                        on_text(&text[emitted..safe]);
                        emitted = safe;
                    }
                }
            }
            if step + 1 == opts.max_new_tokens || cache.len >= max_ctx {
                break;
            }
            logits = model.forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: &[next],
                    cache: &mut cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
                None,
            )?;
        }
        if text.len() > emitted {
            on_text(&text[emitted..]);
        }
        Ok(Generated {
            prompt_tokens: prompt.len(),
            token_ids: out_ids,
            text,
            finish_reason: finish,
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

/// Bytes at the end of `text` that could be the start of a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len().min(text.len() + 1)).rev() {
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    // Keep the cut on a character boundary.
    while hold > 0 && !text.is_char_boundary(text.len() - hold) {
        hold += 1;
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stops = vec!["\nclass".to_string(), "END".to_string()];
        assert_eq!(held_back("abc\ncl", &stops), 3);
        assert_eq!(held_back("abcEN", &stops), 2);
        assert_eq!(held_back("abc", &stops), 0);
    }
}
