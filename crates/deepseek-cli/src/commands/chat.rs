use std::io::{BufRead, Write};

use anyhow::{bail, Result};
use deepseek_engine::Generator;
use serde_json::json;

use crate::commands::generate::SamplingArgs;
use crate::common::{chat_template, load_model, maybe_tokenizer, ModelArg, Settings};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek chat  # the bundled model; /exit or Ctrl-D ends
  deepseek chat --model deepseek-ai/DeepSeek-V2-Lite-Chat --system 'Be brief.'
  deepseek chat --model V2-Lite-Chat.Q4_K_M.gguf --temperature 0.7 --top-p 0.95")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// A system prompt for the conversation.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    let opts = a.sampling.options()?;
    let dir = a.model.dir()?;
    let Some(tok) = maybe_tokenizer(&dir)? else {
        bail!("{} has no tokenizer.json: chat needs one", dir.display())
    };
    let template = chat_template(&tok, &dir)?;
    let gen =
        Generator::new(load_model(&dir, &s)?, Some(tok.clone())).with_cache_dtype(s.cache.dtype());
    let mut messages = vec![];
    if let Some(s) = &a.system {
        messages.push(json!({"role": "system", "content": s}));
    }
    let interactive = std::io::IsTerminal::is_terminal(&std::io::stdin());
    if interactive {
        eprintln!(
            "chatting with {} — /reset clears the conversation, /exit or Ctrl-D quits",
            dir.display()
        );
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages.truncate(a.system.is_some() as usize);
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        let prompt_text =
            template.render(&serde_json::Value::Array(messages.clone()), None, true)?;
        // The template writes BOS itself.
        let prompt = tok.encode(&prompt_text, false)?;
        let out = gen.generate(&prompt, &opts, &mut |piece| {
            print!("{piece}");
            let _ = stdout.flush();
        })?;
        println!();
        messages.push(json!({"role": "assistant", "content": out.text}));
    }
    Ok(())
}
