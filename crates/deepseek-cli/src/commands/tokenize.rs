use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::common::{load_tokenizer, ModelArg};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek tokenize 'def main():'  # the bundled model's tokenizer
  deepseek tokenize --model deepseek-ai/DeepSeek-V3 --file prompt.txt --json
  cat prompt.txt | deepseek tokenize -")]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Print `{"ids": [...]}`.
    #[arg(long)]
    json: bool,
    /// Leave out BOS even when the tokenizer adds it.
    #[arg(long)]
    no_bos: bool,
    /// Read the text from this file instead (UTF-8).
    #[arg(long, value_name = "PATH", conflicts_with = "text")]
    file: Option<PathBuf>,
    /// The text to tokenize; `-` reads it from standard input.
    #[arg(required_unless_present = "file")]
    text: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    let text = match (&a.file, a.text.as_deref()) {
        (Some(p), _) => {
            let bytes =
                std::fs::read(p).with_context(|| format!("--file {}: cannot read", p.display()))?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "--file {}: not UTF-8 text (invalid byte at offset {})",
                    p.display(),
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        (None, Some("-")) => {
            let mut bytes = vec![];
            std::io::stdin()
                .read_to_end(&mut bytes)
                .context("standard input: cannot read")?;
            String::from_utf8(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "standard input: not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                )
            })?
        }
        (None, Some(t)) => t.to_string(),
        (None, None) => bail!("give the text, `-` for standard input, or --file PATH"),
    };
    let tok = load_tokenizer(&a.model.dir()?)?;
    let ids = tok.encode(&text, !a.no_bos)?;
    if a.json {
        println!("{}", serde_json::json!({ "ids": ids }));
    } else {
        println!(
            "{}",
            ids.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    Ok(())
}
