//! `deepseek imatrix`: an importance matrix over a text, in llama.cpp's file formats.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use deepseek_engine::imatrix::Collector;
use deepseek_loader::gguf_export::{plan, ExportType};

use crate::common::{load_model, load_tokenizer, ModelArg, Settings};

/// The file is the one llama.cpp's llama-imatrix writes (GGUF, or the legacy .dat by the
/// name's extension): llama-quantize --imatrix reads ours, and quantize --imatrix theirs.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek imatrix --text calib.txt --out imatrix.gguf   # the bundled model
  deepseek imatrix --model DIR --text wiki.txt --chunks 100 --out imatrix.dat
  deepseek quantize --model DIR --imatrix imatrix.gguf -t q4_k -o q4_k.gguf")]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// The text to measure over (plain UTF-8; its tokens are cut into chunks).
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Where to write: NAME.gguf (llama.cpp's current format) or NAME.dat (its legacy one).
    #[arg(long, short = 'o', value_name = "FILE", default_value = "imatrix.gguf")]
    out: PathBuf,
    /// Tokens per chunk, each evaluated from an empty cache (llama-imatrix's -c).
    #[arg(long, default_value_t = 512)]
    chunk: usize,
    /// Evaluate at most this many chunks (default: the whole text).
    #[arg(long)]
    chunks: Option<usize>,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    if a.chunk < 16 {
        bail!("--chunk must be at least 16 tokens, got {}", a.chunk);
    }
    let text =
        std::fs::read_to_string(&a.text).with_context(|| format!("--text {}", a.text.display()))?;
    let dir = a.model.dir()?;
    let model = load_model(&dir, &s)?;
    if a.chunk > model.config.max_position_embeddings {
        bail!(
            "--chunk {} exceeds the model's context of {} tokens",
            a.chunk,
            model.config.max_position_embeddings
        );
    }
    let tok = load_tokenizer(&dir)?;
    // With BOS first, as llama-imatrix tokenizes, so the chunks are the same tokens.
    let tokens = tok.encode(&text, true)?;
    if tokens.len() < a.chunk {
        bail!(
            "--text {}: {} tokens, fewer than one chunk of {} (--chunk)",
            a.text.display(),
            tokens.len(),
            a.chunk
        );
    }
    let collector = Collector::default();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "measuring [{bar:30}] {pos}/{len} chunks {elapsed} (eta {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let chunks = collector.run(
        &model,
        &tokens,
        a.chunk,
        tok.bos_id,
        a.chunks,
        &mut |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        },
    )?;
    bar.finish_and_clear();
    let (config, store) = deepseek_loader::open_checkpoint(&dir)?;
    let p = plan(&config, &store, ExportType::F32, vec![])?;
    let dataset = a.text.display().to_string();
    let m = collector.to_imatrix(&p, a.chunk, chunks, &dataset);
    m.write(&a.out)?;
    let partial = m
        .entries
        .values()
        .filter(|e| e.counts.contains(&0.0))
        .count();
    println!(
        "wrote {} ({} matrices, {chunks} chunks of {} tokens{})",
        a.out.display(),
        m.entries.len(),
        a.chunk,
        match partial {
            0 => String::new(),
            n => format!("; {n} with experts the text never chose"),
        }
    );
    Ok(())
}
