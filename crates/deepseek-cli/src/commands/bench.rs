use std::time::Instant;

use anyhow::{bail, Result};
use deepseek_cache::SequenceCache;
use deepseek_engine::generate::prefill;
use deepseek_model::{LogitsFor, PrefillPath, SeqStep};
use serde_json::json;

use crate::common::{load_model, ModelArg, Settings};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek bench -p 512 -n 128                         # the bundled model
  deepseek bench --model DeepSeek-V2-Lite-Chat.Q4_K_M.gguf --depth 16384 -n 32
  deepseek bench -p 0 -n 64 --verify 2 --json   # + speculative verify steps
  deepseek --device cuda bench -p 4096 -n 128 --batch 32   # on the GPU")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Prompt tokens for the prefill test (0 skips it).
    #[arg(short = 'p', long, default_value_t = 512)]
    pub(crate) prompt: usize,
    /// Tokens to decode (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    pub(crate) gen: usize,
    /// Context already in the cache before decoding starts.
    #[arg(long, default_value_t = 0)]
    pub(crate) depth: usize,
    /// How the depth context is made: `synthetic` writes random cache rows (fast; attention
    /// costs the same), `prefill` runs the model over random tokens.
    #[arg(long, default_value = "synthetic", value_parser = ["synthetic", "prefill"])]
    depth_fill: String,
    /// Also time speculative verify steps of K drafts, all accepted: each step runs K+1 of
    /// the tokens the one-token decode produced, at the same depth (what a step costs when
    /// every draft is right; the acceptance of real drafts is for `generate --json` to show).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..=32))]
    verify: Option<u64>,
    /// Also decode -n tokens after this file's text, greedily, without and with drafts
    /// (--draft; K = --verify, else 4): the acceptance, tokens per step and decode speed that
    /// real text gets (the model needs a tokenizer).
    #[arg(long, value_name = "FILE")]
    draft_prompt: Option<std::path::PathBuf>,
    /// Where --draft-prompt's drafts come from: prompt lookup, or the checkpoint's
    /// multi-token-prediction module.
    #[arg(long, value_enum, default_value = "lookup", value_name = "METHOD")]
    draft: crate::commands::generate::DraftArg,
    /// Repetitions; the median and spread are reported.
    #[arg(short = 'r', long, default_value_t = 3)]
    pub(crate) repetitions: usize,
    /// Sequences decoding together in a second decode test (with --device cuda; each starts
    /// at --depth).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub(crate) batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The process's peak resident set (Linux `VmHWM`), if known.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Starts the peak-RSS measurement over (Linux 4.0+: writing 5 to `clear_refs` resets `VmHWM`
/// to the current resident set). False where that is not possible.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The benches' token stream: xorshift from a fixed seed, the same tokens every run.
pub(crate) fn random_tokens(vocab: usize) -> impl FnMut() -> u32 {
    let mut seed = 12345u64;
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % vocab as u64) as u32
    }
}

