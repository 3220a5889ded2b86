//! Continuous batching on the bundled model: many requests at once give the tokens each gives
//! alone, a repeated prefix comes from the cache (and still gives the same tokens), JSON mode
//! output parses, and a dropped receiver frees the sequence's blocks.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use deepseek_engine::json_mode::OutputConstraint;
use deepseek_engine::scheduler::{self, Event, Request, SchedulerConfig, SubmitError};
use deepseek_engine::{FinishReason, GenerateOptions, Generator, SamplingParams, Tokenizer};
use deepseek_model::Model;

fn nano() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/deepseek-coder-nano")
        .canonicalize()
        .expect("models/deepseek-coder-nano is missing")
}

struct Outcome {
    cached: usize,
    ids: Vec<u32>,
    text: String,
    reason: Option<FinishReason>,
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Outcome {
    let mut o = Outcome {
        cached: 0,
        ids: vec![],
        text: String::new(),
        reason: None,
    };
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Started { cached_tokens, .. } => o.cached = cached_tokens,
            Event::Output { text, token, .. } => {
                o.text.push_str(&text);
                o.ids.extend(token);
            }
            Event::Finished { reason, .. } => {
                o.reason = Some(reason);
                break;
            }
            Event::Failed(m) => panic!("request failed: {m}"),
            Event::PromptLogprobs(_) | Event::CandidateLogprobs(_) => {}
        }
    }
    o
}

#[test]
fn batched_requests_match_one_at_a_time_and_prefixes_come_from_cache() {
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
    let gen = Generator::new(model.clone(), Some(tok.clone()));
    let header = "#!/usr/bin/env python3\n# Copyright the authors. Licensed under the PSF license.\n\"\"\"Read the configuration, then run the requested command.\"\"\"\n\nimport os\nimport sys\n\n\nclass Config:\n    \"\"\"Settings read from the environment.\"\"\"\n\n    def __init__(self, path):\n        self.path = path\n";
    let prompts: Vec<String> = [
        "def parse_args(argv):",
        "    def load(self):",
        "    def save(self, data):",
        "for i in range(",
        "    def __repr__(self):",
    ]
    .iter()
    .map(|p| format!("{header}{p}"))
    .collect();
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| tok.encode(p, true).unwrap())
        .collect();
    assert!(
        ids[0].len() > 64,
        "the shared header should fill a cache block"
    );
    let n = 24;
    let alone: Vec<Vec<u32>> = ids
        .iter()
        .map(|p| {
            let opts = GenerateOptions {
                max_new_tokens: n,
                ..Default::default()
            };
            gen.generate(p, &opts, &mut |_| {}).unwrap().token_ids
        })
        .collect();

    let (handle, thread) = scheduler::spawn(
        model,
        Some(tok),
        gen.eos_ids(),
        SchedulerConfig {
            max_batch: 4,
            prefill_chunk: 16,
            ..Default::default()
        },
    );
    // Warm the prefix cache with the first prompt, then send all at once.
    let first = collect(handle.submit(Request::new(ids[0].clone(), n)).unwrap());
    assert_eq!(first.cached, 0);
    assert_eq!(first.ids, alone[0]);
    let rxs: Vec<_> = ids
        .iter()
        .map(|p| handle.submit(Request::new(p.clone(), n)).unwrap())
        .collect();
    for (k, rx) in rxs.into_iter().enumerate() {
        let o = collect(rx);
        assert_eq!(
            o.ids, alone[k],
            "request {k}: batched tokens differ from alone"
        );
        assert!(
            o.cached >= 64,
            "request {k}: shared header not reused ({} cached)",
            o.cached
        );
        assert_eq!(o.cached % 64, 0);
        assert!(o.reason.is_some());
    }
    assert!(handle.stats.prefix_cache_blocks.load(Ordering::Relaxed) > 0);
    handle.shutdown();
    thread.join().unwrap();
}

