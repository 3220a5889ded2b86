//! Expert parallelism gives the single process's logits: ranks as threads of this process
//! ([`local_links`]), on every MoE fixture and the bundled model (with its MTP module), in
//! prefill, decode and multi-token-prediction steps. The same over MPI, as processes, is
//! `scripts/test_mpi.sh`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use deepseek_model::expert_parallel::local_link::local_links;
use deepseek_model::expert_parallel::worker::{serve_experts, ExpertShard};
use deepseek_model::expert_parallel::{
    ExpertLink, ExpertParallel, ExpertPlacement, PlacementPolicy,
};
use deepseek_model::{CacheDtype, LogitsFor, Model, MtpStep, PrefillPath, SeqStep};

/// The bound for f32 logits: the ranks' partial sums add in another order.
const TOL: f32 = 1e-5;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// MoE checkpoints: the repo's fixtures, ../shared's where present, and the bundled model.
fn moe_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    for root in [
        workspace().join("tests/fixtures"),
        workspace().join("../shared/fixtures"),
    ] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("model.safetensors").exists())
            .collect();
        v.sort();
        dirs.extend(v);
    }
    dirs.push(workspace().join("models/deepseek-coder-nano"));
    dirs.retain(|d| {
        let (c, _) = deepseek_loader::open_checkpoint(d).unwrap();
        c.moe.is_some()
    });
    dirs
}

/// Token ids of a prompt of `len` for a model of `vocab` ids.
fn prompt(len: usize, vocab: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 7919 + 13) % (vocab - 1)) as u32 + 1)
        .collect()
}

/// What the checks record of a run: prefill logits, greedy tokens and each decode step's
/// logits, and the MTP module's logits where there is one.
#[derive(Debug)]
struct Run {
    prefill: Vec<f32>,
    tokens: Vec<u32>,
    steps: Vec<Vec<f32>>,
    mtp: Vec<f32>,
}

fn run(model: &Model, path: PrefillPath) -> Run {
    let vocab = model.config.vocab_size;
    let p = prompt(19, vocab);
    let mut pool = model.new_cache_pool(256, CacheDtype::F32);
    let mut cache = Default::default();
    let out = model
        .forward_with_hidden(
            &mut pool,
            &mut [SeqStep {
                tokens: &p,
                cache: &mut cache,
            }],
            LogitsFor::AllTokens,
            path,
        )
        .unwrap();
    let mtp = match model.mtp {
        Some(_) => {
            let hid = model.config.hidden_size;
            let n = p.len() - 1;
            model
                .mtp_forward(
                    &mut pool,
                    &mut [MtpStep {
                        next: &p[1..],
                        hidden: &out.hidden[..n * hid],
                        start: 0,
                        cache: &mut cache,
                    }],
                    LogitsFor::AllTokens,
                    PrefillPath::Auto,
                )
                .unwrap()
                .logits
        }
        None => vec![],
    };
    let prefill = out.logits;
    let mut last = prefill[prefill.len() - vocab..].to_vec();
    let (mut tokens, mut steps) = (vec![], vec![]);
    for _ in 0..6 {
        let next = argmax(&last);
        tokens.push(next);
        last = model
            .forward(
                &mut pool,
                &mut [SeqStep {
                    tokens: &[next],
                    cache: &mut cache,
                }],
                LogitsFor::LastToken,
                PrefillPath::Auto,
                None,
            )
            .unwrap();
        steps.push(last.clone());
    }
    Run {
        prefill,
        tokens,
        steps,
        mtp,
    }
}

fn argmax(v: &[f32]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `f` on rank 0's model while `ranks - 1` threads serve the other ranks' experts.
fn with_expert_parallel<R>(
    dir: &Path,
    ranks: usize,
    policy: PlacementPolicy,
    f: impl FnOnce(&Model) -> R,
) -> R {
    let (config, _) = deepseek_loader::open_checkpoint(dir).unwrap();
    let placement = ExpertPlacement::new(config.moe.as_ref().unwrap(), ranks, policy).unwrap();
    let mut links = local_links(ranks).into_iter();
    let leader = Arc::new(ExpertParallel::new(
        Arc::new(links.next().unwrap()),
        placement.clone(),
    ));
    let followers: Vec<_> = links
        .map(|link| {
            let (dir, placement) = (dir.to_path_buf(), placement.clone());
            std::thread::spawn(move || {
                let ep = ExpertParallel::new(Arc::new(link), placement);
                let (c, w) = deepseek_loader::open_checkpoint(&dir).unwrap();
                let shard = ExpertShard::load(&w, &c, &ep, &mut |_, _| {}).unwrap();
                assert!(shard.held_bytes() > 0, "rank {} holds no expert", ep.rank());
                serve_experts(&shard, &ep, Default::default())
            })
        })
        .collect();
    let (c, w) = deepseek_loader::open_checkpoint(dir).unwrap();
    let model =
        Model::from_store_with_experts(c, &w, &mut |_, _| {}, Some(leader.clone())).unwrap();
    leader.check_followers(model.weights_fingerprint).unwrap();
    let r = f(&model);
    leader.stop();
    for t in followers {
        t.join().unwrap().unwrap();
    }
    assert!(leader.stats().layers > 0, "no MoE layer was exchanged");
    r
}

#[test]
fn expert_parallel_logits_equal_the_single_process() {
    let dirs = moe_dirs();
    assert!(dirs.len() >= 5, "MoE checkpoints found: {dirs:?}");
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(&dir, &mut |_, _| {}).unwrap();
        for path in [PrefillPath::Decompressed, PrefillPath::Absorbed] {
            let want = run(&model, path);
            for (ranks, policy) in [
                (2, PlacementPolicy::Contiguous),
                (3, PlacementPolicy::Contiguous),
                (3, PlacementPolicy::Even),
                (4, PlacementPolicy::RoundRobin),
            ] {
                let got = with_expert_parallel(&dir, ranks, policy, |m| run(m, path));
                let what = format!("{name}, {ranks} ranks {policy:?}, {path:?} prefill");
                let d = max_abs_diff(&got.prefill, &want.prefill);
                assert!(d <= TOL, "{what}: prefill logits differ by {d}");
                assert_eq!(got.tokens, want.tokens, "{what}: greedy tokens");
                for (s, (g, w)) in got.steps.iter().zip(&want.steps).enumerate() {
                    let d = max_abs_diff(g, w);
                    assert!(d <= TOL, "{what}: decode step {s} logits differ by {d}");
                }
                let d = max_abs_diff(&got.mtp, &want.mtp);
                assert!(d <= TOL, "{what}: MTP logits differ by {d}");
            }
        }
    }
}