fn median_spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if a.batch != 1 {
        bail!("--batch: the decode test of several sequences runs with --device cuda (on the CPU, `scripts/bench_serving.py` measures batched decode through the server)");
    }
    let dir = a.model.dir()?;
    let bw = deepseek_kernels::probe::read_bandwidth(1 << 30, 5);
    // The probe's 1 GiB buffer is freed by now, but it set the peak: measure the peak from
    // here (without that, a model smaller than the buffer reported the probe's peak). Where the
    // peak cannot be reset, none is reported rather than a wrong one.
    let peak_is_ours = reset_peak_rss();
    // The file's facts are read before the model loads: opening a checkpoint may build small
    // tensors (GGUF's split kv_b), which would otherwise add to the peak RSS measured below.
    let (dtype, disk_bytes) = {
        let (_, store) = deepseek_loader::open_checkpoint(&dir)?;
        (store.main_dtype(), store.total_bytes())
    };
    let model = load_model(&dir, &s)?;
    let c = &model.config;
    if a.prompt > c.max_position_embeddings {
        bail!(
            "-p {} exceeds the model's context of {} tokens",
            a.prompt,
            c.max_position_embeddings
        );
    }
    if a.depth.saturating_add(a.gen).saturating_add(1) > c.max_position_embeddings {
        bail!(
            "--depth {} + -n {} exceeds the model's context of {} tokens",
            a.depth,
            a.gen,
            c.max_position_embeddings
        );
    }
    let threads = deepseek_kernels::threads::current();
    let mut rand_token = random_tokens(c.vocab_size);

    // Warm-up: page the weights in (a decode step touches every dense weight, experts vary).
    {
        let mut pool = model.new_cache_pool(64, s.cache.dtype());
        let mut cache = SequenceCache::default();
        let toks: Vec<u32> = (0..16).map(|_| rand_token()).collect();
        model.forward(
            &mut pool,
            &mut [SeqStep {
                tokens: &toks,
                cache: &mut cache,
            }],
            LogitsFor::LastToken,
            PrefillPath::Auto,
            None,
        )?;
    }

    let mut prefill_tok_s = vec![];
    if a.prompt > 0 {
        for _ in 0..a.repetitions {
            let toks: Vec<u32> = (0..a.prompt).map(|_| rand_token()).collect();
            let mut pool = model.new_cache_pool(a.prompt, s.cache.dtype());
            let mut cache = SequenceCache::default();
            let t = Instant::now();
            prefill(&model, &mut pool, &mut cache, &toks)?;
            prefill_tok_s.push(a.prompt as f64 / t.elapsed().as_secs_f64());
        }
    }

    let shape = model.cache_shape(s.cache.dtype());
    let bytes_per_token = model.active_weight_bytes() + a.depth * shape.bytes_per_token();
    let mut decode = vec![];
    let mut verify = vec![];
    // Under --expert-parallel: what the decode steps exchanged with the other ranks.
    let mut exchanged = deepseek_model::expert_parallel::ExchangeStats::default();
    let first = rand_token();
    let depth_toks: Vec<u32> = (0..a.depth).map(|_| rand_token()).collect();
    if a.gen > 0 {
        for _ in 0..a.repetitions {
            let mut pool = model.new_cache_pool(a.depth + a.gen + 1, s.cache.dtype());
            let mut cache = SequenceCache::default();
            let fill_depth = |pool: &mut deepseek_cache::BlockPool,
                              cache: &mut SequenceCache|
             -> Result<()> {
                if a.depth == 0 {
                    return Ok(());
                }
                if a.depth_fill == "prefill" {
                    prefill(&model, pool, cache, &depth_toks)?;
                } else {
                    pool.reserve(cache, a.depth)?;
                    let mut row = vec![0.0f32; shape.row_width];
                    for layer in 0..shape.layers {
                        for pos in 0..a.depth {
                            for (i, v) in row.iter_mut().enumerate() {
                                *v = (((pos * 31 + i * 17 + layer) % 97) as f32 / 97.0 - 0.5) * 0.2;
                            }
                            pool.write_row(cache, layer, pos, &row);
                        }
                    }
                    cache.len = a.depth;
                }
                Ok(())
            };
            fill_depth(&mut pool, &mut cache)?;
            let mut tok = first;
            let mut toks = vec![tok];
            let ep_before = model.expert_parallel().map(|e| e.stats());
            let t = Instant::now();
            for _ in 0..a.gen {
                let logits = model.forward(
                    &mut pool,
                    &mut [SeqStep {
                        tokens: &[tok],
                        cache: &mut cache,
                    }],
                    LogitsFor::LastToken,
                    PrefillPath::Auto,
                    None,
                )?;
                tok = deepseek_engine::sampler::argmax(&logits);
                toks.push(tok);
            }
            decode.push(a.gen as f64 / t.elapsed().as_secs_f64());
            if let (Some(ep), Some(before)) = (model.expert_parallel(), ep_before) {
                exchanged += ep.stats().since(before);
            }
            if let Some(k) = a.verify {
                // The same tokens again, K+1 a step, as a verify step whose drafts all pass.
                pool.release(&mut cache);
                fill_depth(&mut pool, &mut cache)?;
                let t = Instant::now();
                for step in toks[..a.gen].chunks(k as usize + 1) {
                    model.forward(
                        &mut pool,
                        &mut [SeqStep {
                            tokens: step,
                            cache: &mut cache,
                        }],
                        LogitsFor::AllTokens,
                        PrefillPath::Absorbed,
                        None,
                    )?;
                }
                verify.push(a.gen as f64 / t.elapsed().as_secs_f64());
            }
        }
    }

    let (pp, pp_min, pp_max) = if prefill_tok_s.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        median_spread(&mut prefill_tok_s)
    };
    let (tg, tg_min, tg_max) = if decode.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        median_spread(&mut decode)
    };
    let gbs = tg * bytes_per_token as f64 / 1e9;
    // A verify step's time against a one-token step's: tokens per step over the speed-up.
    let verify_k = a.verify.unwrap_or(0) as usize;
    let (vt, vt_min, vt_max) = if verify.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        median_spread(&mut verify)
    };
    let verify_cost = if vt > 0.0 {
        (verify_k + 1) as f64 / vt * tg
    } else {
        0.0
    };
    let held_bytes = model.held_weight_bytes();
    let rss = peak_rss_bytes().filter(|_| peak_is_ours);
    let cache_bytes = (a.prompt.max(a.depth + a.gen + 1)) * shape.bytes_per_token();
    let drafted = match &a.draft_prompt {
        Some(path) if a.gen > 0 => Some(draft_run(&model, &dir, path, &a, s.clone())?),
        _ => None,
    };
    let decoded = (a.gen * a.repetitions).max(1) as f64;
    let expert_parallel = model.expert_parallel().map(|ep| {
        json!({
            "ranks": ep.ranks(),
            "placement": ep.placement().policy().name(),
            "moe_layers_per_token": exchanged.layers as f64 / decoded,
            "messages_per_token": exchanged.messages as f64 / decoded,
            "bytes_sent_per_token": exchanged.bytes_sent as f64 / decoded,
            "bytes_received_per_token": exchanged.bytes_received as f64 / decoded,
            "exchange_s_per_token": exchanged.seconds / decoded,
        })
    });
    let v = json!({
        "expert_parallel": expert_parallel,
        "model": dir.display().to_string(), "dtype": dtype, "threads": threads, "isa": deepseek_kernels::tier::active().name(), "host_isa": deepseek_kernels::tier::host().name(), "amx": deepseek_kernels::amx::available(), "bf16_activations": s.precision.rounds_bf16(), "exact_activations": s.precision.exact_activations, "tuning_overrides": deepseek_kernels::tuning::get().overrides(),
        "prompt_tokens": a.prompt, "gen_tokens": a.gen, "depth": a.depth, "repetitions": a.repetitions,
        "prefill_tok_s": pp, "prefill_tok_s_min": pp_min, "prefill_tok_s_max": pp_max,
        "decode_tok_s": tg, "decode_tok_s_min": tg_min, "decode_tok_s_max": tg_max,
        "verify_drafts": a.verify, "verify_tok_s": vt, "verify_tok_s_min": vt_min, "verify_tok_s_max": vt_max,
        "verify_step_cost": verify_cost,
        "decode_bytes_per_token": bytes_per_token, "active_weight_bytes": model.active_weight_bytes(),
        "decode_gb_s": gbs, "bandwidth_gb_s": bw / 1e9, "bandwidth_share": if bw > 0.0 { gbs * 1e9 / bw } else { 0.0 },
        "kv_bytes_per_token": shape.bytes_per_token(),
        "weights_bytes": disk_bytes, "weights_held_bytes": held_bytes, "cache_bytes": cache_bytes,
        "peak_rss_bytes": rss,
        "peak_rss_ratio": rss.map(|r| r as f64 / (held_bytes + cache_bytes) as f64),
        "draft": drafted.as_ref().map(DraftRun::to_json),
    });
    if a.json {
        println!("{v}");
    } else {
        // The tier changes prefill several-fold: say which one ran.
        println!(
            "model        {} ({}, {} threads, {})",
            dir.display(),
            dtype,
            threads,
            crate::common::tier_line(s)
        );
        println!("bandwidth    {:.1} GB/s read (probe)", bw / 1e9);
        if a.prompt > 0 {
            println!(
                "prefill      pp{}: {pp:.1} tok/s  [{pp_min:.1} – {pp_max:.1}]",
                a.prompt
            );
        }
        if a.gen > 0 {
            println!(
                "decode       tg{} @ depth {}: {tg:.2} tok/s  [{tg_min:.2} – {tg_max:.2}]",
                a.gen, a.depth
            );
            println!(
                "             {:.2} GB/token → {gbs:.1} GB/s = {:.0}% of measured bandwidth",
                bytes_per_token as f64 / 1e9,
                100.0 * gbs * 1e9 / bw
            );
            if let Some(ep) = &expert_parallel {
                let per_token_ms = ep["exchange_s_per_token"].as_f64().unwrap_or(0.0) * 1e3;
                println!(
                    "experts      {} ranks ({}): a token's {:.0} MoE layers send {:.1} messages to the other ranks, \
                     {:.1} KB out and {:.1} KB back; rank 0 waits {per_token_ms:.2} ms a token for them ({:.0}% of decode)",
                    ep["ranks"],
                    ep["placement"].as_str().unwrap_or_default(),
                    ep["moe_layers_per_token"].as_f64().unwrap_or(0.0),
                    ep["messages_per_token"].as_f64().unwrap_or(0.0),
                    ep["bytes_sent_per_token"].as_f64().unwrap_or(0.0) / 1e3,
                    ep["bytes_received_per_token"].as_f64().unwrap_or(0.0) / 1e3,
                    per_token_ms * tg / 10.0
                );
            }
            if verify_k > 0 {
                println!(
                    "verify       {verify_k} drafts a step, all accepted: {vt:.2} tok/s  [{vt_min:.2} – {vt_max:.2}]; \
                     a step costs {verify_cost:.2}× a one-token step"
                );
            }
        }
        if let Some(l) = &drafted {
            println!(
                "{:<12} {} tokens after {} prompt tokens, {} drafts a step at most: {:.2} tokens per step, \
                 {} of {} drafts accepted ({:.0}% of first drafts); {:.2} tok/s against {:.2} without drafts ({:.2}×)",
                l.method,
                l.tokens,
                l.prompt_tokens,
                l.k,
                l.tokens as f64 / l.steps as f64,
                l.accepted,
                l.proposed,
                100.0 * l.first_accepted as f64 / l.first_proposed.max(1) as f64,
                l.draft_tok_s,
                l.plain_tok_s,
                l.draft_tok_s / l.plain_tok_s
            );
        }
        println!("kv cache     {} bytes/token", shape.bytes_per_token());
        if let Some(rss) = rss {
            println!(
                "memory       peak RSS {:.2} GB = {:.3}× (weights as held {:.2} GB + largest cache \
                 {:.3} GB); weights on disk {:.2} GB",
                rss as f64 / 1e9,
                rss as f64 / (held_bytes + cache_bytes) as f64,
                held_bytes as f64 / 1e9,
                cache_bytes as f64 / 1e9,
                disk_bytes as f64 / 1e9
            );
        }
    }
    Ok(())
}

