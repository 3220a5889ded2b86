use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::common::{chat_template, load_tokenizer, ModelArg};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  echo '[{\"role\": \"user\", \"content\": \"Hi\"}]' > msgs.json
  deepseek template --messages msgs.json
  deepseek template --model deepseek-ai/DeepSeek-V2-Lite-Chat \\
      --messages msgs.json --no-generation-prompt")]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// JSON file with an OpenAI-style messages list (or an object with "messages" and "tools").
    #[arg(long, value_name = "FILE.json")]
    messages: PathBuf,
    /// Do not end with the assistant's turn opener.
    #[arg(long)]
    no_generation_prompt: bool,
}

pub fn run(a: Args) -> Result<()> {
    let dir = a.model.dir()?;
    let tok = load_tokenizer(&dir)?;
    let t = chat_template(&tok, &dir)?;
    let text = std::fs::read_to_string(&a.messages)
        .with_context(|| format!("--messages {}", a.messages.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("--messages {}: invalid JSON", a.messages.display()))?;
    let (messages, tools) = match &v {
        serde_json::Value::Array(_) => (v.clone(), None),
        serde_json::Value::Object(o) if o.get("messages").is_some_and(|m| m.is_array()) => {
            (o["messages"].clone(), o.get("tools").cloned())
        }
        _ => bail!(
            "--messages {}: expected a list of messages or an object with a \"messages\" list",
            a.messages.display()
        ),
    };
    print!(
        "{}",
        t.render(&messages, tools.as_ref(), !a.no_generation_prompt)?
    );
    Ok(())
}
