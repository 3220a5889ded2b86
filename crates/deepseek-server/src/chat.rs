//! `POST /v1/chat/completions`: messages through the model's chat template, then generation;
//! JSON mode, tool calls, logprobs, streaming.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use deepseek_engine::json_mode::{OutputConstraint, Stage};
use deepseek_engine::scheduler::{Event, Request, TokenLogprob};
use deepseek_engine::FinishReason;
use serde_json::{json, Value};

use crate::api::{check_messages, normalize_messages, ChatRequest, Common};
use crate::error::{parse_body, ApiError};
use crate::keys::ApiKey;
use crate::run::{self, Collected, DEFAULT_MAX_TOKENS};
use crate::tools::{self, ToolCall, CALLS_BEGIN, CALL_BEGIN, CALL_END, SEP};
use crate::{AppState, SYSTEM_FINGERPRINT};

#[derive(Clone, Debug, PartialEq)]
enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

fn tool_choice(v: &Option<Value>) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::invalid(
            "tool_choice".to_string(),
            "`tool_choice` must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
        )
    };
    Ok(match v {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(bad()),
        },
        Some(o) => ToolChoice::Named(
            o.pointer("/function/name")
                .and_then(|n| n.as_str())
                .ok_or_else(bad)?
                .to_string(),
        ),
    })
}

/// How the output is read back.
struct Plan {
    /// Tool calls may appear in the output (special tokens kept in the text).
    tools: bool,
    /// The prompt ends inside a forced call: the output is `NAME\n```json\nARGS`.
    forced: bool,
}

fn logprob_entry(st: &AppState, lp: &TokenLogprob) -> Value {
    let entry = |id: u32, l: f32| {
        let (t, b) = run::token_text(st, id);
        json!({"token": t, "logprob": l, "bytes": b})
    };
    let mut e = entry(lp.id, lp.logprob);
    e["top_logprobs"] = Value::Array(lp.top.iter().map(|&(id, l)| entry(id, l)).collect());
    e
}

/// Content and tool calls of a finished output.
fn read_output(c: &Collected, plan: &Plan) -> (String, Vec<ToolCall>) {
    if plan.forced {
        let full = format!(
            "{CALLS_BEGIN}{CALL_BEGIN}function{SEP}{}\n```{CALL_END}",
            c.text
        );
        tools::parse(&full)
    } else if plan.tools {
        tools::parse(&c.text)
    } else {
        (c.text.clone(), vec![])
    }
}

/// A request read, templated and tokenized, ready for the scheduler.
struct Prepared {
    request: Request,
    stream: bool,
    include_usage: bool,
    plan: Plan,
    logprobs: Option<usize>,
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
        stream,
        include_usage,
        plan,
        logprobs,
    } = run::prepare(&st, move |st| prepare(st, &body)).await?;
    let rx = run::submit(&st, request)?;
    let id = st.response_id("chatcmpl");
    let model = st.model_name.clone();
    let created = crate::now();

    if stream {
        let st2 = st.clone();
        let chunk = move |delta: Value, logprobs: Value, finish: Value| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let make = move |e: &Event, t: &run::Tracker| -> Vec<Value> {
            match e {
                Event::Started { .. } => vec![chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                    Value::Null,
                )],
                // With tools the text is read whole at the end (calls are parsed from it).
                Event::Output { .. } if plan.tools => vec![],
                Event::Output { text, logprob, .. } => {
                    let lp = match logprob {
                        Some(l) => json!({"content": [logprob_entry(&st2, l)]}),
                        None => Value::Null,
                    };
                    if text.is_empty() && lp.is_null() {
                        vec![]
                    } else {
                        vec![chunk(json!({"content": text}), lp, Value::Null)]
                    }
                }
                Event::Finished { .. } => {
                    let c = &t.collected;
                    let mut out = vec![];
                    let mut finish = run::finish_reason(c.finish);
                    if plan.tools {
                        let (content, calls) = read_output(c, &plan);
                        if !content.is_empty() {
                            out.push(chunk(json!({"content": content}), Value::Null, Value::Null));
                        }
                        if !calls.is_empty() {
                            if c.finish == Some(FinishReason::Stop) {
                                finish = "tool_calls";
                            }
                            out.push(chunk(
                                json!({"tool_calls": tools::to_json(&calls, &chunk_id(&st2))}),
                                Value::Null,
                                Value::Null,
                            ));
                        }
                    }
                    out.push(chunk(json!({}), Value::Null, Value::from(finish)));
                    if include_usage {
                        let mut u = chunk(json!({}), Value::Null, Value::Null);
                        u["choices"] = json!([]);
                        u["usage"] = run::usage(c);
                        out.push(u);
                    }
                    out
                }
                _ => vec![],
            }
        };
        return Ok(run::stream(st.clone(), key, rx, arrived, make));
    }

    let c = run::collect(st.clone(), key, rx, arrived).await?;
    let (content, calls) = read_output(&c, &plan);
    let mut message = json!({"role": "assistant", "content": content});
    let mut finish = run::finish_reason(c.finish);
    if !calls.is_empty() {
        if content.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = tools::to_json(&calls, &chunk_id(&st));
        // A call cut off by max_tokens stays "length", as OpenAI reports it.
        if c.finish == Some(FinishReason::Stop) {
            finish = "tool_calls";
        }
    }
    let logprobs = match logprobs {
        Some(_) => {
            json!({"content": c.logprobs.iter().map(|l| logprob_entry(&st, l)).collect::<Vec<_>>()})
        }
        None => Value::Null,
    };
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": st.model_name,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish}],
        "usage": run::usage(&c),
    }))
    .into_response())
}

