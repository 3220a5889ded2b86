//! The GPU path (`gpu_model`) against the Hugging Face references, on every fixture: prefill
//! logits, greedy decoding step by step, and several sequences in one step. Runs on each place
//! the kernels can run here: their CPU emulation (wherever g++ builds it;
//! `DEEPSEEK_REQUIRE_EMULATION=1` makes its absence a failure) and the GPU (where one opens;
//! `DEEPSEEK_REQUIRE_GPU=1` makes its absence a failure; a visible SKIPPED line elsewhere).

mod common;

use common::{argmax, fixture_dirs, max_abs_diff as max_diff, workspace as repo, Reference};
use deepseek_cuda::emulate::Emulator;
use deepseek_cuda::gpu::Gpu;
use deepseek_cuda::Launch;
use deepseek_model::gpu_model::{GpuModel, GpuPrecision, GpuSequence};
use deepseek_model::{LogitsFor, Model};

const TOL: f32 = 1e-3;

/// Makes a fresh launcher.
type MakeLauncher = fn() -> Box<dyn Launch>;

/// Where to run: (name, how to make its launcher).
fn places() -> Vec<(&'static str, MakeLauncher)> {
    let mut v: Vec<(&'static str, MakeLauncher)> = vec![];
    match Emulator::new() {
        Ok(_) => v.push(("emulation", || Box::new(Emulator::new().unwrap()))),
        Err(e) if std::env::var("DEEPSEEK_REQUIRE_EMULATION").as_deref() == Ok("1") => {
            panic!("DEEPSEEK_REQUIRE_EMULATION=1 but the CPU emulation is unavailable: {e}")
        }
        Err(e) => eprintln!("SKIPPED: the GPU model in CPU emulation: {e}"),
    }
    match Gpu::open(0) {
        Ok(_) => v.push(("gpu", || Box::new(Gpu::open(0).unwrap()))),
        Err(e) if std::env::var("DEEPSEEK_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("DEEPSEEK_REQUIRE_GPU=1 but no GPU opened: {e}")
        }
        Err(e) => eprintln!("SKIPPED: the GPU model on a GPU: {e}"),
    }
    v
}

/// Decode steps checked per prompt (the emulation is slow; the references hold 8).
const STEPS: usize = 4;

#[test]
fn gpu_path_matches_the_reference_on_every_fixture() {
    let places = places();
    let mut checked = 0;
    for dir in fixture_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(&dir, &mut |_, _| {}).unwrap();
        let r = Reference::load(&dir.join("reference.safetensors"));
        let vocab = model.config.vocab_size;
        let mut prompts: Vec<usize> = r
            .tensors
            .keys()
            .filter_map(|k| k.strip_prefix("prompt.")?.parse().ok())
            .collect();
        prompts.sort();
        for (place, make) in &places {
            let mut gm = GpuModel::upload(&model, make(), GpuPrecision::Exact, 16).unwrap();
            for &i in &prompts {
                let prompt = r.ids(&format!("prompt.{i}"));
                let what = format!("{place} {name} prompt {i}");
                // Prefill: every position's logits.
                let mut s = GpuSequence::default();
                let got = gm
                    .forward(&mut [(&mut s, &prompt)], LogitsFor::AllTokens)
                    .unwrap();
                let d = max_diff(&got, r.get(&format!("logits.{i}")).unwrap());
                assert!(d <= TOL, "{what}: prefill max |Δlogit| = {d}");
                gm.release(&mut s);
                // Greedy decoding, one token a step after a prefill that returns the last row.
                let (Some(_), Some(steps)) = (
                    r.get(&format!("generated.{i}")),
                    r.get(&format!("gen_step_logits.{i}")),
                ) else {
                    continue;
                };
                let gen = r.ids(&format!("generated.{i}"));
                let mut s = GpuSequence::default();
                let mut logits = gm
                    .forward(&mut [(&mut s, &prompt)], LogitsFor::LastToken)
                    .unwrap();
                for j in 0..STEPS.min(gen.len()) {
                    let d = max_diff(&logits, &steps[j * vocab..(j + 1) * vocab]);
                    assert!(d <= TOL, "{what}: decode step {j} max |Δlogit| = {d}");
                    assert_eq!(argmax(&logits), gen[j], "{what}: greedy token {j}");
                    logits = gm
                        .forward(&mut [(&mut s, &gen[j..j + 1])], LogitsFor::LastToken)
                        .unwrap();
                }
                gm.release(&mut s);
            }
            // Several sequences in one step: every prompt's prefill together, then one decode
            // step of each, each sequence's logits as alone.
            let all: Vec<Vec<u32>> = prompts
                .iter()
                .map(|&i| r.ids(&format!("prompt.{i}")))
                .collect();
            let mut seqs: Vec<GpuSequence> = all.iter().map(|_| GpuSequence::default()).collect();
            let mut steps: Vec<(&mut GpuSequence, &[u32])> = seqs
                .iter_mut()
                .zip(&all)
                .map(|(s, p)| (s, &p[..]))
                .collect();
            let got = gm.forward(&mut steps, LogitsFor::LastToken).unwrap();
            for (k, &i) in prompts.iter().enumerate() {
                let want = r.get(&format!("logits.{i}")).unwrap();
                let t = all[k].len();
                let d = max_diff(
                    &got[k * vocab..(k + 1) * vocab],
                    &want[(t - 1) * vocab..t * vocab],
                );
                assert!(d <= TOL, "{place} {name}: batched prefill, prompt {i}: {d}");
            }
            let nexts: Vec<[u32; 1]> = prompts
                .iter()
                .map(|&i| [r.get(&format!("generated.{i}")).map_or(0, |g| g[0] as u32)])
                .collect();
            let mut steps: Vec<(&mut GpuSequence, &[u32])> = seqs
                .iter_mut()
                .zip(&nexts)
                .map(|(s, t)| (s, &t[..]))
                .collect();
            let got = gm.forward(&mut steps, LogitsFor::LastToken).unwrap();
            for (k, &i) in prompts.iter().enumerate() {
                if let Some(steps) = r.get(&format!("gen_step_logits.{i}")) {
                    let d = max_diff(&got[k * vocab..(k + 1) * vocab], &steps[vocab..2 * vocab]);
                    assert!(d <= TOL, "{place} {name}: batched decode, prompt {i}: {d}");
                }
            }
            checked += 1;
        }
    }
    assert!(places.is_empty() || checked > 0, "no fixture found");
}