#[test]
fn stop_strings_json_mode_cancellation_and_limits() {
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
    let eos = Generator::new(model.clone(), Some(tok.clone())).eos_ids();
    let (handle, thread) = scheduler::spawn(
        model,
        Some(tok.clone()),
        eos,
        SchedulerConfig {
            max_batch: 2,
            max_queue: 2,
            cache_tokens: 1024,
            ..Default::default()
        },
    );
    let prompt = tok.encode("def main():\n", true).unwrap();

    // A stop string ends the text before it.
    let free = collect(handle.submit(Request::new(prompt.clone(), 40)).unwrap());
    let stop_at = free.text.char_indices().nth(5).map(|(i, _)| i).unwrap();
    let stop = free.text[stop_at..].chars().take(2).collect::<String>();
    let mut r = Request::new(prompt.clone(), 40);
    r.stop = vec![stop.clone()];
    let stopped = collect(handle.submit(r).unwrap());
    assert_eq!(stopped.reason, Some(FinishReason::Stop));
    assert_eq!(stopped.text, free.text[..free.text.find(&stop).unwrap()]);

    // JSON mode: sampled output that parses as an object.
    let vocab = Arc::new(tok.token_bytes());
    for seed in 0..3 {
        let mut r = Request::new(prompt.clone(), 200);
        r.sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..Default::default()
        };
        r.constraint = Some(OutputConstraint::json_object(vocab.clone()));
        let o = collect(handle.submit(r).unwrap());
        if o.reason == Some(FinishReason::Stop) {
            let v: serde_json::Value = serde_json::from_str(&o.text)
                .unwrap_or_else(|e| panic!("JSON mode gave {:?}: {e}", o.text));
            assert!(v.is_object());
        } else {
            assert!(o.text.starts_with('{'), "{:?}", o.text);
        }
    }

    // Too large for the cache: refused up front.
    assert!(matches!(
        handle.submit(Request::new(prompt.clone(), 5000)),
        Err(SubmitError::TooLarge { .. })
    ));

    // A dropped receiver cancels the sequence and its blocks come back.
    let rx = handle.submit(Request::new(prompt.clone(), 500)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(rx);
    let after = collect(handle.submit(Request::new(prompt.clone(), 2)).unwrap());
    assert_eq!(after.ids.len(), 2);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(handle.stats.running.load(Ordering::Relaxed), 0);
    let used = handle.stats.cache_blocks_used.load(Ordering::Relaxed);
    let prefix = handle.stats.prefix_cache_blocks.load(Ordering::Relaxed);
    assert_eq!(
        used, prefix,
        "only prefix-cache blocks may stay in use when idle"
    );
    handle.shutdown();
    thread.join().unwrap();
}

