//! One sequence's decoding state, shared by the single-sequence [`crate::Generator`] and the
//! batching [`crate::scheduler`]: every rule that decides what a sampled token does (end of
//! sequence, stop strings, JSON mode, `max_tokens`, the context length) lives here once.

use crate::json_mode::OutputConstraint;
use crate::sampler::{Sampler, SamplingParams};
use crate::text_output::TextOutput;
use crate::tokenizer::Tokenizer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or stop string.
    Stop,
    /// `max_new_tokens` or the model's context length reached.
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

/// Why the engine gave up on a request, so the server can answer with the right status
/// instead of calling everything a server error.
#[derive(Clone, Debug, PartialEq)]
pub enum Failure {
    /// The server is stopping (503: the client may retry elsewhere or later).
    ShuttingDown,
    /// The request asks for what this model cannot give (400), e.g. JSON mode with a
    /// vocabulary that has no token to continue the output.
    Unsatisfiable(String),
    /// The forward pass or the tokenizer failed: the server's fault (500).
    Internal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::ShuttingDown => f.write_str("the server is shutting down"),
            Failure::Unsatisfiable(m) | Failure::Internal(m) => f.write_str(m),
        }
    }
}

/// When a sequence stops on its own.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// The model's context length: prompt and generated tokens together never exceed it.
    pub max_context: usize,
    /// Stop on one of `eos_ids` (the token is not part of the output).
    pub stop_on_eos: bool,
    pub eos_ids: Vec<u32>,
}

/// What one sampled step did to the sequence.
#[derive(Debug, PartialEq)]
pub enum Accepted {
    /// `token` joins the output with the text it completed; run it through the model and call
    /// [`SequenceState::accept`] again with its logits.
    Continue {
        token: u32,
        text: String,
    },
    /// The sequence ended: `token` is the last token joining the output with its text (None
    /// when it ended without one: end of sequence, `max_tokens` 0, a complete JSON value),
    /// `tail` the text held back until now.
    Finished {
        token: Option<(u32, String)>,
        reason: FinishReason,
        tail: String,
    },
    Failed(Failure),
}

/// A sequence's tokens (prompt, then output), sampler, text and limits.
pub struct SequenceState {
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens generated so far.
    pub generated: usize,
    sampler: Sampler,
    text: TextOutput,
    limits: Limits,
    constraint: Option<OutputConstraint>,
}

impl SequenceState {
    /// `skip_special`: leave special tokens out of the text (the tokens stay in the output).
    pub fn new(
        prompt: Vec<u32>,
        sampling: SamplingParams,
        stop: &[String],
        skip_special: bool,
        limits: Limits,
        constraint: Option<OutputConstraint>,
    ) -> Self {
        SequenceState {
            prompt_len: prompt.len(),
            tokens: prompt,
            generated: 0,
            sampler: Sampler::new(sampling),
            text: TextOutput::new(stop, skip_special),
            limits,
            constraint,
        }
    }

    pub fn output(&self) -> &[u32] {
        &self.tokens[self.prompt_len..]
    }

    /// The text so far (without what a stop string cut).
    pub fn text(&self) -> &str {
        self.text.text()
    }

    /// Samples the next token from `logits` (the model's output after the last token) and
    /// decides what it does: continue, finish (saying why), or fail.
    pub fn accept(&mut self, logits: &[f32], tokenizer: Option<&Tokenizer>) -> Accepted {
        if self.generated >= self.limits.max_new_tokens {
            // max_tokens 0: the prompt only (scoring).
            return self.finish(None, FinishReason::Length);
        }
        // JSON mode: a complete value ends the output.
        if self.constraint.as_ref().is_some_and(|j| j.is_complete()) {
            return self.finish(None, FinishReason::Stop);
        }
        let next = match &self.constraint {
            Some(j) => {
                let allowed = |id: u32| j.allows(id);
                self.sampler
                    .sample_allowed(logits, &self.tokens, Some(&allowed))
            }
            None => self.sampler.sample(logits, &self.tokens),
        };
        if let Some(j) = &mut self.constraint {
            if !j.allows(next) {
                // No token can continue the JSON text (a vocabulary without the needed bytes).
                return Accepted::Failed(Failure::Unsatisfiable(
                    "JSON mode: no token of the vocabulary continues the output".into(),
                ));
            }
            j.advance(next);
        }
        if self.limits.stop_on_eos
            && self.constraint.is_none()
            && self.limits.eos_ids.contains(&next)
        {
            return self.finish(None, FinishReason::Stop);
        }
        self.tokens.push(next);
        self.generated += 1;
        let (text, stopped) = match tokenizer {
            Some(tok) => match self.text.push(tok, next) {
                Ok(r) => r,
                Err(e) => return Accepted::Failed(Failure::Internal(e.to_string())),
            },
            None => (String::new(), false),
        };
        if stopped || self.constraint.as_ref().is_some_and(|j| j.is_complete()) {
            self.finish(Some((next, text)), FinishReason::Stop)
        } else if self.generated >= self.limits.max_new_tokens
            || self.tokens.len() >= self.limits.max_context
        {
            self.finish(Some((next, text)), FinishReason::Length)
        } else {
            Accepted::Continue { token: next, text }
        }
    }

    fn finish(&mut self, token: Option<(u32, String)>, reason: FinishReason) -> Accepted {
        Accepted::Finished {
            token,
            reason,
            tail: self.text.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Greedy over 4 tokens: `logits` picks `id`.
    fn pick(id: usize) -> Vec<f32> {
        let mut l = vec![0.0; 4];
        l[id] = 1.0;
        l
    }

    fn seq(max_new_tokens: usize, max_context: usize) -> SequenceState {
        let limits = Limits {
            max_new_tokens,
            max_context,
            stop_on_eos: true,
            eos_ids: vec![3],
        };
        let greedy = SamplingParams::default();
        SequenceState::new(vec![0, 1], greedy, &[], true, limits, None)
    }

    #[test]
    fn each_limit_ends_the_sequence_with_its_reason() {
        // max_tokens 0: scoring only, no token.
        let mut s = seq(0, 100);
        assert!(matches!(
            s.accept(&pick(2), None),
            Accepted::Finished {
                token: None,
                reason: FinishReason::Length,
                ..
            }
        ));
        // End of sequence: stops without joining the output.
        let mut s = seq(5, 100);
        assert_eq!(
            s.accept(&pick(2), None),
            Accepted::Continue {
                token: 2,
                text: String::new()
            }
        );
        assert!(matches!(
            s.accept(&pick(3), None),
            Accepted::Finished {
                token: None,
                reason: FinishReason::Stop,
                ..
            }
        ));
        assert_eq!(s.output(), [2]);
        // max_tokens: the last token joins the output, then Length.
        let mut s = seq(2, 100);
        s.accept(&pick(2), None);
        assert!(matches!(
            s.accept(&pick(1), None),
            Accepted::Finished {
                token: Some((1, _)),
                reason: FinishReason::Length,
                ..
            }
        ));
        // The context: prompt and output together never exceed it.
        let mut s = seq(10, 4);
        s.accept(&pick(2), None);
        assert!(matches!(
            s.accept(&pick(2), None),
            Accepted::Finished {
                token: Some((2, _)),
                reason: FinishReason::Length,
                ..
            }
        ));
        assert_eq!(s.tokens.len(), 4);
    }
}
