//! The reduced-precision caches' accuracy: the same token sequence decoded with an f32 cache
//! and with a bf16 or 8-bit cache; logits compared step by step (teacher-forced on the f32
//! run's greedy tokens). The figures are printed (`--nocapture`) and BENCHMARKS.md records
//! them; on the trained models (the bundled nano model, SmolLM2) both must keep ≥ 95% of the
//! greedy tokens and stay within 5% of the logit spread (bf16's 8-bit mantissa is about as
//! coarse as the 8-bit cache near each group's largest value: SmolLM2 moves 2.6–3.1% with
//! bf16, 3.0% with q8). Where the CPU has AMX, the bf16 runs take the tile kernel
//! (`amx::attention`).

use std::path::{Path, PathBuf};

use deepseek_cache::{CacheDtype, SequenceCache};
use deepseek_engine::sampler::argmax;
use deepseek_model::{LogitsFor, Model, PrefillPath, SeqStep, Trace};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// How a `dtype` cache's decode steps compare with an f32 cache's.
struct Comparison {
    /// Max |Δlogit| / logit spread over the steps whose experts were the same in both runs.
    worst: f32,
    /// The same over every step.
    worst_any: f32,
    /// Share of steps with the same argmax.
    agree: f32,
    /// Steps where some MoE layer chose other experts: the cache's error tipped a near-tied
    /// router, a discrete jump rather than the cache's own rounding.
    rerouted: usize,
}

/// Experts chosen by every MoE layer for the step's one token.
type StepRouting = Vec<Vec<usize>>;

fn compare(model: &mut Model, prompt: &[u32], steps: usize, dtype: CacheDtype) -> Comparison {
    let run = |model: &Model,
               cache_dtype: CacheDtype,
               forced: Option<&[u32]>|
     -> (Vec<Vec<f32>>, Vec<u32>, Vec<StepRouting>) {
        let mut pool = model.new_cache_pool(prompt.len() + steps + 1, cache_dtype);
        let mut cache = SequenceCache::default();
        let mut logits = model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: prompt,
                    cache: &mut cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
                None,
            )
            .unwrap();
        let (mut all, mut toks, mut routes) = (vec![], vec![], vec![]);
        for s in 0..steps {
            let next = forced.map(|f| f[s]).unwrap_or_else(|| argmax(&logits));
            all.push(logits.clone());
            toks.push(next);
            let mut trace = Trace::default();
            logits = model
                .forward(
                    &mut pool,
                    &mut [SeqStep {
                        tokens: &[next],
                        cache: &mut cache,
                    }],
                    LogitsFor::LastToken,
                    PrefillPath::Auto,
                    Some(&mut trace),
                )
                .unwrap();
            routes.push(
                trace
                    .routing
                    .iter()
                    .flat_map(|layer| layer.iter().map(|r| r.experts.clone()))
                    .collect(),
            );
        }
        (all, toks, routes)
    };
    let (exact, toks, exact_routes) = run(model, CacheDtype::F32, None);
    let (q8, _, q8_routes) = run(model, dtype, Some(&toks));
    let (mut worst, mut worst_any, mut same, mut rerouted) = (0.0f32, 0.0f32, 0, 0);
    // The logits after step s come from step s's forward pass, whose routing is routes[s]; the
    // prompt's own (prefill) logits are entry 0 of `exact`, so step s's logits are entry s + 1.
    for (s, (a, b)) in exact.iter().zip(&q8).enumerate() {
        let spread =
            a.iter().copied().fold(f32::MIN, f32::max) - a.iter().copied().fold(f32::MAX, f32::min);
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        let same_route = s == 0 || exact_routes[s - 1] == q8_routes[s - 1];
        if same_route {
            worst = worst.max(d / spread);
        } else {
            rerouted += 1;
        }
        worst_any = worst_any.max(d / spread);
        same += (argmax(a) == argmax(b)) as usize;
    }
    Comparison {
        worst,
        worst_any,
        agree: same as f32 / exact.len() as f32,
        rerouted,
    }
}

#[test]
fn q8_cache_stays_close_to_f32() {
    check_cache(CacheDtype::Q8, 0.05);
}

#[test]
fn bf16_cache_stays_close_to_f32() {
    check_cache(CacheDtype::Bf16, 0.05);
}

fn check_cache(dtype: CacheDtype, max_rel: f32) {
    let cases = [
        (
            "models/deepseek-coder-nano",
            vec![
                0u32, 400, 17, 923, 50, 12, 7, 300, 41, 8, 99, 1000, 5, 61, 62, 63,
            ],
        ),
        (
            "tests/fixtures/v2_lite_vdim",
            (0..40).map(|i| (i * 37 % 500) as u32).collect(),
        ),
        (
            "tests/fixtures/v2_group_bf16",
            (0..40).map(|i| (i * 53 % 500) as u32).collect(),
        ),
        (
            "tests/fixtures/v3_noaux",
            (0..40).map(|i| (i * 11 % 500) as u32).collect(),
        ),
        (
            "tests/fixtures/llm67b_gqa_bf16",
            (0..40).map(|i| (i * 29 % 500) as u32).collect(),
        ),
    ];
    let smollm2 = root().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let smollm2_prompt = deepseek_engine::Tokenizer::from_model_path(&smollm2)
        .expect("assets/smollm2 is missing: run scripts/fetch_smollm2.py")
        .encode("The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is", true)
        .unwrap();
    let cases = cases.into_iter().chain([(
        "assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        smollm2_prompt,
    )]);
    for (dir, prompt) in cases {
        let mut model = Model::load(&root().join(dir), &mut |_, _| {}).unwrap();
        let c = compare(&mut model, &prompt, 48, dtype);
        eprintln!(
            "{dtype:?} cache, {dir}: max |Δlogit| = {:.2}% of the logit spread ({:.2}% counting \
             the {} of 48 steps whose experts changed), greedy agreement {:.0}%",
            c.worst * 100.0,
            c.worst_any * 100.0,
            c.rerouted,
            c.agree * 100.0
        );
        // Random-weight fixtures are only reported: their routers sit on knife edges (a tiny
        // change flips an expert choice and the output jumps). The trained models must hold,
        // and may tip a near-tied router at most twice in 48 steps.
        if dir.contains("nano") || dir.contains("smollm2") {
            assert!(
                c.worst < max_rel,
                "{dir}: {dtype:?} cache moved logits by {:.1}% of their spread",
                c.worst * 100.0
            );
            assert!(
                c.rerouted <= 2,
                "{dir}: {} steps changed experts",
                c.rerouted
            );
            assert!(c.agree >= 0.95, "{dir}: greedy agreement {}", c.agree);
        }
    }
}
