//! The bundled model (models/deepseek-coder-nano), trained by scripts/train_nano.py:
//! greedy generations identical to transformers', and the validation loss the training script
//! reported, recomputed by the engine.

use deepseek_model::CacheDtype;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deepseek_engine::sampler::log_softmax;
use deepseek_engine::{GenerateOptions, Generator, Tokenizer};
use deepseek_model::{LogitsFor, Model, PrefillPath, SeqStep};
use serde_json::Value;

fn nano() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/deepseek-coder-nano")
        .canonicalize()
        .expect("models/deepseek-coder-nano is missing")
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(nano().join(name)).unwrap()).unwrap()
}

#[test]
fn greedy_generations_match_transformers_including_fim() {
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
    let gen = Generator::new(model, Some(tok.clone()));
    let refs = json("reference.json");
    let gens = refs["generations"].as_object().unwrap();
    assert!(gens.contains_key("fim"));
    for (name, g) in gens {
        let prompt = g["prompt"].as_str().unwrap();
        let want_prompt: Vec<u32> = serde_json::from_value(g["prompt_ids"].clone()).unwrap();
        assert_eq!(
            tok.encode(prompt, true).unwrap(),
            want_prompt,
            "{name}: prompt ids"
        );
        let want: Vec<u32> = serde_json::from_value(g["generated_ids"].clone()).unwrap();
        let opts = GenerateOptions {
            max_new_tokens: want.len(),
            stop_on_eos: false,
            ..Default::default()
        };
        let out = gen.generate(&want_prompt, &opts, &mut |_| {}).unwrap();
        assert_eq!(out.token_ids, want, "{name}: greedy tokens");
    }
}

#[test]
fn validation_loss_equals_the_training_scripts() {
    let dir = nano();
    let model = Model::load(&dir, &mut |_, _| {}).unwrap();
    let training = json("training.json");
    let windows: Vec<Vec<u32>> = serde_json::from_value(training["val_windows"].clone()).unwrap();
    let want = training["final_val_loss"].as_f64().unwrap();
    let vocab = model.config.vocab_size;
    let (mut nll, mut count) = (0.0f64, 0usize);
    for w in &windows {
        let mut pool = model.new_cache_pool(w.len(), CacheDtype::F32);
        let mut cache = Default::default();
        let inputs = &w[..w.len() - 1];
        let logits = model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: inputs,
                    cache: &mut cache,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Auto,
                None,
            )
            .unwrap();
        for (t, &target) in w[1..].iter().enumerate() {
            nll -= log_softmax(&logits[t * vocab..(t + 1) * vocab])[target as usize] as f64;
            count += 1;
        }
    }
    let got = nll / count as f64;
    assert!(
        (got - want).abs() < 1e-3,
        "engine validation loss {got:.5} vs training script {want:.5}"
    );
}

#[test]
fn stop_strings_cut_the_text_and_streamed_pieces_add_up() {
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let gen = Generator::new(
        Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap()),
        Some(tok.clone()),
    );
    let prompt = tok.encode("def parse_args(argv):\n", true).unwrap();
    let full = gen
        .generate(
            &prompt,
            &GenerateOptions {
                max_new_tokens: 40,
                ..Default::default()
            },
            &mut |_| {},
        )
        .unwrap();
    // Stop at the second line of the greedy continuation.
    let cut = full.text.find('\n').expect("greedy text has a newline") + 1;
    let stop = full.text[cut..].chars().take(4).collect::<String>();
    let at = full.text.find(&stop).unwrap();
    let mut streamed = String::new();
    let opts = GenerateOptions {
        max_new_tokens: 40,
        stop: vec![stop.clone()],
        ..Default::default()
    };
    let out = gen
        .generate(&prompt, &opts, &mut |p| streamed.push_str(p))
        .unwrap();
    assert_eq!(out.text, full.text[..at]);
    assert_eq!(
        streamed, out.text,
        "streamed pieces must equal the final text"
    );
    assert_eq!(out.finish_reason, deepseek_engine::FinishReason::Stop);
}