/// `max_queue` counts what waits beyond the batch: a burst the size of the batch's free places
/// plus the queue is taken whole, whatever the scheduler thread is doing meanwhile, and only the
/// next request is refused.
#[test]
fn a_burst_fills_the_free_places_and_the_queue_before_any_refusal() {
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
    let (handle, thread) = scheduler::spawn(
        model,
        Some(tok.clone()),
        vec![],
        SchedulerConfig {
            max_batch: 4,
            max_queue: 1,
            cache_tokens: 8192,
            ..Default::default()
        },
    );
    let prompt = tok.encode("def main():\n", true).unwrap();
    // Long generations without end-of-sequence: none finishes during the test.
    let long = || {
        let mut r = Request::new(prompt.clone(), 1000);
        r.stop_on_eos = false;
        r
    };
    let mut held = vec![];
    for i in 0..5 {
        held.push(
            handle
                .submit(long())
                .unwrap_or_else(|e| panic!("request {i} of a burst of 5 refused: {e}")),
        );
        if i == 1 {
            // Let the scheduler admit some and start a step: the count must not depend on it.
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
    assert!(matches!(handle.submit(long()), Err(SubmitError::QueueFull)));
    // One cancelled frees its place for the next.
    drop(held.pop());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let admitted = loop {
        match handle.submit(long()) {
            Ok(rx) => break rx,
            Err(SubmitError::QueueFull) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("after a cancellation: {e}"),
        }
    };
    held.push(admitted);
    drop(held);
    handle.shutdown();
    thread.join().unwrap();
}

/// The disk tier: a prefix computed by one scheduler is read back by the next (a restart),
/// with the same tokens as computing it, and hits counted as cached; the cache type is part
/// of the key, so a bf16 cache never reads the f32 cache's blocks.
#[test]
fn a_restarted_scheduler_reads_prefixes_back_from_disk() {
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let cache_dir =
        std::env::temp_dir().join(format!("deepseek-sched-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache_dir);
    let text = "import os\nimport sys\n\n\nclass Config:\n    \"\"\"Settings read from the environment.\"\"\"\n\n    def __init__(self, path):\n        self.path = path\n        self.values = {}\n\n    def load(self):\n        with open(self.path) as f:\n            for line in f:\n                key, _, value = line.partition('=')\n                self.values[key.strip()] = value.strip()\n\n    def get(self, key, default=None):\n";
    let prompt = tok.encode(&text.repeat(3), true).unwrap();
    assert!(prompt.len() > 3 * 64, "{} tokens", prompt.len());
    let n = 16;
    let run = |dtype: deepseek_cache::CacheDtype| {
        let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
        let eos = Generator::new(model.clone(), Some(tok.clone())).eos_ids();
        let (handle, thread) = scheduler::spawn(
            model,
            Some(tok.clone()),
            eos,
            SchedulerConfig {
                cache_dir: Some(scheduler::CacheDir {
                    path: cache_dir.clone(),
                    max_bytes: 1 << 30,
                }),
                cache_dtype: dtype,
                ..Default::default()
            },
        );
        let o = collect(handle.submit(Request::new(prompt.clone(), n)).unwrap());
        let disk = handle.stats.disk.as_ref().unwrap().hit_tokens();
        handle.shutdown();
        thread.join().unwrap();
        (o, disk)
    };
    use deepseek_cache::CacheDtype;
    let (cold, disk0) = run(CacheDtype::F32);
    assert_eq!((cold.cached, disk0), (0, 0));
    let (warm, disk1) = run(CacheDtype::F32);
    let whole = (prompt.len() - 1) / 64 * 64;
    assert_eq!(
        warm.cached, whole,
        "the prefix's whole blocks come from disk"
    );
    assert_eq!(disk1, whole as u64);
    assert_eq!(warm.ids, cold.ids, "tokens from disk-cached rows differ");
    let (other, disk2) = run(CacheDtype::Bf16);
    assert_eq!(
        (other.cached, disk2),
        (0, 0),
        "a bf16 cache read f32 blocks"
    );
    let _ = std::fs::remove_dir_all(&cache_dir);
}

/// `serve --draft`: every decoding sequence brings its own drafts to the batched step; the
/// outputs are those of the same requests one at a time without drafts, greedy and sampled,
/// with stop strings and text intact, and the repetitive ones take drafts.
#[test]
fn batched_speculative_decoding_gives_the_same_outputs() {
    use deepseek_engine::{DraftMethod, DraftOptions};
    let dir = nano();
    let tok = Arc::new(Tokenizer::from_dir(&dir).unwrap());
    let model = Arc::new(Model::load(&dir, &mut |_, _| {}).unwrap());
    let gen = Generator::new(model.clone(), Some(tok.clone()));
    let class = "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n\n\nclass Queue:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n";
    let requests: Vec<(String, SamplingParams, Vec<String>)> = vec![
        (class.into(), SamplingParams::default(), vec![]),
        (
            "def fibonacci(n):".into(),
            SamplingParams::default(),
            vec![],
        ),
        (
            class.into(),
            SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                seed: Some(11),
                ..Default::default()
            },
            vec![],
        ),
        (
            class.into(),
            SamplingParams::default(),
            vec!["__len__".into()],
        ),
        ("import os\n".into(), SamplingParams::default(), vec![]),
    ];
    let n = 48;
    let alone: Vec<(Vec<u32>, String)> = requests
        .iter()
        .map(|(p, sampling, stop)| {
            let opts = GenerateOptions {
                max_new_tokens: n,
                sampling: sampling.clone(),
                stop: stop.clone(),
                ..Default::default()
            };
            let o = gen
                .generate(&tok.encode(p, true).unwrap(), &opts, &mut |_| {})
                .unwrap();
            (o.token_ids, o.text)
        })
        .collect();
    // Prompt lookup, and the bundled model's multi-token-prediction module.
    for method in [DraftMethod::Lookup, DraftMethod::Mtp] {
        let (handle, thread) = scheduler::spawn(
            model.clone(),
            Some(tok.clone()),
            gen.eos_ids(),
            SchedulerConfig {
                max_batch: 4,
                draft: Some(DraftOptions {
                    method,
                    max_tokens: if method == DraftMethod::Mtp { 2 } else { 5 },
                }),
                ..Default::default()
            },
        );
        let rxs: Vec<_> = requests
            .iter()
            .map(|(p, sampling, stop)| {
                let mut r = Request::new(tok.encode(p, true).unwrap(), n);
                r.sampling = sampling.clone();
                r.stop = stop.clone();
                handle.submit(r).unwrap()
            })
            .collect();
        for (k, rx) in rxs.into_iter().enumerate() {
            let o = collect(rx);
            assert_eq!(o.ids, alone[k].0, "{method:?}, request {k}: tokens differ");
            assert_eq!(o.text, alone[k].1, "{method:?}, request {k}: text differs");
        }
        let accepted = handle.stats.draft_accepted.load(Ordering::Relaxed);
        let proposed = handle.stats.draft_proposed.load(Ordering::Relaxed);
        assert!(
            accepted > 0 && accepted <= proposed,
            "{method:?}: {accepted} of {proposed}"
        );
        handle.shutdown();
        thread.join().unwrap();
    }
}
