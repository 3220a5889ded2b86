//! What a request to the scheduler is, and what it hears back.

use crate::json_mode::OutputConstraint;
use crate::sampler::{log_softmax, SamplingParams};
use crate::sequence::{Failure, FinishReason};

/// One generation request.
pub struct Request {
    pub prompt: Vec<u32>,
    pub max_new_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings: the text is cut before the first one.
    pub stop: Vec<String>,
    pub stop_on_eos: bool,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
    /// Constrain the output (JSON mode, forced tool calls).
    pub constraint: Option<OutputConstraint>,
    /// Keep special tokens in the text (tool-call markers).
    pub keep_special: bool,
    /// Also report the log-probability of every prompt token after the first (scoring; the
    /// prompt is then computed in full, not taken from the prefix cache).
    pub prompt_logprobs: bool,
    /// Report the log-probabilities of these tokens as the first generated token (multiple
    /// choice scoring), whatever is sampled.
    pub candidates: Vec<u32>,
}

impl Request {
    /// Greedy generation of up to `max_new_tokens` after `prompt`, stopping at end-of-sequence;
    /// the other fields are off (set what a caller needs).
    pub fn new(prompt: Vec<u32>, max_new_tokens: usize) -> Self {
        Request {
            prompt,
            max_new_tokens,
            sampling: SamplingParams::default(),
            stop: vec![],
            stop_on_eos: true,
            logprobs: None,
            constraint: None,
            keep_special: false,
            prompt_logprobs: false,
            candidates: vec![],
        }
    }
}

/// A generated token's log-probability, and the most likely alternatives.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// What a request hears back, in order: `Started`, `Output`s, then `Finished` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Started {
        prompt_tokens: usize,
        /// Prompt tokens found in the prefix cache.
        cached_tokens: usize,
    },
    /// Log-probabilities of [`Request::candidates`] right after the prompt.
    CandidateLogprobs(Vec<f32>),
    /// Log-probabilities of prompt tokens (in order, from the second; several events).
    PromptLogprobs(Vec<TokenLogprob>),
    /// New text (possibly empty while a character or stop string is incomplete), with the token
    /// that produced it (None for text held back until the end).
    Output {
        text: String,
        token: Option<u32>,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        completion_tokens: usize,
    },
    Failed(Failure),
}

#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The waiting queue is full; try again later.
    QueueFull,
    /// The request can never fit in the cache.
    TooLarge {
        needed_tokens: usize,
        cache_tokens: usize,
    },
    ShuttingDown,
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::QueueFull => write!(f, "the server is busy: the request queue is full"),
            SubmitError::TooLarge {
                needed_tokens,
                cache_tokens,
            } => write!(
                f,
                "the request needs {needed_tokens} tokens of cache (prompt + max_tokens) but the cache holds {cache_tokens}"
            ),
            SubmitError::ShuttingDown => write!(f, "the server is shutting down"),
        }
    }
}

/// `id`'s log-probability under `logits` and the `n` most likely tokens.
pub(crate) fn token_logprob(logits: &[f32], id: u32, n: usize) -> TokenLogprob {
    let lp = log_softmax(logits);
    let mut top: Vec<(u32, f32)> = lp.iter().enumerate().map(|(t, &l)| (t as u32, l)).collect();
    let n = n.min(top.len());
    if n > 0 {
        top.select_nth_unstable_by(n - 1, |a, b| b.1.total_cmp(&a.1));
    }
    top.truncate(n);
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    TokenLogprob {
        id,
        logprob: lp[id as usize],
        top,
    }
}
