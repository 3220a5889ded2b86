//! Parity with Hugging Face transformers on tiny random checkpoints.
//!
//! Fixtures: `tests/fixtures/*` (made by `scripts/make_fixtures.py`, committed) and, when present,
//! the independently made `../shared/fixtures/*`. Each holds config.json, model.safetensors,
//! prompts.json and reference.safetensors (format: tests/fixtures/README.md).

mod common;

use deepseek_model::CacheDtype;
use std::path::Path;

use common::{argmax, fixture_dirs, max_abs_diff, Reference};
use deepseek_model::{LogitsFor, Model, ModelError, MtpStep, PrefillPath, SeqStep, Trace};

const TOL: f32 = 1e-3;

fn prompts(r: &Reference) -> Vec<usize> {
    let mut v: Vec<usize> = r
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("prompt.").and_then(|i| i.parse().ok()))
        .collect();
    v.sort();
    v
}

fn check_fixture(dir: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let model = Model::load(dir, &mut |_, _| {}).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = Reference::load(&dir.join("reference.safetensors"));
    let vocab = model.config.vocab_size;
    let idx = prompts(&r);
    let mut worst = 0.0f32;
    assert!(!idx.is_empty(), "{name}: no prompts");
    for i in idx {
        let prompt = r.ids(&format!("prompt.{i}"));
        let want = r.get(&format!("logits.{i}")).unwrap();

        // Prefill, decompressed attention, with a trace of intermediates.
        let mut pool = model.new_cache_pool(4096, CacheDtype::F32);
        let mut cache = Default::default();
        let mut trace = Trace::default();
        let got = model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: &prompt,
                    cache: &mut cache,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Decompressed,
                Some(&mut trace),
            )
            .unwrap();
        let d = max_abs_diff(&got, want);
        worst = worst.max(d);
        assert!(d <= TOL, "{name} prompt {i}: prefill max |Δlogit| = {d}");
        if let Some(resid) = r.get(&format!("resid.{i}")) {
            let flat: Vec<f32> = trace.resid.concat();
            let d = max_abs_diff(&flat, resid);
            assert!(
                d <= TOL * 10.0,
                "{name} prompt {i}: residual stream differs by {d}"
            );
        }
        for (l, routing) in trace.routing.iter().enumerate() {
            let key = format!("router.{i}.layer{l}.indices");
            let Some(want_idx) = r.get(&key) else {
                continue;
            };
            let k = r.tensors[&key].0[1];
            let want_w = r.get(&format!("router.{i}.layer{l}.weights")).unwrap();
            for (t, rt) in routing.iter().enumerate() {
                let mut pairs: Vec<(usize, f32)> = rt
                    .experts
                    .iter()
                    .copied()
                    .zip(rt.weights.iter().copied())
                    .collect();
                pairs.sort_by_key(|p| p.0);
                let got_idx: Vec<usize> = pairs.iter().map(|p| p.0).collect();
                let exp_idx: Vec<usize> = want_idx[t * k..(t + 1) * k]
                    .iter()
                    .map(|&v| v as usize)
                    .collect();
                assert_eq!(
                    got_idx, exp_idx,
                    "{name} prompt {i} layer {l} token {t}: chosen experts"
                );
                let got_w: Vec<f32> = pairs.iter().map(|p| p.1).collect();
                let dw = max_abs_diff(&got_w, &want_w[t * k..(t + 1) * k]);
                assert!(
                    dw <= TOL,
                    "{name} prompt {i} layer {l} token {t}: expert weights differ by {dw}"
                );
            }
            if let Some(want_logits) = r.get(&format!("router.{i}.layer{l}.logits")) {
                let d = max_abs_diff(&trace.router_logits[l], want_logits);
                assert!(
                    d <= TOL,
                    "{name} prompt {i} layer {l}: router logits differ by {d}"
                );
            }
        }

        // Prefill through the absorbed path must agree too.
        let mut pool2 = model.new_cache_pool(4096, CacheDtype::F32);
        let mut cache2 = Default::default();
        let got = model
            .forward(
                &mut pool2,
                &mut [SeqStep {
                    tokens: &prompt,
                    cache: &mut cache2,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Absorbed,
                None,
            )
            .unwrap();
        let d = max_abs_diff(&got, want);
        assert!(
            d <= TOL,
            "{name} prompt {i}: absorbed prefill max |Δlogit| = {d}"
        );

        // Decode: one token at a time through the cache.
        let mut pool3 = model.new_cache_pool(4096, CacheDtype::F32);
        let mut cache3 = Default::default();
        let mut all = vec![];
        for &tok in &prompt {
            let l = model
                .forward(
                    &mut pool3,
                    &mut [SeqStep {
                        tokens: &[tok],
                        cache: &mut cache3,
                    }],
                    LogitsFor::LastToken,
                    PrefillPath::Auto,
                    None,
                )
                .unwrap();
            all.extend(l);
        }
        let d = max_abs_diff(&all, want);
        worst = worst.max(d);
        assert!(d <= TOL, "{name} prompt {i}: decode max |Δlogit| = {d}");

        // Greedy generation from the prefilled cache.
        if let Some(gen_want) = r.get(&format!("generated.{i}")) {
            let gen_want: Vec<u32> = gen_want.iter().map(|&v| v as u32).collect();
            let step_logits = r.get(&format!("gen_step_logits.{i}"));
            let mut last = got[(prompt.len() - 1) * vocab..].to_vec();
            let mut generated = vec![];
            for step in 0..gen_want.len() {
                if let Some(sl) = step_logits {
                    let d = max_abs_diff(&last, &sl[step * vocab..(step + 1) * vocab]);
                    assert!(
                        d <= TOL,
                        "{name} prompt {i}: generation step {step} logits differ by {d}"
                    );
                }
                let next = argmax(&last);
                generated.push(next);
                if step + 1 < gen_want.len() {
                    last = model
                        .forward(
                            &mut pool2,
                            &mut [SeqStep {
                                tokens: &[next],
                                cache: &mut cache2,
                            }],
                            LogitsFor::LastToken,
                            PrefillPath::Auto,
                            None,
                        )
                        .unwrap();
                }
            }
            assert_eq!(generated, gen_want, "{name} prompt {i}: greedy tokens");
        }
    }
    eprintln!("{name}: ok (worst |Δlogit| {worst:.2e})");
    check_mtp(&name, &model, &r);
}

/// The multi-token-prediction module's logits (`mtp_logits.i`, over each prompt and its greedy
/// continuation) in one step over the whole sequence, and position by position as decoding
/// runs it: after the prompt's prefill, then one token at a time.
fn check_mtp(name: &str, model: &Model, r: &Reference) {
    let hid = model.config.hidden_size;
    let vocab = model.config.vocab_size;
    if model.mtp.is_none() {
        assert!(
            r.get("mtp_logits.0").is_none(),
            "{name}: the MTP module did not load"
        );
        let mut pool = model.new_cache_pool(64, CacheDtype::F32);
        let mut cache = Default::default();
        let err = model.mtp_forward(
            &mut pool,
            &mut [MtpStep {
                next: &[0],
                hidden: &vec![0.0; hid],
                start: 0,
                cache: &mut cache,
            }],
            LogitsFor::AllTokens,
            PrefillPath::Auto,
        );
        assert!(
            matches!(err, Err(ModelError::NoMtp)),
            "{name}: no module, no drafts"
        );
        return;
    }
    let mut worst = 0.0f32;
    for i in prompts(r) {
        let prompt = r.ids(&format!("prompt.{i}"));
        let mut seq = prompt.clone();
        seq.extend(r.ids(&format!("generated.{i}")));
        let want = r.get(&format!("mtp_logits.{i}")).expect("mtp_logits");
        let n = seq.len() - 1;

        // Whole sequence at once.
        let mut pool = model.new_cache_pool(4096, CacheDtype::F32);
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
        let d = max_abs_diff(&got.logits, want);
        assert!(d <= TOL, "{name} prompt {i}: MTP logits differ by {d}");
        worst = worst.max(d);

        // As decoding runs it: the prompt's positions (the last one with the first generated
        // token), then each generated token's position once the main model has stepped past it.
        let mut pool = model.new_cache_pool(4096, CacheDtype::F32);
        let mut cache = Default::default();
        let p = prompt.len();
        let main = model
            .forward_with_hidden(
                &mut pool,
                &mut [SeqStep {
                    tokens: &prompt,
                    cache: &mut cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
            )
            .unwrap();
        let got = model
            .mtp_forward(
                &mut pool,
                &mut [MtpStep {
                    next: &seq[1..=p],
                    hidden: &main.hidden,
                    start: 0,
                    cache: &mut cache,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Auto,
            )
            .unwrap();
        let d = max_abs_diff(&got.logits, &want[..p * vocab]);
        assert!(
            d <= TOL,
            "{name} prompt {i}: MTP logits after prefill differ by {d}"
        );
        for pos in p..n {
            let main = model
                .forward_with_hidden(
                    &mut pool,
                    &mut [SeqStep {
                        tokens: &seq[pos..=pos],
                        cache: &mut cache,
                    }],
                    LogitsFor::LastToken,
                    PrefillPath::Auto,
                )
                .unwrap();
            let got = model
                .mtp_forward(
                    &mut pool,
                    &mut [MtpStep {
                        next: &seq[pos + 1..=pos + 1],
                        hidden: &main.hidden,
                        start: pos,
                        cache: &mut cache,
                    }],
                    LogitsFor::LastToken,
                    PrefillPath::Auto,
                )
                .unwrap();
            let d = max_abs_diff(&got.logits, &want[pos * vocab..(pos + 1) * vocab]);
            assert!(
                d <= TOL,
                "{name} prompt {i} position {pos}: MTP decode logits differ by {d}"
            );
            worst = worst.max(d);
        }
    }
    eprintln!("{name}: MTP ok (worst |Δlogit| {worst:.2e})");
}

#[test]
fn every_fixture_matches_the_reference() {
    let dirs = fixture_dirs();
    assert!(!dirs.is_empty(), "no fixtures found");
    for d in &dirs {
        check_fixture(d);
    }
}

#[test]
fn batched_step_equals_separate_steps() {
    // Two sequences of different lengths in one forward step give the same logits as alone.
    let Some(dir) = fixture_dirs()
        .into_iter()
        .find(|d| d.join("config.json").exists())
    else {
        return;
    };
    let model = Model::load(&dir, &mut |_, _| {}).unwrap();
    let a: Vec<u32> = vec![0, 5, 9, 13, 2];
    let b: Vec<u32> = vec![0, 7, 3];
    let single = |toks: &[u32]| {
        let mut pool = model.new_cache_pool(256, CacheDtype::F32);
        let mut c = Default::default();
        model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: toks,
                    cache: &mut c,
                }],
                LogitsFor::AllTokens,
                PrefillPath::Auto,
                None,
            )
            .unwrap()
    };
    let (la, lb) = (single(&a), single(&b));
    let mut pool = model.new_cache_pool(512, CacheDtype::F32);
    let (mut ca, mut cb) = (Default::default(), Default::default());
    let both = model
        .forward(
            &mut pool,
            &mut [
                SeqStep {
                    tokens: &a,
                    cache: &mut ca,
                },
                SeqStep {
                    tokens: &b,
                    cache: &mut cb,
                },
            ],
            LogitsFor::AllTokens,
            PrefillPath::Auto,
            None,
        )
        .unwrap();
    let v = model.config.vocab_size;
    assert!(max_abs_diff(&both[..5 * v], &la) < 1e-4);
    assert!(max_abs_diff(&both[5 * v..], &lb) < 1e-4);
}
