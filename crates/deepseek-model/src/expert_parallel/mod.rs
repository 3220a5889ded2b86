//! Expert parallelism: the routed experts split across processes (MPI ranks), everything else
//! on rank 0.
//!
//! Rank 0 (the leader) holds the attention, the dense layers, the shared experts, the cache and
//! its own share of the routed experts, and runs every command as a single process would. At
//! each MoE layer it routes the step's tokens and sends each other rank (follower) holding a
//! chosen expert one message: the normed hidden states of the tokens routed to it, with their
//! experts and weights there (dispatch). It runs its own experts and the shared ones meanwhile,
//! then takes one message back from each of those ranks, their experts' weighted sum for each
//! of those tokens, and adds them in rank order (combine): two network latencies per MoE layer,
//! only the ranks a step's tokens chose, and each rank sees only its tokens' rows. Followers
//! hold only their routed experts and answer ([`worker::serve_experts`]) until rank 0 says
//! stop.
//!
//! Only the MoE block knows of this: the scheduler, the cache and prefix reuse, the server,
//! speculative decoding run on rank 0 unchanged, and the followers need no cache at all. The
//! transport is a trait ([`ExpertLink`]): MPI in the CLI (its `mpi` feature), channels between
//! threads for the tests ([`local_link`]). `EXPERT_PARALLEL.md` has the design and the numbers
//! for real clusters.

pub mod local_link;
pub mod placement;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

pub use placement::{ExpertPlacement, PlacementPolicy};

use crate::router::Routing;

/// What expert parallelism needs from the transport between the ranks: ordered messages
/// between rank 0 and each other rank, one call at a time per process.
pub trait ExpertLink: Send + Sync {
    fn rank(&self) -> usize;
    fn ranks(&self) -> usize;
    /// `msg` to rank `to` (arriving after the earlier messages to it).
    fn send(&self, to: usize, msg: &[u8]);
    /// The next message from rank `from`, whatever its length.
    fn receive(&self, from: usize) -> Vec<u8>;
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
    messages: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    exchange_ns: AtomicU64,
}

/// [`ExpertParallel::stats`], on rank 0: MoE layers exchanged, messages sent (one per follower
/// a layer's tokens chose; as many come back), bytes sent and received in all, and the wall
/// time rank 0 spent sending and waiting for answers.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ExchangeStats {
    pub layers: u64,
    pub messages: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub seconds: f64,
}

impl std::ops::AddAssign for ExchangeStats {
    fn add_assign(&mut self, o: ExchangeStats) {
        self.layers += o.layers;
        self.messages += o.messages;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.seconds += o.seconds;
    }
}

impl ExchangeStats {
    /// What happened between `before` and this.
    pub fn since(self, before: ExchangeStats) -> ExchangeStats {
        ExchangeStats {
            layers: self.layers - before.layers,
            messages: self.messages - before.messages,
            bytes_sent: self.bytes_sent - before.bytes_sent,
            bytes_received: self.bytes_received - before.bytes_received,
            seconds: self.seconds - before.seconds,
        }
    }
}

/// What [`ExpertParallel::dispatch`] sent: each rank's tokens, in the order of their rows.
pub struct Dispatch {
    layer: usize,
    hidden: usize,
    tokens: Vec<Vec<usize>>,
}

/// The header every message from rank 0 starts with: `[op, layer, tokens, pairs]` as
/// little-endian u64.
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
            messages: s.messages.load(Relaxed),
            bytes_sent: s.bytes_sent.load(Relaxed),
            bytes_received: s.bytes_received.load(Relaxed),
            seconds: s.exchange_ns.load(Relaxed) as f64 * 1e-9,
        }
    }

    /// Rank 0, dispatch: sends every follower holding an expert that `routing` chose for a
    /// token of MoE layer `layer` the rows of `x` (`[n, hidden]`, normed) of those tokens, with
    /// their experts and weights there. [`ExpertParallel::combine`] takes the answers.
    pub fn dispatch(&self, layer: usize, x: &[f32], n: usize, routing: &[Routing]) -> Dispatch {
        let t0 = Instant::now();
        let hid = x.len() / n.max(1);
        // Per rank: its tokens, and (index among them, expert, weight) for each choice.
        let mut tokens: Vec<Vec<usize>> = vec![vec![]; self.ranks()];
        let mut pairs: Vec<Vec<(u32, u32, f32)>> = vec![vec![]; self.ranks()];
        for (t, r) in routing.iter().enumerate() {
            for (&e, &w) in r.experts.iter().zip(&r.weights) {
                let to = self.placement.owner(e);
                if to == 0 {
                    continue;
                }
                if tokens[to].last() != Some(&t) {
                    tokens[to].push(t);
                }
                pairs[to].push(((tokens[to].len() - 1) as u32, e as u32, w));
            }
        }
        let s = &self.stats;
        for to in 1..self.ranks() {
            if tokens[to].is_empty() {
                continue;
            }
            let (m, p) = (tokens[to].len(), pairs[to].len());
            let mut msg = Vec::with_capacity(HEADER_BYTES + 4 * (m * hid + 3 * p));
            msg.extend(encode_header(OP_LAYER, layer, m, p));
            for &t in &tokens[to] {
                msg.extend(
                    x[t * hid..(t + 1) * hid]
                        .iter()
                        .flat_map(|v| v.to_le_bytes()),
                );
            }
            for &(i, e, w) in &pairs[to] {
                msg.extend(i.to_le_bytes());
                msg.extend(e.to_le_bytes());
                msg.extend(w.to_le_bytes());
            }
            self.link.send(to, &msg);
            s.messages.fetch_add(1, Relaxed);
            s.bytes_sent.fetch_add(msg.len() as u64, Relaxed);
        }
        s.layers.fetch_add(1, Relaxed);
        s.exchange_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        Dispatch {
            layer,
            hidden: hid,
            tokens,
        }
    }

    /// Rank 0, combine: adds each dispatched follower's answer (its experts' weighted sum for
    /// each of its tokens) into `out` (`[n, hidden]`), in rank order.
    pub fn combine(&self, dispatch: Dispatch, out: &mut [f32]) -> Result<(), String> {
        let t0 = Instant::now();
        let hid = dispatch.hidden;
        for (from, tokens) in dispatch.tokens.iter().enumerate().skip(1) {
            if tokens.is_empty() {
                continue;
            }
            let msg = self.link.receive(from);
            self.stats
                .bytes_received
                .fetch_add(msg.len() as u64, Relaxed);
            if msg.len() != 4 * hid * tokens.len() {
                return Err(format!(
                    "rank {from} answered MoE layer {} with {} bytes for {} tokens of {hid} values",
                    dispatch.layer,
                    msg.len(),
                    tokens.len()
                ));
            }
            for (&t, part) in tokens.iter().zip(msg.chunks_exact(4 * hid)) {
                let row = &mut out[t * hid..(t + 1) * hid];
                for (o, b) in row.iter_mut().zip(part.chunks_exact(4)) {
                    *o += f32::from_le_bytes(b.try_into().unwrap());
                }
            }
        }
        self.stats
            .exchange_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        Ok(())
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
        for to in 1..self.ranks() {
            self.link.send(to, &msg);
        }
        let differ = (1..self.ranks())
            .filter(|&from| self.link.receive(from) != [1])
            .count();
        match differ {
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
    if link.rank() == 0 {
        for to in 1..link.ranks() {
            link.send(to, &encode_header(OP_STOP, 0, 0, 0));
        }
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
