//! Tool calls in DeepSeek's format. V2.5/V3 write
//! `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>…<｜tool▁calls▁end｜>`,
//! V3.1 writes `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGS<｜tool▁call▁end｜>`. Both are parsed;
//! a forced call (`tool_choice` naming a function, or `required`) is generated in the V3 form
//! with the name chosen among the tools and the arguments constrained to a JSON object.

use serde_json::{json, Value};

pub const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
pub const CALLS_END: &str = "<｜tool▁calls▁end｜>";
pub const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
pub const CALL_END: &str = "<｜tool▁call▁end｜>";
pub const SEP: &str = "<｜tool▁sep｜>";

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// Splits generated text into the content before the tool calls and the calls.
pub fn parse(text: &str) -> (String, Vec<ToolCall>) {
    let Some(start) = text.find(CALLS_BEGIN).or_else(|| text.find(CALL_BEGIN)) else {
        return (text.to_string(), vec![]);
    };
    let content = text[..start].to_string();
    let mut calls = vec![];
    let mut rest = &text[start..];
    while let Some(b) = rest.find(CALL_BEGIN) {
        let body_start = b + CALL_BEGIN.len();
        let (body, next) = match rest[body_start..].find(CALL_END) {
            Some(e) => (
                &rest[body_start..body_start + e],
                &rest[body_start + e + CALL_END.len()..],
            ),
            None => (&rest[body_start..], ""),
        };
        if let Some(call) = parse_call(body) {
            calls.push(call);
        }
        rest = next;
    }
    (content, calls)
}

fn parse_call(body: &str) -> Option<ToolCall> {
    let (left, right) = body.split_once(SEP)?;
    let right = right.trim_end_matches(CALLS_END);
    if let Some(fence) = right.find("```json") {
        // V3: `function<sep>NAME\n```json\nARGS\n````
        let name = right[..fence].trim().to_string();
        let args = &right[fence + "```json".len()..];
        let args = args.split("```").next().unwrap_or("").trim().to_string();
        Some(ToolCall {
            name,
            arguments: args,
        })
    } else {
        // V3.1: `NAME<sep>ARGS`
        Some(ToolCall {
            name: left.trim().to_string(),
            arguments: right.trim().to_string(),
        })
    }
}

/// The system-prompt text that tells the model about `tools`, for templates that do not
/// render them (DeepSeek-V3's does not; its API adds them like this).
pub fn describe(tools: &[Value]) -> String {
    let mut s = String::from("## Tools\nYou have access to the following tools:\n");
    for t in tools {
        let f = &t["function"];
        s.push_str(&format!(
            "\n### {}\nDescription: {}\n\nParameters: {}\n",
            f["name"].as_str().unwrap_or(""),
            f["description"].as_str().unwrap_or(""),
            f.get("parameters").cloned().unwrap_or(json!({}))
        ));
    }
    s.push_str(&format!(
        "\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n{CALLS_BEGIN}{CALL_BEGIN}function{SEP}tool_call_name\n```json\ntool_call_arguments\n```{CALL_END}{CALLS_END}\n"
    ));
    s
}

/// The names of `tools`; each must be `{"type": "function", "function": {"name": …}}`.
pub fn names(tools: &[Value]) -> Result<Vec<String>, String> {
    tools
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if t.get("type").and_then(|v| v.as_str()).unwrap_or("function") != "function" {
                return Err(format!(
                    "tools[{i}].type: only \"function\" tools are supported"
                ));
            }
            t.pointer("/function/name")
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("tools[{i}].function.name is missing"))
        })
        .collect()
}

/// `tool_calls` as the API returns them.
pub fn to_json(calls: &[ToolCall], id_prefix: &str) -> Value {
    Value::Array(
        calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                json!({
                    "index": i,
                    "id": format!("call_{id_prefix}_{i}"),
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v3_and_v31_tool_calls() {
        let v3 = format!(
            "Let me check.{CALLS_BEGIN}{CALL_BEGIN}function{SEP}get_weather\n```json\n{{\"city\": \"Paris\"}}\n```{CALL_END}\n{CALL_BEGIN}function{SEP}get_time\n```json\n{{}}\n```{CALL_END}{CALLS_END}"
        );
        let (content, calls) = parse(&v3);
        assert_eq!(content, "Let me check.");
        assert_eq!(
            calls,
            vec![
                ToolCall {
                    name: "get_weather".into(),
                    arguments: "{\"city\": \"Paris\"}".into()
                },
                ToolCall {
                    name: "get_time".into(),
                    arguments: "{}".into()
                }
            ]
        );
        let v31 =
            format!("{CALLS_BEGIN}{CALL_BEGIN}search{SEP}{{\"q\": \"x\"}}{CALL_END}{CALLS_END}");
        let (content, calls) = parse(&v31);
        assert_eq!(content, "");
        assert_eq!(calls[0].name, "search");
        assert_eq!(calls[0].arguments, "{\"q\": \"x\"}");
        assert_eq!(parse("plain text").1, vec![]);
    }
}
