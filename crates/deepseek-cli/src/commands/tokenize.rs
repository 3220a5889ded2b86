use anyhow::Result;

use crate::common::{load_tokenizer, ModelArg};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Print `{"ids": [...]}`.
    #[arg(long)]
    json: bool,
    /// Leave out BOS even when the tokenizer adds it.
    #[arg(long)]
    no_bos: bool,
    /// The text to tokenize.
    text: String,
}

pub fn run(a: Args) -> Result<()> {
    let tok = load_tokenizer(&a.model.dir()?)?;
    let ids = tok.encode(&a.text, !a.no_bos)?;
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