#[test]
fn ranks_that_place_the_experts_otherwise_are_refused_by_name() {
    let dir = workspace().join("models/deepseek-coder-nano");
    let (c, w) = deepseek_loader::open_checkpoint(&dir).unwrap();
    let m = c.moe.clone().unwrap();
    let place = |p| ExpertPlacement::new(&m, 2, p).unwrap();
    let mut links = local_links(2).into_iter();
    let leader = ExpertParallel::new(
        Arc::new(links.next().unwrap()),
        place(PlacementPolicy::Contiguous),
    );
    let follower_link = links.next().unwrap();
    let (dir2, rr) = (dir.clone(), place(PlacementPolicy::RoundRobin));
    let follower = std::thread::spawn(move || {
        let ep = ExpertParallel::new(Arc::new(follower_link), rr);
        let (c, w) = deepseek_loader::open_checkpoint(&dir2).unwrap();
        let shard = ExpertShard::load(&w, &c, &ep, &mut |_, _| {}).unwrap();
        serve_experts(&shard, &ep, Default::default())
    });
    let err = leader.check_followers(w.fingerprint()).unwrap_err();
    assert!(err.contains("1 of the 1 other ranks"), "{err}");
    let err = follower.join().unwrap().unwrap_err();
    assert!(err.contains("rank 1"), "{err}");
}

/// [`local_links`] whose followers round their answers (their experts' sums) to bf16: what a
/// bf16 wire would carry back (rank 0's own part stays f32).
struct Bf16Partials(deepseek_model::expert_parallel::local_link::LocalLink);

impl ExpertLink for Bf16Partials {
    fn rank(&self) -> usize {
        self.0.rank()
    }
    fn ranks(&self) -> usize {
        self.0.ranks()
    }
    fn send(&self, to: usize, msg: &[u8]) {
        // Answers are f32 rows; the one-byte reply to the start-up check is left alone.
        if self.rank() == 0 || msg.len() < 4 {
            return self.0.send(to, msg);
        }
        let rounded: Vec<u8> = msg
            .chunks_exact(4)
            .flat_map(|b| {
                let v = f32::from_le_bytes(b.try_into().unwrap());
                half::bf16::from_f32(v).to_f32().to_le_bytes()
            })
            .collect();
        self.0.send(to, &rounded)
    }
    fn receive(&self, from: usize) -> Vec<u8> {
        self.0.receive(from)
    }
}

/// What answering in bf16 would cost (half the bytes back): measured, with a bound.
#[test]
fn bf16_partial_sums_move_the_logits_by_the_rounding_only() {
    let mut worst = 0.0f32;
    for dir in moe_dirs() {
        let model = Model::load(&dir, &mut |_, _| {}).unwrap();
        let want = run(&model, PrefillPath::Decompressed);
        let (config, _) = deepseek_loader::open_checkpoint(&dir).unwrap();
        let placement =
            ExpertPlacement::new(config.moe.as_ref().unwrap(), 2, PlacementPolicy::Contiguous)
                .unwrap();
        let mut links = local_links(2).into_iter().map(Bf16Partials);
        let leader: Arc<ExpertParallel> = Arc::new(ExpertParallel::new(
            Arc::new(links.next().unwrap()),
            placement.clone(),
        ));
        let link = links.next().unwrap();
        let d2 = dir.clone();
        let follower = std::thread::spawn(move || {
            let ep = ExpertParallel::new(Arc::new(link), placement);
            let (c, w) = deepseek_loader::open_checkpoint(&d2).unwrap();
            let shard = ExpertShard::load(&w, &c, &ep, &mut |_, _| {}).unwrap();
            serve_experts(&shard, &ep, Default::default())
        });
        let (c, w) = deepseek_loader::open_checkpoint(&dir).unwrap();
        let m =
            Model::from_store_with_experts(c, &w, &mut |_, _| {}, Some(leader.clone())).unwrap();
        let got = run(&m, PrefillPath::Decompressed);
        leader.stop();
        follower.join().unwrap().unwrap();
        let scale = want.prefill.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = max_abs_diff(&got.prefill, &want.prefill) / scale.max(1.0);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        eprintln!(
            "{name}: bf16 partial sums: prefill logits within {d:.2e} of their largest; greedy tokens {}",
            if got.tokens == want.tokens { "the same" } else { "differ" }
        );
        worst = worst.max(d);
        assert!(
            d < 2e-2,
            "{name}: bf16 partials moved the logits by {d} of their scale"
        );
        assert_ne!(d, 0.0, "{name}: the rounding must show");
    }
    eprintln!("bf16 partial sums: largest logit change {worst:.2e} of the logits' scale");
}
