//! `POST /v1/completions` (and DeepSeek's `/beta/completions`): plain continuation of a prompt,
//! fill-in-the-middle when `suffix` is given, `echo`, legacy `logprobs` (also for the prompt
//! when echoed, so `max_tokens: 0, echo: true, logprobs: 0` scores a text).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deepseek_engine::scheduler::{Event, Request, TokenLogprob};
use serde_json::{json, Map, Value};

use crate::api::{Common, CompletionRequest, Prompt};
use crate::error::{parse_body, ApiError};
use crate::keys::ApiKey;
use crate::run::{self, Collected};
use crate::{AppState, SYSTEM_FINGERPRINT};

/// OpenAI's default for the legacy endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The prompt's token ids (and its text, for echo).
fn prompt_ids(st: &AppState, req: &CompletionRequest) -> Result<(Vec<u32>, String), ApiError> {
    let vocab = st.tokenizer.vocab_size();
    let bad = |m: String| ApiError::invalid("prompt".to_string(), m);
    let ids_in_range = |ids: &[u32]| -> Result<(), ApiError> {
        match ids.iter().find(|&&i| i as usize >= vocab) {
            Some(i) => Err(bad(format!(
                "`prompt` has token id {i}; the vocabulary has {vocab} tokens"
            ))),
            None if ids.is_empty() => Err(bad("`prompt` is empty".into())),
            None => Ok(()),
        }
    };
    let text = match &req.prompt {
        Prompt::Text(s) => s.clone(),
        Prompt::Texts(v) if v.len() == 1 => v[0].clone(),
        Prompt::Texts(v) if v.is_empty() => return Err(bad("`prompt` is empty".into())),
        Prompt::Ids(_) | Prompt::IdLists(_) if req.suffix.is_some() => {
            return Err(bad("`suffix` needs a text `prompt`, not token ids".into()))
        }
        Prompt::Ids(ids) => {
            ids_in_range(ids)?;
            let text = st.tokenizer.decode(ids, false).unwrap_or_default();
            return Ok((ids.clone(), text));
        }
        Prompt::IdLists(v) if v.len() == 1 => {
            ids_in_range(&v[0])?;
            let text = st.tokenizer.decode(&v[0], false).unwrap_or_default();
            return Ok((v[0].clone(), text));
        }
        _ => {
            return Err(bad(
                "`prompt` has several prompts; send one prompt per request".into(),
            ))
        }
    };
    let tok = &st.tokenizer;
    let ids = match &req.suffix {
        // DeepSeek-Coder's prefix-suffix-middle: the model writes the middle.
        Some(suffix) => {
            run::refuse_beyond_context(st, &text, "prompt")?;
            run::refuse_beyond_context(st, suffix, "suffix")?;
            tok.encode_fim(&text, suffix)
            .map_err(|e| ApiError::invalid("suffix".to_string(), e.to_string()))?
            .ok_or_else(|| {
                ApiError::invalid(
                    "suffix".to_string(),
                    "this model's tokenizer has no fill-in-the-middle tokens (<｜fim▁begin｜>, <｜fim▁hole｜>, <｜fim▁end｜>); drop `suffix`",
                )
            })?
        }
        None => run::encode_prompt(st, &text, true, "prompt")?,
    };
    if ids.is_empty() {
        return Err(bad("`prompt` is empty".into()));
    }
    Ok((ids, text))
}

