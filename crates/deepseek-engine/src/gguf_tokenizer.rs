//! The tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`), rebuilt as the
//! `tokenizer.json` it came from, and the reverse for `deepseek quantize`.
//!
//! GGUF keeps the BPE vocabulary (byte-level token strings), the merges, token types and special
//! ids, but only a *name* for the pre-tokenizer. `gguf_pretokenizers.json` maps each name we
//! support to the exact `pre_tokenizer` section of the original tokenizer.json, so ids are the
//! same as with the original file.

use serde_json::{json, Value as Json};

use deepseek_loader::gguf::{GgufFile, Value};

use crate::EngineError;

const PRETOKENIZERS: &str = include_str!("gguf_pretokenizers.json");

/// llama.cpp's token types.
pub const TOKEN_NORMAL: i32 = 1;
pub const TOKEN_CONTROL: i32 = 3;
pub const TOKEN_USER_DEFINED: i32 = 4;

fn pretokenizers() -> serde_json::Map<String, Json> {
    match serde_json::from_str(PRETOKENIZERS) {
        Ok(Json::Object(m)) => m,
        _ => unreachable!("gguf_pretokenizers.json is a JSON object"),
    }
}

fn err(g: &GgufFile, msg: String) -> EngineError {
    EngineError::File {
        path: g.path.clone(),
        msg,
    }
}

fn strings<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, EngineError> {
    let arr = g
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| err(g, format!("metadata `{key}` is missing or not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| err(g, format!("metadata `{key}`[{i}] is not a string")))
        })
        .collect()
}

/// The tokenizer.json equivalent of a GGUF file's tokenizer metadata, plus BOS/EOS strings,
/// `add_bos_token` and the chat template.
pub struct GgufTokenizerParts {
    pub tokenizer_json: Json,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: bool,
    pub chat_template: Option<String>,
}

pub fn tokenizer_parts(g: &GgufFile) -> Result<GgufTokenizerParts, EngineError> {
    match g.get("tokenizer.ggml.model").and_then(Value::as_str) {
        Some("gpt2") => {}
        Some(other) => {
            return Err(err(
                g,
                format!("tokenizer.ggml.model `{other}` is not supported (gpt2, the byte-level BPE DeepSeek uses)"),
            ))
        }
        None => return Err(err(g, "metadata `tokenizer.ggml.model` is missing".into())),
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|v| match v {
                Value::I32(x) => *x,
                other => other.as_u64().map(|x| x as i32).unwrap_or(TOKEN_NORMAL),
            })
            .collect(),
        None => vec![TOKEN_NORMAL; tokens.len()],
    };
    let pre_name = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("gpt-2");
    let table = pretokenizers();
    let pre = table.get(pre_name).cloned().ok_or_else(|| {
        let names: Vec<&String> = table.keys().collect();
        err(
            g,
            format!("tokenizer.ggml.pre `{pre_name}` is not supported (supported: {names:?})"),
        )
    })?;
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (id, t) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(TOKEN_NORMAL);
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == TOKEN_USER_DEFINED, "special": ty == TOKEN_CONTROL,
            }));
        }
        vocab.insert((*t).to_string(), json!(id));
    }
    let tokenizer_json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": false, "vocab": vocab, "merges": merges,
        },
    });
    let token_at = |key: &str| {
        g.get(key)
            .and_then(Value::as_u64)
            .and_then(|id| tokens.get(id as usize))
            .map(|s| s.to_string())
    };
    Ok(GgufTokenizerParts {
        tokenizer_json,
        bos_token: token_at("tokenizer.ggml.bos_token_id"),
        eos_token: token_at("tokenizer.ggml.eos_token_id"),
        add_bos_token: g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        chat_template: g
            .get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// What GGUF stores of a tokenizer.json: tokens by id, their types, merges, and the
/// pre-tokenizer's name (or an error naming what we cannot express).
pub struct GgufTokenizerMetadata {
    pub tokens: Vec<String>,
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub pre: String,
}

/// `vocab_size`: the model's embedding rows; the token list is padded to it with unused
/// `[PADn]` entries, as llama.cpp's converter does (llama.cpp checks the two agree).
pub fn metadata_from_tokenizer_json(
    t: &Json,
    vocab_size: usize,
) -> Result<GgufTokenizerMetadata, String> {
    let model = &t["model"];
    if model["type"] != "BPE" {
        return Err(format!(
            "tokenizer model {} cannot be written to GGUF (BPE only)",
            model["type"]
        ));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or("tokenizer.json has no model.vocab")?;
    let mut by_id: Vec<Option<String>> = vec![];
    let mut put = |id: usize, s: &str| {
        if by_id.len() <= id {
            by_id.resize(id + 1, None);
        }
        by_id[id] = Some(s.to_string());
    };
    for (s, id) in vocab {
        put(id.as_u64().ok_or("vocab id is not an integer")? as usize, s);
    }
    let mut types = vec![];
    let mut special = std::collections::HashMap::new();
    for a in t["added_tokens"].as_array().into_iter().flatten() {
        let id = a["id"].as_u64().ok_or("added token without id")? as usize;
        put(
            id,
            a["content"].as_str().ok_or("added token without content")?,
        );
        special.insert(id, a["special"].as_bool().unwrap_or(false));
    }
    if by_id.len() > vocab_size {
        return Err(format!(
            "the tokenizer has {} tokens but the model's vocab_size is {vocab_size}",
            by_id.len()
        ));
    }
    by_id.resize(vocab_size, None);
    let mut tokens = vec![];
    for (id, tok) in by_id.into_iter().enumerate() {
        match tok {
            Some(s) => {
                tokens.push(s);
                types.push(match special.get(&id) {
                    Some(true) => TOKEN_CONTROL,
                    Some(false) => TOKEN_USER_DEFINED,
                    None => TOKEN_NORMAL,
                });
            }
            None => {
                tokens.push(format!("[PAD{id}]"));
                types.push(5); // unused
            }
        }
    }
    let merges = match model["merges"].as_array() {
        Some(m) => m
            .iter()
            .map(|m| match m {
                Json::String(s) => Ok(s.clone()),
                Json::Array(p) if p.len() == 2 => Ok(format!(
                    "{} {}",
                    p[0].as_str().unwrap_or(""),
                    p[1].as_str().unwrap_or("")
                )),
                _ => Err("a merge is neither \"a b\" nor [a, b]".to_string()),
            })
            .collect::<Result<_, _>>()?,
        None => vec![],
    };
    let pre = pretokenizers()
        .into_iter()
        .find(|(_, v)| *v == t["pre_tokenizer"])
        .map(|(k, _)| k)
        .ok_or_else(|| {
            "the tokenizer's pre_tokenizer matches none llama.cpp names (deepseek-llm, deepseek-coder, deepseek-v3, gpt-2, smollm)".to_string()
        })?;
    Ok(GgufTokenizerMetadata {
        tokens,
        token_types: types,
        merges,
        pre,
    })
}