/// What drafts do on real text: `bench --draft-prompt`.
struct DraftRun {
    method: &'static str,
    prompt_tokens: usize,
    k: usize,
    tokens: usize,
    /// Forward steps for `tokens` tokens, the prompt's counted as the first.
    steps: usize,
    proposed: usize,
    accepted: usize,
    /// Steps that brought a draft, and those whose first draft was accepted.
    first_proposed: usize,
    first_accepted: usize,
    plain_tok_s: f64,
    draft_tok_s: f64,
}

impl DraftRun {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "method": self.method, "prompt_tokens": self.prompt_tokens, "draft_tokens": self.k, "tokens": self.tokens,
            "first_draft_acceptance": self.first_accepted as f64 / self.first_proposed.max(1) as f64,
            "steps": self.steps, "tokens_per_step": self.tokens as f64 / self.steps as f64,
            "draft_proposed": self.proposed, "draft_accepted": self.accepted,
            "decode_tok_s": self.plain_tok_s, "draft_decode_tok_s": self.draft_tok_s,
        })
    }
}

fn draft_run(
    model: &std::sync::Arc<deepseek_model::Model>,
    dir: &std::path::Path,
    path: &std::path::Path,
    a: &Args,
    s: Settings,
) -> Result<DraftRun> {
    use deepseek_engine::{GenerateOptions, Generator};
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--draft-prompt {}: {e}", path.display()))?;
    let Some(tok) = crate::common::maybe_tokenizer(dir)? else {
        bail!("--draft-prompt: {} has no tokenizer", dir.display());
    };
    let prompt = tok.encode(&text, true)?;
    if prompt.len() + a.gen > model.config.max_position_embeddings {
        bail!(
            "--draft-prompt {}: {} tokens + -n {} exceed the model's context of {}",
            path.display(),
            prompt.len(),
            a.gen,
            model.config.max_position_embeddings
        );
    }
    let k = a.verify.unwrap_or(4) as usize;
    let gen = Generator::new(model.clone(), Some(tok)).with_cache_dtype(s.cache.dtype());
    let opts = |draft| GenerateOptions {
        max_new_tokens: a.gen,
        stop_on_eos: false,
        draft,
        ..Default::default()
    };
    let draft = Some(a.draft.options(k));
    if let Some(why) = a.draft.options(k).method.unsupported_by(model) {
        bail!("--draft mtp: {why}");
    }
    // Decode speed: the whole generation less the prompt's prefill, timed apart.
    let prefill_s = {
        let t = Instant::now();
        let one = GenerateOptions {
            max_new_tokens: 1,
            ..opts(None)
        };
        gen.generate(&prompt, &one, &mut |_| {})?;
        t.elapsed().as_secs_f64()
    };
    let (mut plain, mut spec) = (vec![], vec![]);
    let mut last = None;
    for _ in 0..a.repetitions {
        let t = Instant::now();
        let p = gen.generate(&prompt, &opts(None), &mut |_| {})?;
        plain.push(p.token_ids.len() as f64 / (t.elapsed().as_secs_f64() - prefill_s).max(1e-9));
        let t = Instant::now();
        let d = gen.generate(&prompt, &opts(draft), &mut |_| {})?;
        spec.push(d.token_ids.len() as f64 / (t.elapsed().as_secs_f64() - prefill_s).max(1e-9));
        if d.token_ids != p.token_ids {
            bail!("drafts changed the output: a bug, please report it");
        }
        last = Some(d);
    }
    let d = last.expect("at least one repetition");
    Ok(DraftRun {
        method: a.draft.options(k).method.name(),
        prompt_tokens: prompt.len(),
        k,
        tokens: d.token_ids.len(),
        steps: d.steps + 1,
        proposed: d.draft_proposed,
        accepted: d.draft_accepted,
        first_proposed: d.draft_steps,
        first_accepted: d.first_draft_accepted,
        plain_tok_s: median_spread(&mut plain).0,
        draft_tok_s: median_spread(&mut spec).0,
    })
}
