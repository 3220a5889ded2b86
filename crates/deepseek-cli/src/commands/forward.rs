use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use deepseek_model::{LogitsFor, PrefillPath, SeqStep};

use crate::common::{load_model, parse_token_ids, ModelArg, Settings};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    /// The whole sequence in one step (decompressed MLA attention).
    Prefill,
    /// One token at a time through the latent cache and absorbed attention.
    Decode,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek forward --token-ids 0,5,7 --out logits.safetensors
  deepseek forward --model ~/models/DeepSeek-V2-Lite --token-ids 0,5,7 \\
      --mode decode --out decode.safetensors")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Token ids, e.g. 0,5,7.
    #[arg(long, value_name = "IDS")]
    token_ids: String,
    /// Output file; gets tensor `logits` (float32, [tokens, vocab]).
    #[arg(long, value_name = "FILE.safetensors")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "prefill")]
    mode: Mode,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    let model = load_model(&a.model.dir()?, &s)?;
    let ids = parse_token_ids(&a.token_ids, model.config.vocab_size)?;
    let mut pool = model.new_cache_pool(ids.len(), s.cache.dtype());
    let mut cache = Default::default();
    let logits = match a.mode {
        Mode::Prefill => model.forward(
            &mut pool,
            &mut [SeqStep {
                tokens: &ids,
                cache: &mut cache,
            }],
            LogitsFor::AllTokens,
            PrefillPath::Decompressed,
            None,
        )?,
        Mode::Decode => {
            let mut all = Vec::with_capacity(ids.len() * model.config.vocab_size);
            for t in &ids {
                all.extend(model.forward(
                    &mut pool,
                    &mut [SeqStep {
                        tokens: std::slice::from_ref(t),
                        cache: &mut cache,
                    }],
                    LogitsFor::LastToken,
                    PrefillPath::Absorbed,
                    None,
                )?);
            }
            all
        }
    };
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F32,
        vec![ids.len(), model.config.vocab_size],
        &bytes,
    )?;
    safetensors::tensor::serialize_to_file(
        HashMap::from([("logits".to_string(), view)]),
        None,
        &a.out,
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!(
        "wrote logits [{}, {}] to {}",
        ids.len(),
        model.config.vocab_size,
        a.out.display()
    );
    Ok(())
}