/// Legacy logprobs: parallel lists of tokens, their logprobs, the top alternatives as a map,
/// and text offsets.
fn legacy_logprobs(
    st: &AppState,
    entries: &[Option<&TokenLogprob>],
    ids: &[u32],
    start: usize,
) -> Value {
    let (mut tokens, mut lps, mut tops, mut offsets) = (vec![], vec![], vec![], vec![]);
    let mut offset = start;
    for (e, &id) in entries.iter().zip(ids) {
        let (t, _) = run::token_text(st, id);
        offsets.push(offset);
        offset += t.len();
        tokens.push(Value::from(t));
        match e {
            Some(l) => {
                lps.push(Value::from(l.logprob));
                let mut m = Map::new();
                for &(alt, x) in &l.top {
                    m.insert(run::token_text(st, alt).0, Value::from(x));
                }
                tops.push(Value::Object(m));
            }
            None => {
                lps.push(Value::Null);
                tops.push(Value::Null);
            }
        }
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// A request read and tokenized, ready for the scheduler.
struct Prepared {
    request: Request,
    prompt_text: String,
    echo: bool,
    logprobs: Option<usize>,
    stream: bool,
    include_usage: bool,
}

/// Parsing, checks and the tokenizer: everything before the scheduler.
fn prepare(st: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let req: CompletionRequest = parse_body(body)?;
    let common: Common = parse_body(body)?;
    common.validate()?;
    let (prompt, prompt_text) = prompt_ids(st, &req)?;
    let echo = req.echo.unwrap_or(false);
    let logprobs = match req.logprobs {
        Some(n) if n > 20 => {
            return Err(ApiError::invalid(
                "logprobs".to_string(),
                format!("`logprobs` is {n}; at most 20"),
            ))
        }
        n => n.map(|n| n as usize),
    };
    if echo && req.suffix.is_some() {
        return Err(ApiError::invalid(
            "echo".to_string(),
            "`echo` cannot be combined with `suffix`",
        ));
    }
    let max_new_tokens = run::max_tokens(
        st,
        prompt.len(),
        common.max_tokens,
        DEFAULT_MAX_TOKENS,
        "prompt",
    )?;
    Ok(Prepared {
        request: Request {
            prompt,
            max_new_tokens,
            sampling: common.sampling(),
            stop: common.stops(),
            stop_on_eos: !common.ignore_eos.unwrap_or(false),
            logprobs,
            constraint: None,
            keep_special: false,
            prompt_logprobs: echo && logprobs.is_some(),
            candidates: vec![],
        },
        prompt_text,
        echo,
        logprobs,
        stream: common.stream(),
        include_usage: common.include_usage(),
    })
}

pub async fn handle(
    State(st): State<Arc<AppState>>,
    key: Option<Extension<Arc<ApiKey>>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = key.map(|Extension(k)| k);
    let arrived = Instant::now();
    let Prepared {
        request,
        prompt_text,
        echo,
        logprobs,
        stream,
        include_usage,
    } = run::prepare(&st, move |st| prepare(st, &body)).await?;
    let prompt_ids = request.prompt.clone();
    let rx = run::submit(&st, request)?;
    let id = st.response_id("cmpl");
    let model = st.model_name.clone();
    let created = crate::now();
    let echo_text = if echo { prompt_text } else { String::new() };

    if stream {
        let st2 = st.clone();
        let chunk = move |text: String, lp: Value, finish: Value| {
            let mut c = json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let mut echoed = false;
        let make = move |e: &Event, t: &run::Tracker| -> Vec<Value> {
            let mut out = vec![];
            if echo && !echoed && matches!(e, Event::Output { .. } | Event::Finished { .. }) {
                echoed = true;
                let lp = match logprobs {
                    Some(_) => {
                        let pl = &t.collected.prompt_logprobs;
                        let entries: Vec<Option<&TokenLogprob>> =
                            std::iter::once(None).chain(pl.iter().map(Some)).collect();
                        legacy_logprobs(&st2, &entries, &prompt_ids, 0)
                    }
                    None => Value::Null,
                };
                out.push(chunk(echo_text.clone(), lp, Value::Null));
            }
            match e {
                Event::Output {
                    text,
                    token,
                    logprob,
                } => {
                    let lp = match (logprob, token) {
                        (Some(l), Some(id)) => legacy_logprobs(&st2, &[Some(l)], &[*id], 0),
                        _ => Value::Null,
                    };
                    if !text.is_empty() || !lp.is_null() {
                        out.push(chunk(text.clone(), lp, Value::Null));
                    }
                }
                Event::Finished { .. } => {
                    let c = &t.collected;
                    out.push(chunk(
                        String::new(),
                        Value::Null,
                        Value::from(run::finish_reason(c.finish)),
                    ));
                    if include_usage {
                        let mut u = chunk(String::new(), Value::Null, Value::Null);
                        u["choices"] = json!([]);
                        u["usage"] = run::usage(c);
                        out.push(u);
                    }
                }
                _ => {}
            }
            out
        };
        return Ok(run::stream(st.clone(), key, rx, arrived, make));
    }

    let c: Collected = run::collect(st.clone(), key, rx, arrived).await?;
    let text = format!("{echo_text}{}", c.text);
    let lp = match logprobs {
        Some(_) => {
            let mut entries: Vec<Option<&TokenLogprob>> = vec![];
            let mut ids = vec![];
            if echo {
                entries.push(None);
                entries.extend(c.prompt_logprobs.iter().map(Some));
                ids.extend_from_slice(&prompt_ids);
            }
            entries.extend(c.logprobs.iter().map(Some));
            ids.extend_from_slice(&c.tokens);
            legacy_logprobs(&st, &entries, &ids, 0)
        }
        None => Value::Null,
    };
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": st.model_name,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "text": text, "logprobs": lp, "finish_reason": run::finish_reason(c.finish)}],
        "usage": run::usage(&c),
    }))
    .into_response())
}
