//! The bundled model (models/deepseek-coder-nano), trained by scripts/train_nano.py:
//! greedy generations identical to transformers', the validation loss the training script
//! reported, recomputed by the engine, and its multi-token-prediction module's predictions
//! those of the training script's reference module.

use deepseek_model::CacheDtype;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deepseek_engine::sampler::log_softmax;
use deepseek_engine::{GenerateOptions, Generator, Tokenizer};
use deepseek_model::{LogitsFor, Model, MtpStep, PrefillPath, SeqStep};
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

/// The module at every position of each reference generation (the main model's hidden state
/// there, the next token): the reference's top token and logit (scripts/mtp_reference.py, f32
/// compute on the bf16 weights), wherever its top two are not near-tied.
#[test]
fn mtp_module_predicts_what_the_reference_module_predicts() {
    let dir = nano();
    let model = Model::load(&dir, &mut |_, _| {}).unwrap();
    assert!(
        model.mtp.is_some(),
        "the bundled model carries an MTP module"
    );
    let (hid, vocab) = (model.config.hidden_size, model.config.vocab_size);
    let refs = json("reference.json");
    let mut checked = 0;
    for (name, g) in refs["generations"].as_object().unwrap() {
        let mut seq: Vec<u32> = serde_json::from_value(g["prompt_ids"].clone()).unwrap();
        seq.extend(serde_json::from_value::<Vec<u32>>(g["generated_ids"].clone()).unwrap());
        let ids: Vec<[u32; 2]> = serde_json::from_value(g["mtp_top2_ids"].clone()).unwrap();
        let top: Vec<[f32; 2]> = serde_json::from_value(g["mtp_top2_logits"].clone()).unwrap();
        assert_eq!(ids.len(), seq.len() - 1, "{name}");
        let mut pool = model.new_cache_pool(seq.len() + 1, CacheDtype::F32);
        let mut cache = Default::default();
        let main = model
            .forward_with_hidden(
                &mut pool,
                &mut [SeqStep {
                    tokens: &seq,
                    cache: &mut cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
            )
            .unwrap();
        let n = seq.len() - 1;
        let got = model
            .mtp_forward(
                &mut pool,
                &mut [MtpStep {
                    next: &seq[1..],
                    hidden: &main.hidden[..n * hid],
                    start: 0,
                    cache: &mut cache,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Auto,
            )
            .unwrap();
        for (pos, (want, l)) in ids.iter().zip(&top).enumerate() {
            let row = &got.logits[pos * vocab..(pos + 1) * vocab];
            let d = (row[want[0] as usize] - l[0]).abs();
            assert!(d < 2e-3, "{name} position {pos}: top logit off by {d}");
            if l[0] - l[1] > 1e-2 {
                let best = (0..vocab)
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap();
                assert_eq!(best as u32, want[0], "{name} position {pos}: top token");
                checked += 1;
            }
        }
    }
    assert!(checked > 200, "only {checked} positions checked");
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
