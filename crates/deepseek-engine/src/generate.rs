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
        let mut text = TextOutput::new(&opts.stop, true);
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
                let (piece, stopped) = text.push(tok, next)?;
                if !piece.is_empty() {
                    on_text(&piece);
                }
                if stopped {
                    finish = FinishReason::Stop;
                    break;
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
        let tail = text.flush();
        if !tail.is_empty() {
            on_text(&tail);
        }
        let text = text.into_text();
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

/// Generated ids as text, released in pieces that never split a character nor show the start
/// of a stop string before it is clear the stop string does not follow.
pub struct TextOutput {
    decoder: StreamDecoder,
    stop: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl TextOutput {
    pub fn new(stop: &[String], skip_special: bool) -> Self {
        TextOutput {
            decoder: StreamDecoder::new(skip_special),
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds token `id`; returns the text now safe to show and whether a stop string ended the
    /// text (which is then cut before it).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<(String, bool), EngineError> {
        if self.stopped {
            return Ok((String::new(), true));
        }
        let Some(piece) = self.decoder.push(tok, id)? else {
            return Ok((String::new(), false));
        };
        // Search only where a new match can be: the new piece and a stop string's length before.
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(&piece);
        if let Some(cut) = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
        {
            self.text.truncate(cut.max(self.emitted));
            self.stopped = true;
            return Ok((self.flush(), true));
        }
        let safe = self.text.len() - held_back(&self.text, &self.stop);
        let out = if safe > self.emitted {
            self.text[self.emitted..safe].to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(safe);
        Ok((out, false))
    }

    /// Whatever was held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }
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
