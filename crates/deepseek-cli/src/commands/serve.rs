//! `deepseek serve`: the OpenAI/DeepSeek-compatible HTTP server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use deepseek_engine::scheduler::{self, CacheDir, SchedulerConfig};
use deepseek_engine::Generator;
use deepseek_server::AppState;

use crate::common::{load_model, load_tokenizer, ModelArg, Settings};

#[derive(clap::Args)]
#[command(
    after_help = "Open http://127.0.0.1:8080/ in a browser to chat with the model (the page streams from
/v1/chat/completions; --no-chat-page turns it off). Any OpenAI client works with
base_url=\"http://127.0.0.1:8080/v1\" and api_key=<--api-key, or anything without one>.

Endpoints: GET / (chat page), POST /v1/chat/completions, POST /v1/completions (FIM with
`suffix`; also at /beta/completions), GET /v1/models, GET /health, GET /metrics (Prometheus).

Examples:
  deepseek serve  # the bundled model; open http://127.0.0.1:8080/
  deepseek serve --model deepseek-ai/DeepSeek-V2-Lite-Chat --api-key sk-local
  curl localhost:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}'"
)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Address to listen on (0.0.0.0 to accept other machines).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 and /beta requests.
    #[arg(long, env = "DEEPSEEK_API_KEY", value_name = "KEY")]
    api_key: Option<String>,
    /// Keys with names and limits, one per line: `NAME KEY [rpm=N] [tpm=N] [concurrent=N]`
    /// (requests per minute, prompt + completion tokens per minute, requests at once; `#`
    /// comments). Each key's limits answer 429 with Retry-After for that key alone; /metrics
    /// counts usage by name. Works beside --api-key (then named `default`).
    #[arg(long, value_name = "FILE")]
    api_keys: Option<std::path::PathBuf>,
    /// Model name reported by /v1/models and in responses (default: the model folder's name).
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
    /// Most tokens (prompt + completion) per request (default: the model's
    /// max_position_embeddings, capped by --cache-tokens).
    #[arg(long, value_name = "N")]
    ctx_size: Option<usize>,
    /// Tokens the latent cache holds across all requests and the prefix cache.
    #[arg(long, default_value_t = 32768, value_name = "N")]
    cache_tokens: usize,
    /// Most sequences decoding together in one batch.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_batch: usize,
    /// Most requests waiting beyond the batch's free places; more get 429 with Retry-After.
    #[arg(long, default_value_t = 256, value_name = "N")]
    max_queue: usize,
    /// Largest request body in MiB; larger ones get 413. Prompts longer than the context are
    /// refused after reading only as much of them as shows it.
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    max_body_mb: usize,
    /// Prompt tokens per prefill step (smaller: running streams stall less for new prompts).
    #[arg(long, default_value_t = 256, value_name = "N")]
    prefill_chunk: usize,
    /// Seconds running requests get to finish after SIGTERM / Ctrl-C before they are cancelled.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    shutdown_grace: u64,
    /// Also keep whole cache blocks (64 tokens) in this folder, so repeated prefixes (system
    /// prompts, documents, earlier turns) are read back instead of computed, after an eviction
    /// from memory and across restarts. Blocks are keyed by the model's fingerprint and the
    /// cache type, so a folder may serve several models; several servers may share it.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<std::path::PathBuf>,
    /// Most GiB of block files in --cache-dir; the least recently used go first.
    #[arg(
        long,
        value_name = "GB",
        default_value_t = 10.0,
        requires = "cache_dir"
    )]
    cache_dir_max_gb: f64,
    /// Answer `/` with 404 instead of the chat page (for servers that only serve the API).
    #[arg(long)]
    no_chat_page: bool,
    /// Speculative decoding for every request: each decoding sequence drafts tokens (by prompt
    /// lookup, or with the checkpoint's multi-token-prediction module) and the step checks them
    /// with the rest of the batch. Outputs are the same as without it; fewer steps.
    #[arg(long, value_enum, value_name = "METHOD")]
    draft: Option<crate::commands::generate::DraftArg>,
    /// Most draft tokens a sequence brings to a step (with --draft).
    #[arg(long, default_value_t = 4, value_name = "K", requires = "draft")]
    draft_tokens: usize,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    if a.max_batch == 0 || a.prefill_chunk == 0 || a.cache_tokens == 0 || a.max_body_mb == 0 {
        bail!("--max-batch, --prefill-chunk, --cache-tokens and --max-body-mb must be at least 1");
    }
    if !(1..=32).contains(&a.draft_tokens) {
        bail!("--draft-tokens must be 1 to 32, got {}", a.draft_tokens);
    }
    if !(a.cache_dir_max_gb.is_finite() && a.cache_dir_max_gb > 0.0) {
        bail!(
            "--cache-dir-max-gb {}: must be a positive number of GiB",
            a.cache_dir_max_gb
        );
    }
    if a.max_body_mb > 4096 {
        bail!("--max-body-mb {}: at most 4096", a.max_body_mb);
    }
    // Read before the model loads, so a mistake in it costs no wait.
    let file_keys = a
        .api_keys
        .as_deref()
        .map(deepseek_server::keys::Keys::from_file)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let dir = a.model.dir()?;
    let model = load_model(&dir, &s)?;
    let tok =
        Arc::new(load_tokenizer(&dir).with_context(|| {
            format!("{}: the server needs the model's tokenizer", dir.display())
        })?);
    if let Some(why) = a
        .draft
        .and_then(|d| d.options(1).method.unsupported_by(&model))
    {
        bail!("--draft mtp: {}: {why}", dir.display());
    }
    let eos = Generator::new(model.clone(), Some(tok.clone())).eos_ids();
    let max_pos = model.config.max_position_embeddings;
    let context = a
        .ctx_size
        .unwrap_or(max_pos)
        .min(max_pos)
        .min(a.cache_tokens);
    let name = a
        .served_model_name
        .clone()
        .unwrap_or_else(|| a.model.name());
    let cache_bytes = a
        .cache_tokens
        .saturating_mul(model.cache_shape(s.cache.dtype()).bytes_per_token());
    if let Some(total) = physical_memory() {
        if cache_bytes > total {
            bail!(
                "--cache-tokens {}: the cache would take {} GiB, more than this machine's {} GiB of memory",
                a.cache_tokens,
                cache_bytes >> 30,
                total >> 30
            );
        }
    }
    if a.max_batch > a.cache_tokens {
        bail!(
            "--max-batch {}: at most --cache-tokens ({}) sequences can run at once",
            a.max_batch,
            a.cache_tokens
        );
    }
    let cache_mib = cache_bytes / (1 << 20);
    let (handle, thread) = scheduler::spawn(
        model,
        Some(tok.clone()),
        eos,
        SchedulerConfig {
            max_batch: a.max_batch,
            max_queue: a.max_queue,
            cache_tokens: a.cache_tokens,
            prefill_chunk: a.prefill_chunk,
            cache_dir: a.cache_dir.clone().map(|path| CacheDir {
                path,
                max_bytes: (a.cache_dir_max_gb * (1u64 << 30) as f64) as u64,
            }),
            cache_dtype: s.cache.dtype(),
            draft: a.draft.map(|m| m.options(a.draft_tokens)),
        },
    );
    let mut state = AppState::new(
        handle.clone(),
        tok,
        name.clone(),
        context,
        a.api_key.clone(),
    )?;
    state.http.max_body_bytes = a.max_body_mb << 20;
    if let Some(mut keys) = file_keys {
        if let Some(single) = state.keys.take() {
            keys.extend(single);
        }
        state.keys = Some(keys);
    }
    state.chat_page = !a.no_chat_page;
    let state = Arc::new(state);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = format!("{}:{}", a.host, a.port);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("--host/--port: cannot listen on {addr}"))?;
        eprintln!(
            "serving `{name}` on http://{addr}/v1 (context {context} tokens, cache {} tokens = {cache_mib} MiB, batch {}{})",
            a.cache_tokens,
            a.max_batch,
            match (&a.api_keys, &a.api_key) {
                (Some(_), _) => format!(
                    ", {} API keys",
                    state.keys.as_ref().map_or(0, |k| k.iter().count())
                ),
                (None, Some(_)) => ", API key required".into(),
                (None, None) => String::new(),
            }
        );
        if let Some(d) = &a.cache_dir {
            eprintln!(
                "cache dir: {} (up to {} GiB of 64-token blocks)",
                d.display(),
                a.cache_dir_max_gb
            );
        }
        if !a.no_chat_page {
            eprintln!("chat page: http://{addr}/");
        }
        deepseek_server::serve(
            state,
            listener,
            deepseek_server::shutdown_signal(),
            Duration::from_secs(a.shutdown_grace),
        )
        .await
        .context("server")
    })?;
    handle.shutdown();
    let _ = thread.join();
    eprintln!("server stopped");
    Ok(())
}

/// Bytes of physical memory (Linux: /proc/meminfo), or None where it cannot be read.
fn physical_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: usize = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}
