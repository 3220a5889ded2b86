//! Expert parallelism: the routed experts split across processes (MPI ranks), everything else
//! on rank 0.
//!
//! Rank 0 (the leader) holds the attention, the dense layers, the shared experts, the cache and
//! its own share of the routed experts, and runs every command as a single process would. At
//! each MoE layer it routes the step's tokens, sends the normed hidden states and the routing
//! decisions to the other ranks (one message to each), runs its own experts and the shared ones
//! while they run theirs, and one sum over the ranks (a reduce) brings the layer's output back:
//! two network latencies per MoE layer. The
//! other ranks (followers) hold only their routed experts and answer layer after layer
//! ([`worker::serve_experts`]) until the leader says stop.
//!
//! Only the MoE block knows of this: the scheduler, the cache and prefix reuse, the server,
//! speculative decoding run on rank 0 unchanged, and the followers need no cache at all. The
//! transport is a trait ([`ExpertLink`]): MPI in the CLI (its `mpi` feature), threads in one
//! process for the tests ([`local_link`]). `EXPERT_PARALLEL.md` has the design and the numbers
//! for real clusters.

pub mod local_link;
pub mod placement;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

pub use placement::{ExpertPlacement, PlacementPolicy};

use crate::router::Routing;

/// What expert parallelism needs from the transport between the ranks, one call at a time.
pub trait ExpertLink: Send + Sync {
    fn rank(&self) -> usize;
    fn ranks(&self) -> usize;
    /// Rank 0: `msg` to every other rank, one message each (messages arrive in order).
    fn send_to_followers(&self, msg: &[u8]);
    /// A follower: the next message from rank 0, whatever its length.
    fn receive_from_leader(&self) -> Vec<u8>;
    /// Collective: the element-wise sum of every rank's `buf` into rank 0's (the others' is
    /// left as is).
    fn reduce_sum(&self, buf: &mut [f32]);
}

/// This process's part in expert parallelism: the link to the others and which rank holds
/// which expert.
pub struct ExpertParallel {
    link: Arc<dyn ExpertLink>,
    placement: ExpertPlacement,
    stopped: AtomicBool,
    stats: Stats,
}

/// What the exchanges cost so far, on rank 0.
#[derive(Default)]
struct Stats {
    layers: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_reduced: AtomicU64,
    exchange_ns: AtomicU64,
}

/// [`ExpertParallel::stats`]: MoE layers exchanged, bytes sent to each follower and reduced
/// per rank, and the wall time rank 0 spent sending and waiting in the reduces.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    pub layers: u64,
    pub bytes_sent: u64,
    pub bytes_reduced: u64,
    pub seconds: f64,
}

impl ExchangeStats {
    /// What happened between `before` and this.
    pub fn since(self, before: ExchangeStats) -> ExchangeStats {
        ExchangeStats {
            layers: self.layers - before.layers,
            bytes_sent: self.bytes_sent - before.bytes_sent,
            bytes_reduced: self.bytes_reduced - before.bytes_reduced,
            seconds: self.seconds - before.seconds,
        }
    }
}

/// The header every exchange starts with: `[op, layer, tokens, k]` as little-endian u64.
const HEADER_BYTES: usize = 32;
const OP_STOP: u64 = 0;
const OP_LAYER: u64 = 1;
const OP_CHECK: u64 = 2;

impl ExpertParallel {
    pub fn new(link: Arc<dyn ExpertLink>, placement: ExpertPlacement) -> Self {
        assert_eq!(
            link.ranks(),
            placement.ranks(),
            "one placement slot per rank"
        );
        ExpertParallel {
            link,
            placement,
            stopped: AtomicBool::new(false),
            stats: Stats::default(),
        }
    }

    pub fn rank(&self) -> usize {
        self.link.rank()
    }

    pub fn ranks(&self) -> usize {
        self.link.ranks()
    }

    pub fn placement(&self) -> &ExpertPlacement {
        &self.placement
    }

    /// Whether routed expert `e` lives in this process.
    pub fn holds(&self, e: usize) -> bool {
        self.placement.owner(e) == self.rank()
    }

    pub fn stats(&self) -> ExchangeStats {
        let s = &self.stats;
        ExchangeStats {
            layers: s.layers.load(Relaxed),
            bytes_sent: s.bytes_sent.load(Relaxed),
            bytes_reduced: s.bytes_reduced.load(Relaxed),
            seconds: s.exchange_ns.load(Relaxed) as f64 * 1e-9,
        }
    }

