//! Request bodies of the OpenAI/DeepSeek API, as clients send them, and the checks that turn
//! them into engine requests. Unknown fields are ignored (clients send many); known fields of
//! the wrong type or out of range are a 400 naming the field.

use serde::Deserialize;
use serde_json::Value;

use deepseek_engine::SamplingParams;

use crate::error::ApiError;

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
}

/// Fields chat and completions share, read from the same body as the endpoint's own fields
/// (not `#[serde(flatten)]`, which loses the field path in error messages).
#[derive(Deserialize, Debug, Clone, Default)]
pub struct Common {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stop: Option<Stop>,
    pub seed: Option<u64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub n: Option<u64>,
    pub user: Option<String>,
    /// Extension (as in vLLM): keep generating past end-of-sequence tokens (benchmarks).
    pub ignore_eos: Option<bool>,
}

/// Chat's own fields.
#[derive(Deserialize, Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub response_format: Option<ResponseFormat>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
}

/// `prompt`: a string, a list with one string, or token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// Completions' own fields.
#[derive(Deserialize, Debug, Clone)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    pub suffix: Option<String>,
    pub echo: Option<bool>,
    pub logprobs: Option<u64>,
}

fn range(param: &str, v: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid(
            param.to_string(),
            format!("`{param}` is {x}; it must be between {lo} and {hi}"),
        )),
        _ => Ok(()),
    }
}

impl Common {
    pub fn validate(&self) -> Result<(), ApiError> {
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid(
                    "n".to_string(),
                    format!("`n` is {n}; this server returns one choice per request (n = 1)"),
                ));
            }
        }
        let stops = self.stops();
        if stops.len() > 16 {
            return Err(ApiError::invalid(
                "stop".to_string(),
                format!("`stop` has {} strings; at most 16 are allowed", stops.len()),
            ));
        }
        Ok(())
    }

    pub fn stops(&self) -> Vec<String> {
        match &self.stop {
            None => vec![],
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        }
    }

    pub fn stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }

    /// Sampling as OpenAI defines it: temperature 1 and top_p 1 unless given; temperature 0 is
    /// greedy.
    pub fn sampling(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_p: match self.top_p {
                Some(p) if p > 0.0 => p,
                Some(_) => f32::MIN_POSITIVE,
                None => 1.0,
            },
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            seed: self.seed,
            ..Default::default()
        }
    }
}

/// Checks `messages`: a non-empty list of objects, each with a known `role`.
pub fn check_messages(messages: &[Value]) -> Result<(), ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages".to_string(),
            "`messages` is empty: give at least one message",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let p = format!("messages[{i}]");
        let Some(o) = m.as_object() else {
            return Err(ApiError::invalid(
                p.clone(),
                format!("`{p}` must be an object"),
            ));
        };
        match o.get("role").and_then(|r| r.as_str()) {
            Some("system" | "user" | "assistant" | "tool" | "developer") => {}
            Some(r) => {
                return Err(ApiError::invalid(
                    format!("{p}.role"),
                    format!("`{p}.role` is `{r}`; expected system, user, assistant or tool"),
                ))
            }
            None => {
                return Err(ApiError::invalid(
                    format!("{p}.role"),
                    format!("`{p}.role` is missing"),
                ))
            }
        }
        match o.get("content") {
            None | Some(Value::Null) => {
                let calls = o
                    .get("tool_calls")
                    .and_then(|c| c.as_array())
                    .is_some_and(|c| !c.is_empty());
                if !(o.get("role").and_then(|r| r.as_str()) == Some("assistant") && calls) {
                    return Err(ApiError::invalid(
                        format!("{p}.content"),
                        format!(
                            "`{p}.content` is missing or null; only an assistant message with `tool_calls` may leave it out"
                        ),
                    ));
                }
            }
            Some(Value::String(_)) => {}
            Some(Value::Array(parts)) => {
                for (k, part) in parts.iter().enumerate() {
                    if part.get("type").and_then(|t| t.as_str()) != Some("text") {
                        return Err(ApiError::invalid(
                            format!("{p}.content[{k}]"),
                            format!(
                                "`{p}.content[{k}]` is not a text part; this model reads text only"
                            ),
                        ));
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("{p}.content"),
                    format!("`{p}.content` must be a string or a list of text parts"),
                ))
            }
        }
    }
    Ok(())
}

/// Messages as chat templates expect them: text parts joined into one string, `developer` read
/// as `system`.
pub fn normalize_messages(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if m["role"] == "developer" {
                m["role"] = Value::from("system");
            }
            if let Some(parts) = m.get("content").and_then(|c| c.as_array()) {
                let text: String = parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
                    .collect();
                m["content"] = Value::from(text);
            }
            if m.get("content").is_none() {
                m["content"] = Value::Null;
            }
            m
        })
        .collect()
}
