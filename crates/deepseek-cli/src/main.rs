//! `deepseek`: run DeepSeek models on the CPU.

mod commands;
mod common;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Run DeepSeek-V2/V3-family and DeepSeek LLM checkpoints on the CPU.
///
/// A model is a Hugging Face folder (config.json, *.safetensors, and for text in or out
/// tokenizer.json + tokenizer_config.json with its chat template), or a GGUF file of llama.cpp's
/// `deepseek2` or `llama` architecture. Without --model, commands use the model bundled in the
/// repo (models/deepseek-coder-nano).
#[derive(Parser)]
#[command(
    name = "deepseek",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
struct Cli {
    /// Threads for the kernels (default: every core). Between parallel regions idle workers
    /// spin for up to 2 ms before sleeping; DEEPSEEK_SPIN_US=0 makes them sleep at once.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// How the KV/latent cache stores rows: f32 (exact), bf16 (half the bytes, rounded as a bf16
    /// model's reference rounds its cache; on CPUs with AMX, long-context decode attention runs
    /// on tiles and is several times faster) or q8 (8 bits per value with a scale per 32
    /// values: 3.6x smaller for DeepSeek-V2's 576-value latent rows, slightly inexact).
    #[arg(long, global = true, value_enum, default_value = "f32")]
    cache_type: common::CacheType,
    /// Highest instruction-set tier the kernels may use (default: the best this CPU has; also
    /// DEEPSEEK_ISA). x86-64: scalar, avx2, avx512, avx512-vnni, avx512-bf16, amx; AArch64:
    /// scalar, neon, neon-dot. For comparing tiers on one machine; `info` and `bench` print the
    /// tier in use and the ones the CPU has.
    #[arg(long, global = true, value_name = "TIER")]
    isa: Option<String>,
    /// Let bf16 weights meet activations rounded to bf16, as llama.cpp and PyTorch's bf16
    /// inference do (also DEEPSEEK_BF16_ACTIVATIONS=1). On CPUs with AVX512-BF16 and no AMX
    /// (AMD Zen 4/5, Intel Cooper Lake) prefill then runs on `vdpbf16ps`, about twice as fast;
    /// the logits move by the rounding (enough to change some greedy continuations). Elsewhere
    /// it has no effect.
    #[arg(long, global = true)]
    bf16_activations: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Describe a model: family, size, active parameters, dtype, cache bytes per token.
    Info(commands::info::Args),
    /// Print the token ids of a text (needs only the tokenizer files).
    Tokenize(commands::tokenize::Args),
    /// Print the chat prompt the model's template makes of a messages file.
    Template(commands::template::Args),
    /// Write the logits of every position of a token sequence to a safetensors file.
    Forward(commands::forward::Args),
    /// Continue a prompt.
    Generate(commands::generate::Args),
    /// Chat interactively, with the model's chat template and streaming output.
    Chat(commands::chat::Args),
    /// Write a checkpoint with the real shapes of a published model and random weights.
    Synth(commands::synth::Args),
    /// Measure prefill and decode speed, and decode's share of the memory bandwidth.
    Bench(commands::bench::Args),
    /// Serve the model over an OpenAI/DeepSeek-compatible HTTP API (chat, completions, FIM).
    Serve(commands::serve::Args),
    /// Run MMLU, GSM8K or HumanEval on a model and compare with DeepSeek's published figures.
    Eval(commands::eval::Args),
    /// Write a Hugging Face checkpoint as a GGUF file (q8_0, q4_k, q6_k, …) llama.cpp can load.
    Quantize(commands::quantize::Args),
}

fn main() -> ExitCode {
    // A bug must still end in one line and exit code 2, never a backtrace wall.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" (at {}:{})", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}{at}; please report it");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("DEEPSEEK_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let isa = match cli.isa.as_deref().map(deepseek_kernels::tier::Tier::parse) {
        Some(Err(e)) => Err(format!("--isa: {e}")),
        Some(Ok(t)) => Ok(Some(t)),
        None => Ok(None),
    };
    if let Err(e) = isa.and_then(deepseek_kernels::tier::init) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if let Some(n) = cli.threads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let most = 8 * cores;
        if n == 0 || n > most {
            eprintln!(
                "error: --threads {n}: give 1 to {most} (this machine has {cores} logical CPUs; threads beyond the cores only slow the kernels down)"
            );
            return ExitCode::from(2);
        }
    }
    deepseek_kernels::threads::init(cli.threads);
    if cli.bf16_activations {
        deepseek_kernels::gemm_avx512::set_bf16_activations(true);
    }
    common::set_cache_type(cli.cache_type);
    let result = std::panic::catch_unwind(|| match cli.command {
        Command::Info(a) => commands::info::run(a),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Template(a) => commands::template::run(a),
        Command::Forward(a) => commands::forward::run(a),
        Command::Generate(a) => commands::generate::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Eval(a) => commands::eval::run(a),
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(_) => ExitCode::from(2),
    }
}
