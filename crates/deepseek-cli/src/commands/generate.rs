use std::io::Write;

use anyhow::{bail, Context, Result};
use deepseek_engine::{DraftMethod, DraftOptions, GenerateOptions, Generator, SamplingParams};

use crate::common::{load_model, maybe_tokenizer, parse_token_ids, ModelArg, Settings};

/// Sampling options shared by `generate` and `chat`.
#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Tokens to generate at most.
    #[arg(short = 'n', long = "max-tokens", default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Nucleus sampling mass (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Drop tokens below this fraction of the top probability (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Penalise tokens already present (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// Random seed: the same seed gives the same tokens.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop when the output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Speculative decoding: check draft tokens several per step. `lookup` drafts what
    /// followed the last few tokens where they occurred before (in the prompt or the output):
    /// fast on edits and quotes of the prompt. `mtp` drafts with the checkpoint's own
    /// multi-token-prediction module (DeepSeek-V3/R1, the bundled model). The output is the
    /// same as without it.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub draft: Option<DraftArg>,
    /// Most draft tokens checked per step (with --draft).
    #[arg(long, default_value_t = 4, value_name = "K", requires = "draft")]
    pub draft_tokens: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DraftArg {
    /// Prompt lookup (n-grams of the prompt and output).
    Lookup,
    /// The checkpoint's multi-token-prediction module (V3's MTP).
    Mtp,
}

impl DraftArg {
    pub fn options(self, max_tokens: usize) -> DraftOptions {
        DraftOptions {
            method: match self {
                DraftArg::Lookup => DraftMethod::Lookup,
                DraftArg::Mtp => DraftMethod::Mtp,
            },
            max_tokens,
        }
    }
}

impl SamplingArgs {
    pub fn options(&self) -> Result<GenerateOptions> {
        if self.temperature < 0.0 || !self.temperature.is_finite() {
            bail!("--temperature must be 0 or more, got {}", self.temperature);
        }
        if !(0.0..=1.0).contains(&self.top_p) || self.top_p == 0.0 {
            bail!("--top-p must be in (0, 1], got {}", self.top_p);
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            bail!("--min-p must be in [0, 1], got {}", self.min_p);
        }
        if self.repetition_penalty <= 0.0 {
            bail!(
                "--repetition-penalty must be positive, got {}",
                self.repetition_penalty
            );
        }
        if !(1..=32).contains(&self.draft_tokens) {
            bail!("--draft-tokens must be 1 to 32, got {}", self.draft_tokens);
        }
        Ok(GenerateOptions {
            draft: self.draft.map(|m| m.options(self.draft_tokens)),
            max_new_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repetition_penalty: self.repetition_penalty,
                seed: self.seed,
                ..Default::default()
            },
            stop: self.stop.clone(),
            stop_on_eos: true,
        })
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek generate --prompt 'def fibonacci(n):' -n 64
  deepseek generate --prompt $'def total(items):\\n    result = 0\\n    ' \\
      --suffix $'\\n    return result\\n' -n 12          # fill in the middle
  deepseek generate --model deepseek-ai/DeepSeek-V2-Lite --json \\
      --prompt \"$(cat edit-request.txt)\" --draft lookup   # speculative")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Text to continue (BOS is added when the tokenizer says so).
    #[arg(
        long,
        short = 'p',
        conflicts_with = "token_ids",
        required_unless_present = "token_ids"
    )]
    prompt: Option<String>,
    /// Prompt as token ids instead, e.g. 0,5,7.
    #[arg(long, value_name = "IDS")]
    token_ids: Option<String>,
    /// Fill in the middle: the text after the hole. The prompt is the text before it, and the
    /// model writes what goes between (DeepSeek-Coder's <｜fim▁begin｜>…<｜fim▁hole｜>…<｜fim▁end｜>).
    #[arg(long, requires = "prompt")]
    suffix: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Print one JSON object: {"token_ids": [...], "text": "...", ...}.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    let opts = a.sampling.options()?;
    let dir = a.model.dir()?;
    let tokenizer = maybe_tokenizer(&dir)?;
    let model = load_model(&dir, &s)?;
    let prompt = match (&a.prompt, &a.token_ids) {
        (_, Some(ids)) => parse_token_ids(ids, model.config.vocab_size)?,
        (Some(text), None) => match (&tokenizer, &a.suffix) {
            (Some(t), None) => t.encode(text, true)?,
            (Some(t), Some(suffix)) => t.encode_fim(text, suffix)?.with_context(|| {
                format!(
                    "--suffix: the tokenizer in {} has no fill-in-the-middle tokens",
                    dir.display()
                )
            })?,
            (None, _) => bail!(
                "{} has no tokenizer.json: use --token-ids instead of --prompt",
                dir.display()
            ),
        },
        (None, None) => unreachable!("clap requires one"),
    };
    let gen = Generator::new(model, tokenizer).with_cache_dtype(s.cache.dtype());
    let stream = !a.json;
    let mut stdout = std::io::stdout();
    if stream {
        if let Some(text) = &a.prompt {
            print!("{text}");
            stdout.flush()?;
        }
    }
    let t0 = std::time::Instant::now();
    let out = gen.generate(&prompt, &opts, &mut |piece| {
        if stream {
            print!("{piece}");
            let _ = stdout.flush();
        }
    })?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"token_ids": out.token_ids, "text": out.text, "prompt_tokens": out.prompt_tokens,
                               "completion_tokens": out.token_ids.len(), "finish_reason": out.finish_reason.as_str(),
                               "steps": out.steps, "draft_proposed": out.draft_proposed, "draft_accepted": out.draft_accepted,
                               "draft_steps": out.draft_steps, "first_draft_accepted": out.first_draft_accepted})
        );
    } else {
        if let Some(suffix) = &a.suffix {
            // The filled middle in place: prefix, middle, suffix.
            print!("{suffix}");
        }
        if gen.tokenizer.is_none() {
            print!(
                "{}",
                out.token_ids
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        println!();
        let drafts = if opts.draft.is_some() {
            format!(
                ", {} steps, {} of {} drafts accepted",
                out.steps, out.draft_accepted, out.draft_proposed
            )
        } else {
            String::new()
        };
        eprintln!(
            "[{} prompt + {} generated tokens in {:.2}s, {:.1} tok/s{drafts}]",
            out.prompt_tokens,
            out.token_ids.len(),
            secs,
            out.token_ids.len() as f64 / secs
        );
    }
    Ok(())
}