#[test]
fn gpu_path_matches_the_cpu_model_on_the_bundled_model() {
    let dir = repo().join("models/deepseek-coder-nano");
    let model = Model::load(&dir, &mut |_, _| {}).unwrap();
    let prompt: Vec<u32> = (0..20)
        .map(|i| (i * 37 + 11) % model.config.vocab_size as u32)
        .collect();
    let mut pool = model.new_cache_pool(64, deepseek_model::CacheDtype::F32);
    let mut cache = Default::default();
    let want = model
        .forward(
            &mut pool,
            &mut [deepseek_model::SeqStep {
                tokens: &prompt,
                cache: &mut cache,
            }],
            LogitsFor::AllTokens,
            deepseek_model::PrefillPath::Auto,
            None,
        )
        .unwrap();
    for (place, make) in places() {
        let mut gm = GpuModel::upload(&model, make(), GpuPrecision::Exact, 4).unwrap();
        let mut s = GpuSequence::default();
        let got = gm
            .forward(&mut [(&mut s, &prompt)], LogitsFor::AllTokens)
            .unwrap();
        let d = max_diff(&got, &want);
        assert!(
            d <= TOL,
            "{place}: bundled model, max |Δlogit| against the CPU = {d}"
        );
        // bf16 weights and activations: the same greedy choice at every position, within the
        // rounding's reach.
        let mut gm = GpuModel::upload(&model, make(), GpuPrecision::Bf16, 4).unwrap();
        let mut s = GpuSequence::default();
        let got = gm
            .forward(&mut [(&mut s, &prompt)], LogitsFor::AllTokens)
            .unwrap();
        let vocab = model.config.vocab_size;
        let d = max_diff(&got, &want);
        eprintln!("{place}: bundled model in bf16, max |Δlogit| against the CPU (f32) = {d}");
        let same = (0..prompt.len())
            .filter(|&t| {
                argmax(&got[t * vocab..(t + 1) * vocab])
                    == argmax(&want[t * vocab..(t + 1) * vocab])
            })
            .count();
        assert!(
            same + 1 >= prompt.len() && d < 0.5,
            "{place}: bf16 path: {same}/{} greedy choices agree, max |Δlogit| {d}",
            prompt.len()
        );
    }
}
