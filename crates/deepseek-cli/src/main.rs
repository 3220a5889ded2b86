//! `deepseek`: run DeepSeek models on the CPU (and, for `bench`, on an NVIDIA GPU).

mod commands;
mod common;
mod expert_parallel;

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
    arg_required_else_help = true,
    after_help = "`deepseek help COMMAND` shows each command's options and examples.

Examples:
  deepseek generate --prompt 'def fibonacci(n):'        # the bundled model
  deepseek chat --model deepseek-ai/DeepSeek-V2-Lite-Chat    # from the HF cache
  deepseek serve --model V2-Lite-Chat.Q4_K_M.gguf  # open http://127.0.0.1:8080/"
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
    /// Split the routed experts across the ranks of an MPI job: `mpirun -np N deepseek
    /// --expert-parallel COMMAND …` (a build with `--features mpi`). Rank 0 runs the command
    /// and holds attention, dense layers, shared experts, the cache and its share of the
    /// experts; every other rank loads only its experts and runs them on the tokens routed to
    /// them, one sum per MoE layer bringing their output back. For models bigger than one
    /// machine's memory (EXPERT_PARALLEL.md).
    #[arg(long, global = true)]
    expert_parallel: bool,
    /// Which rank holds which routed expert under --expert-parallel (`info --ranks N` shows it).
    #[arg(long, global = true, value_enum, default_value = "contiguous")]
    expert_placement: expert_parallel::Placement,
    /// Where the model runs: cpu, cuda (the first NVIDIA GPU), cuda:N, or emulated (the CUDA
    /// kernels in their CPU emulation: the GPU path's code without a GPU, very slow; for
    /// tests). The GPU path runs every family under `bench` so far; the other commands run on
    /// the CPU. The driver, NVRTC and cuBLAS (CUDA 13) are loaded at run
    /// time; where one is missing the command says which and stops.
    #[arg(
        long,
        global = true,
        default_value = "cpu",
        env = "DEEPSEEK_DEVICE",
        value_name = "DEVICE"
    )]
    device: deepseek_cuda::Device,
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
    /// Measure an importance matrix over a text (llama.cpp's imatrix file), for quantizing.
    Imatrix(commands::imatrix::Args),
}