    /// Rank 0: sends MoE layer `layer`'s input `x` (`[n, hidden]`, normed) and each token's
    /// routing to the other ranks.
    pub fn send_layer(&self, layer: usize, x: &[f32], n: usize, routing: &[Routing]) {
        let t0 = Instant::now();
        let k = routing.first().map_or(0, |r| r.experts.len());
        assert!(routing.iter().all(|r| r.experts.len() == k));
        let mut msg = Vec::with_capacity(HEADER_BYTES + 4 * (x.len() + 2 * n * k));
        msg.extend(encode_header(OP_LAYER, layer, n, k));
        msg.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        for r in routing {
            msg.extend(r.weights.iter().flat_map(|w| w.to_le_bytes()));
        }
        for r in routing {
            msg.extend(r.experts.iter().flat_map(|&e| (e as u32).to_le_bytes()));
        }
        self.link.send_to_followers(&msg);
        let s = &self.stats;
        s.layers.fetch_add(1, Relaxed);
        s.bytes_sent.fetch_add(msg.len() as u64, Relaxed);
        s.exchange_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    }

    /// Every rank: adds the other ranks' sums of their experts into `out` (rank 0's result;
    /// the followers' `out` is their own part).
    pub fn reduce(&self, out: &mut [f32]) {
        let t0 = Instant::now();
        self.link.reduce_sum(out);
        if self.rank() == 0 {
            let s = &self.stats;
            s.bytes_reduced.fetch_add(4 * out.len() as u64, Relaxed);
            s.exchange_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        }
    }

    /// Rank 0: asks every follower whether it loaded the same weights (`fingerprint`,
    /// [`deepseek_loader::WeightStore::fingerprint`]) and placement; an error saying how many
    /// did not.
    pub fn check_followers(&self, fingerprint: [u8; 32]) -> Result<(), String> {
        if self.ranks() == 1 {
            return Ok(());
        }
        let mut msg = encode_header(OP_CHECK, 0, 0, 0).to_vec();
        msg.extend(check_message(fingerprint, &self.placement));
        self.link.send_to_followers(&msg);
        let mut differ = [0.0f32];
        self.link.reduce_sum(&mut differ);
        match differ[0] as usize {
            0 => Ok(()),
            n => Err(format!(
                "{n} of the {} other ranks loaded other weights or placed the experts otherwise: start every rank with the same --model and --expert-placement",
                self.ranks() - 1
            )),
        }
    }

    /// Rank 0: tells the followers there is no more work (they return from
    /// [`worker::serve_experts`]). Once only; later calls do nothing.
    pub fn stop(&self) {
        if self.rank() == 0 && !self.stopped.swap(true, Relaxed) {
            stop_followers(&*self.link);
        }
    }
}

/// Rank 0: tells the followers on `link` there is no more work, whether or not a model was
/// loaded (a command that failed before loading one still has followers waiting).
pub fn stop_followers(link: &dyn ExpertLink) {
    if link.rank() == 0 && link.ranks() > 1 {
        link.send_to_followers(&encode_header(OP_STOP, 0, 0, 0));
    }
}

/// What [`ExpertParallel::check_followers`] compares: the weights' fingerprint and the owner
/// of every expert.
fn check_message(fingerprint: [u8; 32], placement: &ExpertPlacement) -> [u8; 64] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(format!("{placement:?}"));
    let mut m = [0u8; 64];
    m[..32].copy_from_slice(&fingerprint);
    m[32..].copy_from_slice(&h.finalize());
    m
}

fn encode_header(op: u64, layer: usize, n: usize, k: usize) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    for (i, v) in [op, layer as u64, n as u64, k as u64]
        .into_iter()
        .enumerate()
    {
        h[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
    }
    h
}

/// A message's header and the rest; None when it is shorter than a header.
fn decode_header(msg: &[u8]) -> Option<([u64; 4], &[u8])> {
    let (h, rest) = msg.split_at_checked(HEADER_BYTES)?;
    let header =
        std::array::from_fn(|i| u64::from_le_bytes(h[8 * i..8 * i + 8].try_into().unwrap()));
    Some((header, rest))
}
