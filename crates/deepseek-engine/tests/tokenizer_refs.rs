//! Token ids and chat templates of the real DeepSeek tokenizers against the Python reference
//! (tests/tokenizer_refs.json, made by scripts/make_token_refs.py; tokenizer files fetched by
//! scripts/fetch_tokenizers.py).

use std::path::{Path, PathBuf};

use deepseek_engine::{ChatTemplate, StreamDecoder, Tokenizer};
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn refs() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(workspace().join("tests/tokenizer_refs.json")).unwrap(),
    )
    .unwrap()
}

fn tokenizer_dir(name: &str) -> PathBuf {
    let d = workspace().join("assets/tokenizers").join(name);
    assert!(
        d.join("tokenizer.json").exists(),
        "{} missing: run `python3 scripts/fetch_tokenizers.py` first",
        d.display()
    );
    d
}

fn conversations() -> Value {
    // Same conversations as scripts/make_token_refs.py.
    serde_json::json!({
        "single": [{"role": "user", "content": "What is MLA?"}],
        "system": [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hi"}],
        "multi_turn": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                       {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
        "unicode": [{"role": "user", "content": "你好！🚀\n\nline two"}],
        "tool_call": [{"role": "user", "content": "Weather in Paris?"},
                      {"role": "assistant", "content": null, "tool_calls": [
                          {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                      {"role": "tool", "content": "{\"temp\": 21}"},
                      {"role": "assistant", "content": "It is 21 degrees."},
                      {"role": "user", "content": "Thanks"}],
        "r1_think": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>greet</think>Hello!"},
                     {"role": "user", "content": "Bye"}]
    })
}

#[test]
fn ids_match_the_python_tokenizers_library() {
    let r = refs();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    for (name, entry) in r["models"].as_object().unwrap() {
        let tok = Tokenizer::from_dir(&tokenizer_dir(name)).unwrap();
        assert_eq!(
            tok.add_bos_token,
            entry["add_bos_token"].as_bool().unwrap(),
            "{name}"
        );
        assert_eq!(
            tok.bos_id.map(|b| b as u64),
            entry["bos_id"].as_u64(),
            "{name}"
        );
        for (i, text) in texts.iter().enumerate() {
            let want: Vec<u32> = serde_json::from_value(entry["raw_ids"][i].clone()).unwrap();
            let got = tok.encode(text, false).unwrap();
            assert_eq!(got, want, "{name}: ids of {text:?}");
            let with_bos = tok.encode(text, true).unwrap();
            assert_eq!(with_bos[0], tok.bos_id.unwrap(), "{name}: BOS first");
            assert_eq!(&with_bos[1..], &want[..]);
            let decoded = tok.decode(&want, true).unwrap();
            assert_eq!(
                decoded,
                entry["decoded"][i].as_str().unwrap(),
                "{name}: decode of {text:?}"
            );
        }
    }
}

#[test]
fn chat_templates_render_byte_identical_to_transformers() {
    let r = refs();
    let convs = conversations();
    let mut checked = 0;
    for (name, entry) in r["models"].as_object().unwrap() {
        let tok = Tokenizer::from_dir(&tokenizer_dir(name)).unwrap();
        let Some(src) = &tok.chat_template else {
            continue;
        };
        let t = ChatTemplate::new(
            src,
            tok.bos_token.as_deref().unwrap_or(""),
            tok.eos_token.as_deref().unwrap_or(""),
        )
        .unwrap();
        for (key, want) in entry["templates"].as_object().unwrap() {
            let (conv, gen) = key.split_once('|').unwrap();
            let got = t.render(&convs[conv], None, gen == "gen");
            match want {
                Value::String(w) => {
                    assert_eq!(got.as_ref().unwrap(), w, "{name} {key}");
                    checked += 1;
                }
                _ => assert!(
                    got.is_err(),
                    "{name} {key}: reference template raised, we rendered {got:?}"
                ),
            }
        }
    }
    assert!(checked >= 30, "only {checked} templates checked");
}

#[test]
fn streaming_decode_never_splits_a_character() {
    let tok = Tokenizer::from_dir(&tokenizer_dir("deepseek-v3")).unwrap();
    let text = "深度求索 🚀🔥 naïve — done";
    let ids = tok.encode(text, false).unwrap();
    let mut dec = StreamDecoder::new(true);
    let mut out = String::new();
    for id in ids {
        if let Some(p) = dec.push(&tok, id).unwrap() {
            assert!(
                !p.contains('\u{FFFD}'),
                "piece {p:?} holds half a character"
            );
            out.push_str(&p);
        }
    }
    assert_eq!(out, text);
}

/// Each real tokenizer written as GGUF metadata (as `deepseek quantize` writes it) and rebuilt
/// from that metadata (as a llama.cpp file is read) gives the reference ids.
#[test]
fn tokenizers_survive_the_gguf_round_trip() {
    use deepseek_engine::gguf_tokenizer::metadata_from_tokenizer_json;
    use deepseek_loader::gguf::{GgufFile, Value as G};
    use deepseek_loader::gguf_writer::write_gguf;

    let r = refs();
    let texts: Vec<String> = serde_json::from_value(r["texts"].clone()).unwrap();
    let tmp = std::env::temp_dir().join(format!("tok-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut pres = std::collections::BTreeSet::new();
    for (name, entry) in r["models"].as_object().unwrap() {
        let dir = tokenizer_dir(name);
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
                .unwrap();
        let original = Tokenizer::from_dir(&dir).unwrap();
        let vocab = original.vocab_size() + 7; // padded, as model vocabularies often are
        let meta = metadata_from_tokenizer_json(&json, vocab).unwrap();
        pres.insert(meta.pre.clone());
        let strings = |v: Vec<String>| G::Array(v.into_iter().map(G::String).collect());
        let md = vec![
            (
                "general.architecture".to_string(),
                G::String("deepseek2".into()),
            ),
            ("tokenizer.ggml.model".into(), G::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), G::String(meta.pre)),
            ("tokenizer.ggml.tokens".into(), strings(meta.tokens)),
            (
                "tokenizer.ggml.token_type".into(),
                G::Array(meta.token_types.into_iter().map(G::I32).collect()),
            ),
            ("tokenizer.ggml.merges".into(), strings(meta.merges)),
            (
                "tokenizer.ggml.bos_token_id".into(),
                G::U32(original.bos_id.unwrap()),
            ),
            (
                "tokenizer.ggml.add_bos_token".into(),
                G::Bool(original.add_bos_token),
            ),
        ];
        let path = tmp.join(format!("{name}.gguf"));
        write_gguf(&path, &md, &[], |_, _| Ok(())).unwrap();
        let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        assert_eq!(tok.bos_id, original.bos_id, "{name}");
        for (i, text) in texts.iter().enumerate() {
            let want: Vec<u32> = serde_json::from_value(entry["raw_ids"][i].clone()).unwrap();
            assert_eq!(
                tok.encode(text, false).unwrap(),
                want,
                "{name} via GGUF: {text:?}"
            );
            assert_eq!(
                tok.decode(&want, true).unwrap(),
                entry["decoded"][i].as_str().unwrap(),
                "{name} via GGUF: decode of {text:?}"
            );
        }
    }
    // The DeepSeek families map onto llama.cpp's three pre-tokenizer names.
    let want: std::collections::BTreeSet<String> =
        ["deepseek-coder", "deepseek-llm", "deepseek-v3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(pres, want);
    std::fs::remove_dir_all(tmp).ok();
}

/// `tokens_beyond` never claims more tokens than the whole encoding has, and says so for long
/// texts without encoding them whole: prose, code, one unbroken word, special tokens, CJK.
#[test]
fn tokens_beyond_is_a_lower_bound_that_stops_early() {
    let tok = Tokenizer::from_dir(&tokenizer_dir("deepseek-v2")).unwrap();
    let mut prose = String::new();
    for i in 0..4000 {
        prose.push_str(&format!(
            "Sentence {i} of a long document, with  double  spaces.\n"
        ));
    }
    let texts = [
        prose.clone(),
        "fn main() { let x = [1, 2, 3]; }\n".repeat(3000),
        "x".repeat(100_000),
        "<｜User｜>hi<｜Assistant｜>".repeat(5000),
        "你好，世界。".repeat(10_000),
    ];
    for t in &texts {
        let n = tok.encode(t, false).unwrap().len();
        for limit in [10, 1000, n / 2, n - 1, n, n + 1, 10 * n] {
            match tok.tokens_beyond(t, limit).unwrap() {
                Some(at_least) => {
                    assert!(
                        at_least > limit && at_least <= n,
                        "{at_least} vs {n} for limit {limit}"
                    );
                }
                // Close to the whole count the cuts' slack may hide the excess; far below it may not.
                None => assert!(
                    limit + 16 * (t.len() / 16384 + 1) >= n,
                    "limit {limit}, {n} tokens"
                ),
            }
        }
    }
    assert_eq!(tok.tokens_beyond("short", 3).unwrap(), None);
}
