//! Speculative decoding with prompt lookup: checking drafts several per step changes the number
//! of steps, never the output: greedy and sampled (same seed) alike, on the bundled model, every
//! fixture and the real SmolLM2 file. And where the output repeats the prompt, drafts are
//! accepted in runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use deepseek_engine::{
    DraftMethod, DraftOptions, GenerateOptions, Generated, Generator, SamplingParams, Tokenizer,
};
use deepseek_model::Model;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(
    gen: &Generator,
    prompt: &[u32],
    n: usize,
    sampling: &SamplingParams,
    k: usize,
) -> Generated {
    let opts = GenerateOptions {
        max_new_tokens: n,
        sampling: sampling.clone(),
        stop_on_eos: false,
        draft: (k > 0).then_some(DraftOptions {
            method: DraftMethod::Lookup,
            max_tokens: k,
        }),
        ..Default::default()
    };
    gen.generate(prompt, &opts, &mut |_| {}).unwrap()
}

#[test]
fn drafts_change_the_steps_not_the_output() {
    let nano = root().join("models/deepseek-coder-nano");
    let tok = Arc::new(Tokenizer::from_dir(&nano).unwrap());
    let code = "def area(w, h):\n    return w * h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n\n\ndef area(w, h):\n";
    let smollm2 = root().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let smollm2_tok = Tokenizer::from_model_path(&smollm2)
        .expect("assets/smollm2 is missing: run scripts/fetch_smollm2.py");
    // Prompts that repeat themselves, so that lookup finds drafts from the first step.
    let repeated = |mul: usize| -> Vec<u32> {
        let part: Vec<u32> = (0..12).map(|i| (i * mul % 400 + 3) as u32).collect();
        [part.clone(), part.clone(), part[..4].to_vec()].concat()
    };
    let cases: Vec<(PathBuf, Vec<u32>)> = vec![
        (nano.clone(), tok.encode(code, true).unwrap()),
        (root().join("tests/fixtures/v2_lite_vdim"), repeated(37)),
        (root().join("tests/fixtures/v2_group_bf16"), repeated(53)),
        (root().join("tests/fixtures/v3_noaux"), repeated(11)),
        (root().join("tests/fixtures/llm67b_gqa_bf16"), repeated(29)),
        (
            smollm2.clone(),
            smollm2_tok
                .encode(
                    "Paris is the capital of France. Berlin is the capital of Germany. Paris is",
                    true,
                )
                .unwrap(),
        ),
    ];
    let greedy = SamplingParams::default();
    let sampled = SamplingParams {
        temperature: 0.8,
        top_p: 0.95,
        seed: Some(3),
        ..Default::default()
    };
    for (path, prompt) in cases {
        let gen = Generator::new(Arc::new(Model::load(&path, &mut |_, _| {}).unwrap()), None);
        for sampling in [&greedy, &sampled] {
            let n = 40;
            let base = run(&gen, &prompt, n, sampling, 0);
            assert_eq!((base.steps, base.draft_proposed), (n - 1, 0));
            for k in [1, 3, 6] {
                let spec = run(&gen, &prompt, n, sampling, k);
                assert_eq!(
                    spec.token_ids,
                    base.token_ids,
                    "{} (temperature {}), {k} drafts: the output differs",
                    path.display(),
                    sampling.temperature
                );
                assert_eq!(spec.finish_reason, base.finish_reason);
                // Every accepted draft saves one step.
                assert_eq!(
                    spec.steps + spec.draft_accepted,
                    base.steps,
                    "{}",
                    path.display()
                );
                assert!(spec.draft_accepted <= spec.draft_proposed);
            }
        }
    }
}

#[test]
fn prompt_lookup_accepts_runs_where_the_output_repeats_the_prompt() {
    let nano = root().join("models/deepseek-coder-nano");
    let tok = Arc::new(Tokenizer::from_dir(&nano).unwrap());
    let gen = Generator::new(
        Arc::new(Model::load(&nano, &mut |_, _| {}).unwrap()),
        Some(tok.clone()),
    );
    // A function, then the start of the same function again: the model copies it.
    let function = "def moving_average(values, window):\n    \"\"\"Average of each run of `window` values.\"\"\"\n    if window <= 0:\n        raise ValueError(\"window must be positive\")\n    result = []\n    total = 0\n    for i, value in enumerate(values):\n        total += value\n        if i >= window:\n            total -= values[i - window]\n        if i >= window - 1:\n            result.append(total / window)\n    return result\n";
    let prompt = format!(
        "{function}\n\n# The same function, unchanged:\n{}",
        &function[..40]
    );
    let ids = tok.encode(&prompt, true).unwrap();
    let n = 96;
    let base = run(&gen, &ids, n, &SamplingParams::default(), 0);
    let spec = run(&gen, &ids, n, &SamplingParams::default(), 8);
    assert_eq!(spec.token_ids, base.token_ids);
    let per_step = spec.token_ids.len() as f64 / (spec.steps + 1) as f64;
    eprintln!(
        "{} tokens in {} steps ({per_step:.2} per step), {} of {} drafts accepted",
        spec.token_ids.len(),
        spec.steps + 1,
        spec.draft_accepted,
        spec.draft_proposed
    );
    assert!(per_step >= 2.0, "{per_step:.2} tokens per step");
}
