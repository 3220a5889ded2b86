//! Any bytes sent as a chat or completions body go through what the server does before the
//! scheduler (parsing, checks, the chat template) to a request or a 4xx error, never a panic.
#![no_main]
use std::sync::OnceLock;

use deepseek_engine::ChatTemplate;
use deepseek_server::api::{check_messages, normalize_messages, ChatRequest, Common, CompletionRequest};
use deepseek_server::error::parse_body;
use libfuzzer_sys::fuzz_target;

fn template() -> &'static ChatTemplate {
    static T: OnceLock<ChatTemplate> = OnceLock::new();
    T.get_or_init(|| {
        let cfg: serde_json::Value = serde_json::from_str(include_str!(
            "../../models/deepseek-coder-nano/tokenizer_config.json"
        ))
        .unwrap();
        ChatTemplate::new(cfg["chat_template"].as_str().unwrap(), "<s>", "</s>").unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(common) = parse_body::<Common>(data) {
        let _ = common.validate();
        let _ = common.sampling();
    }
    let _ = parse_body::<CompletionRequest>(data);
    if let Ok(req) = parse_body::<ChatRequest>(data) {
        if check_messages(&req.messages).is_ok() {
            let messages = serde_json::Value::Array(normalize_messages(&req.messages));
            let tools = req.tools.map(serde_json::Value::Array);
            let _ = template().render(&messages, tools.as_ref(), true);
        }
    }
});
