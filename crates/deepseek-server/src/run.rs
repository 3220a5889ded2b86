//! What chat and completions share: the context check, handing a request to the scheduler,
//! and reading its events back, whole or as a stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use deepseek_engine::scheduler::{Event, Failure, Request, SubmitError, TokenLogprob};
use deepseek_engine::FinishReason;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::ApiError;
use crate::keys::ApiKey;
use crate::AppState;

/// Default completion budget when a request gives no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: usize = 4096;

/// `max_tokens` for a prompt of `prompt_tokens`: the request's, checked against the context,
/// or what is left of the context (at most `default`). `prompt_param` names the prompt's field
/// in errors (`messages` or `prompt`).
pub fn max_tokens(
    st: &AppState,
    prompt_tokens: usize,
    asked: Option<u64>,
    default: usize,
    prompt_param: &str,
) -> Result<usize, ApiError> {
    let ctx = st.context;
    match asked {
        Some(m) if prompt_tokens as u64 + m > ctx as u64 => Err(ApiError::invalid(
            "max_tokens".to_string(),
            format!(
                "this model's maximum context length is {ctx} tokens; the request asks for {} tokens ({prompt_tokens} in the prompt + {m} max_tokens). Shorten the prompt or lower max_tokens",
                prompt_tokens as u64 + m
            ),
        )
        .with_code("context_length_exceeded")),
        Some(m) => Ok(m as usize),
        None if prompt_tokens >= ctx => Err(ApiError::invalid(
            prompt_param.to_string(),
            format!(
                "this model's maximum context length is {ctx} tokens; the prompt alone has {prompt_tokens}"
            ),
        )
        .with_code("context_length_exceeded")),
        None => Ok((ctx - prompt_tokens).min(default)),
    }
}

/// Runs `f` (parsing, templating, tokenizing: work that grows with the body) on tokio's blocking
/// pool, at most [`crate::PREPARE_SLOTS`] at once, so the async threads stay free for `/health`
/// and for streaming everyone else's tokens. A client that leaves does not free its slot before
/// its work ends.
pub async fn prepare<T: Send + 'static>(
    st: &Arc<AppState>,
    f: impl FnOnce(&AppState) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = st
        .prepare_slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    let st = st.clone();
    tokio::task::spawn_blocking(move || {
        let r = f(&st);
        drop(permit);
        r
    })
    .await
    .map_err(|e| ApiError::internal(format!("preparing the request failed: {e}")))?
}

/// Refuses a text that surely has more tokens than the context holds, having encoded only as
/// much of it as shows that. `param` names the field in errors.
pub fn refuse_beyond_context(st: &AppState, text: &str, param: &str) -> Result<(), ApiError> {
    let ctx = st.context;
    let beyond = st
        .tokenizer
        .tokens_beyond(text, ctx)
        .map_err(|e| ApiError::invalid(param.to_string(), e.to_string()))?;
    match beyond {
        Some(n) => Err(ApiError::invalid(
            param.to_string(),
            format!(
                "this model's maximum context length is {ctx} tokens; `{param}` has more than {n}"
            ),
        )
        .with_code("context_length_exceeded")),
        None => Ok(()),
    }
}

/// The token ids of a prompt's text, refused early when it surely does not fit the context.
pub fn encode_prompt(
    st: &AppState,
    text: &str,
    add_special: bool,
    param: &str,
) -> Result<Vec<u32>, ApiError> {
    refuse_beyond_context(st, text, param)?;
    st.tokenizer
        .encode(text, add_special)
        .map_err(|e| ApiError::invalid(param.to_string(), e.to_string()))
}

/// Queues `req`. Queue full → 429 with Retry-After.
pub fn submit(st: &AppState, req: Request) -> Result<UnboundedReceiver<Event>, ApiError> {
    st.scheduler.submit(req).map_err(|e| match e {
        SubmitError::QueueFull => ApiError::busy(1),
        SubmitError::TooLarge { .. } => ApiError::invalid("max_tokens".to_string(), e.to_string())
            .with_code("context_length_exceeded"),
        SubmitError::ShuttingDown => ApiError::unavailable(&e.to_string()),
    })
}

/// A whole response, read from the events.
#[derive(Default)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

/// Follows a request's events, recording the latency metrics.
pub struct Tracker {
    st: Arc<AppState>,
    /// The request's API key, charged its tokens when the request finishes.
    key: Option<Arc<ApiKey>>,
    arrived: Instant,
    last_token: Option<Instant>,
    pub collected: Collected,
}

impl Tracker {
    pub fn new(st: Arc<AppState>, key: Option<Arc<ApiKey>>, arrived: Instant) -> Self {
        Tracker {
            st,
            key,
            arrived,
            last_token: None,
            collected: Collected::default(),
        }
    }