impl Command {
    /// The model a command runs, for the other ranks of --expert-parallel to load their
    /// experts of; an error for commands it does not apply to.
    fn expert_parallel_model(&self) -> Result<&common::ModelArg, String> {
        match self {
            Command::Info(a) => Ok(&a.model),
            Command::Forward(a) => Ok(&a.model),
            Command::Generate(a) => Ok(&a.model),
            Command::Chat(a) => Ok(&a.model),
            Command::Bench(a) => Ok(&a.model),
            Command::Serve(a) => Ok(&a.model),
            Command::Eval(a) => Ok(&a.model),
            Command::Imatrix(_) => Err("--expert-parallel: `imatrix` must see every expert's inputs; run it in one process".into()),
            Command::Tokenize(_)
            | Command::Template(_)
            | Command::Synth(_)
            | Command::Quantize(_) => Err("--expert-parallel: this command runs no model; leave the flag (and mpirun) out".into()),
        }
    }
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
    let tuning = deepseek_kernels::Precision::from_tuning(deepseek_kernels::tuning::get());
    if cli.device != deepseek_cuda::Device::Cpu && !matches!(cli.command, Command::Bench(_)) {
        eprintln!(
            "error: --device {}: only `bench` runs on the GPU path so far; leave --device out to run this command on the CPU",
            cli.device
        );
        return ExitCode::from(2);
    }
    if cli.device != deepseek_cuda::Device::Cpu && cli.expert_parallel {
        eprintln!("error: --device {} with --expert-parallel: the GPU path holds every expert in one process", cli.device);
        return ExitCode::from(2);
    }
    let mut settings = common::Settings {
        cache: cli.cache_type,
        precision: deepseek_kernels::Precision {
            bf16_activations: cli.bf16_activations || tuning.bf16_activations,
            exact_activations: tuning.exact_activations,
        },
        experts: None,
        expert_placement: cli.expert_placement.policy(),
        device: cli.device,
    };
    // Kept to the end of `main`: dropping it leaves the MPI job.
    let mut _mpi = None;
    if cli.expert_parallel {
        let cluster = match expert_parallel::start(cli.expert_placement) {
            Ok((cluster, guard)) => {
                _mpi = Some(guard);
                cluster
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        let model = match cli.command.expert_parallel_model() {
            Ok(m) => m,
            Err(e) => {
                if cluster.rank() == 0 {
                    eprintln!("error: {e}");
                }
                return ExitCode::from(2);
            }
        };
        if cluster.rank() != 0 {
            let rank = cluster.rank();
            return match model
                .dir()
                .and_then(|d| cluster.follow(&d, settings.precision))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // One write, so the ranks' lines do not interleave mid-line.
                    let line = format!("error: rank {rank}: {e:#}\n");
                    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
                    ExitCode::from(2)
                }
            };
        }
        settings.experts = Some(std::sync::Arc::new(cluster));
    }
    let cluster = settings.experts.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cli.command {
        Command::Info(a) => commands::info::run(a, settings),
        Command::Tokenize(a) => commands::tokenize::run(a),
        Command::Template(a) => commands::template::run(a),
        Command::Forward(a) => commands::forward::run(a, settings),
        Command::Generate(a) => commands::generate::run(a, settings),
        Command::Chat(a) => commands::chat::run(a, settings),
        Command::Synth(a) => commands::synth::run(a),
        Command::Bench(a) if settings.device != deepseek_cuda::Device::Cpu => {
            commands::bench_gpu::run(&a, &settings)
        }
        Command::Bench(a) => commands::bench::run(a, settings),
        Command::Quantize(a) => commands::quantize::run(a),
        Command::Imatrix(a) => commands::imatrix::run(a, settings),
        Command::Serve(a) => commands::serve::run(a, settings),
        Command::Eval(a) => commands::eval::run(a, settings),
    }));
    if let Some(c) = cluster {
        c.finish();
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The words of a shell command line as the examples write them: '…', "…" and $'…' (with
    /// \n) quoting; a word starting with `#` ends the line.
    fn shell_words(line: &str) -> Vec<String> {
        let mut words = vec![];
        let mut chars = line.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let Some(&first) = chars.peek() else { break };
            if first == '#' {
                break;
            }
            let mut w = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                match c {
                    '\'' => w.extend(chars.by_ref().take_while(|&c| c != '\'')),
                    '"' => w.extend(chars.by_ref().take_while(|&c| c != '"')),
                    '$' if chars.peek() == Some(&'\'') => {
                        chars.next();
                        let quoted: String = chars.by_ref().take_while(|&c| c != '\'').collect();
                        w.push_str(&quoted.replace("\\n", "\n"));
                    }
                    c => w.push(c),
                }
            }
            words.push(w);
        }
        words
    }

    #[test]
    fn shell_words_reads_the_quoting_the_examples_use() {
        assert_eq!(
            shell_words("deepseek generate --prompt $'a\\n  b' -p 'x y' \"z\" # note"),
            ["deepseek", "generate", "--prompt", "a\n  b", "-p", "x y", "z"]
        );
    }

    /// `deepseek --help` and every command's help end with examples, and every example of
    /// `deepseek` parses with today's flags (so an example cannot silently go stale).
    #[test]
    fn every_help_ends_with_examples_that_parse() {
        let root = Cli::command();
        let mut helps = vec![(
            "deepseek".to_string(),
            root.get_after_help().map(|h| h.to_string()),
        )];
        for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
            helps.push((
                sub.get_name().to_string(),
                sub.get_after_help().map(|h| h.to_string()),
            ));
        }
        for (name, help) in helps {
            let help = help.unwrap_or_else(|| panic!("`{name} --help` has no examples"));
            let (_, examples) = help
                .rsplit_once("Examples:\n")
                .unwrap_or_else(|| panic!("`{name} --help` has no Examples: section"));
            let mut runs = 0;
            let mut joined = String::new();
            for line in examples.lines().filter(|l| !l.trim().is_empty()) {
                assert!(
                    line.starts_with("  "),
                    "`{name} --help`: text after the examples: {line:?}"
                );
                // Within a standard terminal, so clap never wraps an example mid-command.
                assert!(
                    line.len() <= 80,
                    "`{name} --help`: example line over 80 columns: {line:?}"
                );
                // A `\` at the end continues the command on the next line.
                if let Some(head) = line.trim_end().strip_suffix('\\') {
                    joined.push_str(head);
                    continue;
                }
                joined.push_str(line);
                let line = std::mem::take(&mut joined);
                let words = shell_words(line.trim());
                // `cat f | deepseek …`: the deepseek part.
                let Some(at) = words.iter().position(|w| w == "deepseek") else {
                    continue;
                };
                runs += 1;
                if let Err(e) = Cli::try_parse_from(&words[at..]) {
                    panic!(
                        "`{name} --help`: the example `{}` does not parse: {e}",
                        line.trim()
                    );
                }
            }
            assert!(
                (2..=4).contains(&runs),
                "`{name} --help`: {runs} examples of deepseek"
            );
        }
    }
}