/// Parsing, checks, the chat template and the tokenizer: everything before the scheduler.
fn prepare(st: &AppState, body: &[u8]) -> Result<Prepared, ApiError> {
    let req: ChatRequest = parse_body(body)?;
    let common: Common = parse_body(body)?;
    common.validate()?;
    check_messages(&req.messages)?;
    let asked = req.max_completion_tokens.or(common.max_tokens);
    if asked == Some(0) {
        let p = if req.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            p.to_string(),
            format!("`{p}` is 0; it must be at least 1"),
        ));
    }
    let Some(template) = &st.template else {
        return Err(ApiError::invalid(
            "messages".to_string(),
            "this model has no chat template (tokenizer_config.json has no chat_template); use /v1/completions",
        ));
    };
    let mut messages = normalize_messages(&req.messages);

    let tool_list = req.tools.clone().unwrap_or_default();
    let names = tools::names(&tool_list).map_err(|m| ApiError::invalid("tools".to_string(), m))?;
    let choice = tool_choice(&req.tool_choice)?;
    let use_tools = !tool_list.is_empty() && choice != ToolChoice::None;
    if use_tools && st.tokenizer.token_to_id(CALLS_BEGIN).is_none() {
        return Err(ApiError::invalid(
            "tools".to_string(),
            "this model's tokenizer has no tool-call tokens (<｜tool▁calls▁begin｜>); it cannot call tools",
        ));
    }
    if tool_list.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Named(_)) {
        return Err(ApiError::invalid(
            "tool_choice".to_string(),
            "`tool_choice` asks for a tool call but `tools` is empty",
        ));
    }
    // Does the template show tools to the model itself? (DeepSeek-V3's does not.)
    let renders_tools = st
        .tokenizer
        .chat_template
        .as_deref()
        .is_some_and(|t| t.contains("tools"));
    if use_tools && !renders_tools {
        // The template does not show tools to the model: say what they are in the system prompt.
        let desc = tools::describe(&tool_list);
        match messages.iter_mut().find(|m| m["role"] == "system") {
            Some(m) => {
                let text = m["content"].as_str().unwrap_or("").to_string();
                m["content"] = Value::from(format!("{text}\n\n{desc}"));
            }
            None => messages.insert(0, json!({"role": "system", "content": desc})),
        }
    }
    let tools_value = Value::Array(tool_list.clone());
    let mut prompt_text = template
        .render(
            &Value::Array(messages),
            (use_tools && renders_tools).then_some(&tools_value),
            true,
        )
        .map_err(|e| ApiError::invalid("messages".to_string(), e.to_string()))?;

    let forced_names = match &choice {
        ToolChoice::Named(n) if !names.contains(n) => {
            return Err(ApiError::invalid(
                "tool_choice".to_string(),
                format!(
                    "`tool_choice` names `{n}`, which is not among `tools` ({})",
                    names.join(", ")
                ),
            ))
        }
        ToolChoice::Named(n) => Some(vec![n.clone()]),
        ToolChoice::Required => Some(names.clone()),
        _ => None,
    };
    let mut constraint = None;
    if let Some(fnames) = &forced_names {
        prompt_text.push_str(&format!("{CALLS_BEGIN}{CALL_BEGIN}function{SEP}"));
        let options = fnames
            .iter()
            .map(|n| format!("{n}\n```json\n").into_bytes())
            .collect();
        constraint = Some(OutputConstraint::new(
            st.token_bytes.clone(),
            vec![Stage::OneOf(options), Stage::Json { object_only: true }],
        ));
    }
    match req.response_format.as_ref().map(|f| f.kind.as_str()) {
        None | Some("text") => {}
        Some("json_object") => {
            if constraint.is_some() {
                return Err(ApiError::invalid(
                    "response_format".to_string(),
                    "JSON mode cannot be combined with a forced tool call",
                ));
            }
            constraint = Some(OutputConstraint::json_object(st.token_bytes.clone()));
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "response_format.type".to_string(),
                format!(
                    "`response_format.type` is `{other}`; supported: \"text\", \"json_object\""
                ),
            ))
        }
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => {
            return Err(ApiError::invalid(
                "top_logprobs".to_string(),
                format!("`top_logprobs` is {n}; at most 20"),
            ))
        }
        (Some(true), n) => Some(n.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs".to_string(),
                "`top_logprobs` needs `logprobs: true`",
            ))
        }
        _ => None,
    };

    let prompt = run::encode_prompt(st, &prompt_text, false, "messages")?;
    let max_new_tokens = run::max_tokens(st, prompt.len(), asked, DEFAULT_MAX_TOKENS, "messages")?;
    Ok(Prepared {
        request: Request {
            prompt,
            max_new_tokens,
            sampling: common.sampling(),
            stop: common.stops(),
            stop_on_eos: !common.ignore_eos.unwrap_or(false),
            logprobs,
            constraint,
            keep_special: use_tools,
            prompt_logprobs: false,
            candidates: vec![],
        },
        stream: common.stream(),
        include_usage: common.include_usage(),
        plan: Plan {
            tools: use_tools,
            forced: forced_names.is_some(),
        },
        logprobs,
    })
}

fn chunk_id(st: &AppState) -> String {
    st.response_id("t")
}