    /// Takes one event in; returns Err for a failed request.
    pub fn take(&mut self, e: &Event) -> Result<(), ApiError> {
        let c = &mut self.collected;
        match e {
            Event::Started {
                prompt_tokens,
                cached_tokens,
            } => {
                c.prompt_tokens = *prompt_tokens;
                c.cached_tokens = *cached_tokens;
            }
            Event::PromptLogprobs(l) => c.prompt_logprobs.extend(l.iter().cloned()),
            Event::CandidateLogprobs(_) => {}
            Event::Output {
                text,
                token,
                logprob,
            } => {
                c.text.push_str(text);
                if let Some(t) = token {
                    c.tokens.push(*t);
                    let now = Instant::now();
                    let m = &self.st.metrics;
                    match self.last_token {
                        None => m.time_to_first_token.observe(now - self.arrived),
                        Some(prev) => m.time_per_output_token.observe(now - prev),
                    }
                    self.last_token = Some(now);
                }
                if let Some(l) = logprob {
                    c.logprobs.push(l.clone());
                }
            }
            Event::Finished {
                reason,
                completion_tokens,
            } => {
                c.finish = Some(*reason);
                c.completion_tokens = *completion_tokens;
                if let Some(k) = &self.key {
                    k.charge(c.prompt_tokens, c.completion_tokens);
                }
                self.st
                    .metrics
                    .request_duration
                    .observe(self.arrived.elapsed());
            }
            Event::Failed(why) => return Err(failure_status(why)),
        }
        Ok(())
    }
}

/// The answer to an engine failure: the client's doing (400), a stopping server (503), or the
/// server's fault (500).
pub fn failure_status(why: &Failure) -> ApiError {
    match why {
        Failure::ShuttingDown => {
            ApiError::unavailable("the request was cancelled (the server is shutting down)")
        }
        Failure::Unsatisfiable(m) => ApiError::invalid(None, m.clone()),
        Failure::Internal(m) => ApiError::internal(m.clone()),
    }
}

/// Reads every event of a request.
pub async fn collect(
    st: Arc<AppState>,
    key: Option<Arc<ApiKey>>,
    mut rx: UnboundedReceiver<Event>,
    arrived: Instant,
) -> Result<Collected, ApiError> {
    let mut t = Tracker::new(st, key, arrived);
    while let Some(e) = rx.recv().await {
        t.take(&e)?;
        if matches!(e, Event::Finished { .. }) {
            return Ok(t.collected);
        }
    }
    Err(ApiError::unavailable(
        "the request was cancelled (the server is shutting down)",
    ))
}

/// Usage as DeepSeek's API reports it (with OpenAI's `prompt_tokens_details` too).
pub fn usage(c: &Collected) -> Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
        "prompt_cache_hit_tokens": c.cached_tokens,
        "prompt_cache_miss_tokens": c.prompt_tokens - c.cached_tokens,
        "prompt_tokens_details": {"cached_tokens": c.cached_tokens},
    })
}

pub fn finish_reason(f: Option<FinishReason>) -> &'static str {
    f.map(|f| f.as_str()).unwrap_or("stop")
}

/// A token as text (lossy for a token that is part of a character) and its bytes.
pub fn token_text(st: &AppState, id: u32) -> (String, Vec<u8>) {
    match st.token_bytes.get(id as usize) {
        Some(Some(b)) => (String::from_utf8_lossy(b).into_owned(), b.clone()),
        _ => {
            let s = st.tokenizer.decode(&[id], false).unwrap_or_default();
            let b = s.clone().into_bytes();
            (s, b)
        }
    }
}

/// Turns events into server-sent events: `make(event, tracker)` gives the JSON chunks for one
/// event. The stream ends with `data: [DONE]`; a dropped connection cancels the request.
pub fn stream(
    st: Arc<AppState>,
    key: Option<Arc<ApiKey>>,
    mut rx: UnboundedReceiver<Event>,
    arrived: Instant,
    mut make: impl FnMut(&Event, &Tracker) -> Vec<Value> + Send + 'static,
) -> Response {
    let (tx, out) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(async move {
        let mut t = Tracker::new(st, key, arrived);
        let mut ended = false;
        while let Some(e) = rx.recv().await {
            if let Err(err) = t.take(&e) {
                // The status line is sent already; the error body names the kind.
                let body = err.body();
                let _ = tx
                    .send(Ok(SseEvent::default().data(body.to_string())))
                    .await;
                ended = true;
                break;
            }
            for chunk in make(&e, &t) {
                if tx
                    .send(Ok(SseEvent::default().data(chunk.to_string())))
                    .await
                    .is_err()
                {
                    // The client went away: dropping `rx` cancels the sequence.
                    return;
                }
            }
            if matches!(e, Event::Finished { .. }) {
                ended = true;
                break;
            }
        }
        if !ended {
            let body =
                ApiError::unavailable("the request was cancelled (the server is shutting down)")
                    .body();
            let _ = tx
                .send(Ok(SseEvent::default().data(body.to_string())))
                .await;
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(out))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_failures_answer_with_the_status_of_whose_fault_they_are() {
        let status = |f: Failure| failure_status(&f).status.as_u16();
        assert_eq!(status(Failure::ShuttingDown), 503);
        assert_eq!(status(Failure::Unsatisfiable("JSON mode: …".into())), 400);
        assert_eq!(status(Failure::Internal("forward failed".into())), 500);
        let body = failure_status(&Failure::Unsatisfiable("no token".into())).body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "no token");
    }
}
