//! Continuous batching: one thread owns the model and the cache and runs steps forever. Between
//! steps, new requests join and finished or cancelled ones leave. Each step runs
//! - one forward over the next token of *every* decoding sequence together (so a routed expert's
//!   weights are read once for all the sequences that chose it), and
//! - one chunk of at most `prefill_chunk` prompt tokens of the oldest sequence still in prefill,
//!   so new arrivals get their first token while the others keep decoding.
//!
//! Prompts start from the longest prefix of whole cache blocks some earlier request already
//! computed ([`PrefixCache`]); a request is admitted only when the cache can hold its prompt and
//! all of its `max_new_tokens`, so a running sequence never runs out of blocks.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use deepseek_cache::{BlockPool, CacheDtype, DiskTier, PrefixCache, SequenceCache, BLOCK_TOKENS};
use deepseek_model::{LogitsFor, Model, PrefillPath, SeqStep, StepOutput};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use crate::draft::{
    self, mtp_drafts, DraftMethod, DraftOptions, MtpDraftRequest, MtpDrafter, LOOKUP_MAX_NGRAM,
};
use crate::request::token_logprob;
pub use crate::request::{Event, Request, SubmitError, TokenLogprob};
use crate::sampler::log_softmax;
pub use crate::sequence::Failure;
use crate::sequence::{Accepted, Limits, SequenceState};
use crate::tokenizer::Tokenizer;

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// Most sequences decoding together.
    pub max_batch: usize,
    /// Most requests waiting beyond the batch's free places; more are refused. A request that
    /// arrives while a place is free is never refused, even while a step runs.
    pub max_queue: usize,
    /// Tokens the cache can hold in all (every sequence and the prefix cache).
    pub cache_tokens: usize,
    /// Prompt tokens per prefill step.
    pub prefill_chunk: usize,
    /// Where whole cache blocks are also kept on disk (`--cache-dir`), if anywhere.
    pub cache_dir: Option<CacheDir>,
    /// How the cache pool stores rows (`--cache-type`).
    pub cache_dtype: CacheDtype,
    /// Speculative decoding for every request (`serve --draft`): each decoding sequence brings
    /// its own drafts to the step. None: one token per sequence and step.
    pub draft: Option<DraftOptions>,
}

/// The prefix cache's disk tier: a folder and the most bytes of block files it may hold.
#[derive(Clone, Debug)]
pub struct CacheDir {
    pub path: std::path::PathBuf,
    pub max_bytes: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch: 16,
            max_queue: 256,
            cache_tokens: 32768,
            prefill_chunk: crate::generate::PREFILL_CHUNK,
            cache_dir: None,
            cache_dtype: CacheDtype::F32,
            draft: None,
        }
    }
}

/// Counters the server's /metrics shows. Times in microseconds.
#[derive(Default, Debug)]
pub struct Stats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub last_batch: AtomicUsize,
    pub steps: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub cached_prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Draft tokens checked, and those the model agreed with (speculative decoding).
    pub draft_proposed: AtomicU64,
    pub draft_accepted: AtomicU64,
    pub cache_blocks_used: AtomicUsize,
    pub cache_blocks_total: AtomicUsize,
    pub prefix_cache_blocks: AtomicUsize,
    /// The disk tier's own counters, when there is one.
    pub disk: Option<Arc<deepseek_cache::disk::DiskStats>>,
}

enum Msg {
    Submit(Box<Request>, UnboundedSender<Event>),
    Shutdown,
}

/// The way into the scheduler thread; cheap to clone.
#[derive(Clone)]
pub struct SchedulerHandle {
    tx: mpsc::Sender<Msg>,
    pub stats: Arc<Stats>,
    config: SchedulerConfig,
}

impl SchedulerHandle {
    /// Queues `req`; its events arrive on the returned receiver. Dropping the receiver cancels
    /// the request and frees its cache at the next step.
    pub fn submit(&self, req: Request) -> Result<UnboundedReceiver<Event>, SubmitError> {
        let needed = req.prompt.len() + req.max_new_tokens;
        let cache_tokens = self.config.cache_tokens.div_ceil(BLOCK_TOKENS) * BLOCK_TOKENS;
        if needed > cache_tokens {
            return Err(SubmitError::TooLarge {
                needed_tokens: needed,
                cache_tokens,
            });
        }
        // Waiting requests first fill the batch's free places; only the rest count against
        // max_queue. The scheduler moves a request from `waiting` to `running` in one step
        // (`admit`), so their sum never overstates what is truly waiting.
        let running = self.stats.running.load(Ordering::Relaxed);
        let room = self.config.max_queue + self.config.max_batch.saturating_sub(running);
        if self
            .stats
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                (w < room).then_some(w + 1)
            })
            .is_err()
        {
            return Err(SubmitError::QueueFull);
        }
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        self.tx
            .send(Msg::Submit(Box::new(req), etx))
            .map_err(|_| SubmitError::ShuttingDown)?;
        Ok(erx)
    }

    /// Asks the thread to finish: queued requests fail, running ones are cancelled.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
}

/// Starts the scheduler thread for `model`.
pub fn spawn(
    model: Arc<Model>,
    tokenizer: Option<Arc<Tokenizer>>,
    eos_ids: Vec<u32>,
    config: SchedulerConfig,
) -> (SchedulerHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let pool = model.new_cache_pool(config.cache_tokens, config.cache_dtype);
    let prefix = match &config.cache_dir {
        Some(d) => PrefixCache::with_disk(DiskTier::open(
            &d.path,
            model.cache_fingerprint(config.cache_dtype),
            pool.block_bytes_len(),
            d.max_bytes,
        )),
        None => PrefixCache::new(),
    };
    let stats = Arc::new(Stats {
        disk: prefix.disk().map(|d| d.stats.clone()),
        ..Stats::default()
    });
    stats
        .cache_blocks_total
        .store(pool.max_blocks(), Ordering::Relaxed);
    let mut s = Scheduler {
        model,
        tokenizer,
        eos_ids,
        config: config.clone(),
        pool,
        prefix,
        waiting: VecDeque::new(),
        active: vec![],
        stats: stats.clone(),
        rx,
    };
    let thread = std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || s.run())
        .expect("cannot start the scheduler thread");
    (SchedulerHandle { tx, stats, config }, thread)
}

struct Sequence {
    req: Box<Request>,
    events: UnboundedSender<Event>,
    cache: SequenceCache,
    /// Tokens, sampler, text and limits: what decides each sampled token's fate.
    state: SequenceState,
    /// Sampled, not yet run through the model.
    pending: Option<u32>,
    /// Blocks this sequence may still need at most.
    blocks_to_come: usize,
    /// The prefix cache was consulted (at the first prefill step).
    looked_up: bool,
    /// Its multi-token-prediction drafts' state (`--draft mtp`).
    mtp: MtpDrafter,
    done: bool,
}

struct Scheduler {
    model: Arc<Model>,
    tokenizer: Option<Arc<Tokenizer>>,
    eos_ids: Vec<u32>,
    config: SchedulerConfig,
    pool: BlockPool,
    prefix: PrefixCache,
    waiting: VecDeque<(Box<Request>, UnboundedSender<Event>)>,
    active: Vec<Sequence>,
    stats: Arc<Stats>,
    rx: mpsc::Receiver<Msg>,
}

impl Scheduler {
    fn run(&mut self) {
        loop {
            // Wait when idle; otherwise take whatever arrived.
            if self.active.is_empty() && self.waiting.is_empty() {
                match self.rx.recv() {
                    Ok(m) => {
                        if !self.take(m) {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            let mut stop = false;
            while let Ok(m) = self.rx.try_recv() {
                if !self.take(m) {
                    stop = true;
                    break;
                }
            }
            if stop {
                break;
            }
            self.drop_cancelled();
            self.admit();
            self.step();
            self.publish_stats();
        }
        for (_, events) in self.waiting.drain(..) {
            let _ = events.send(Event::Failed(Failure::ShuttingDown));
        }
        for s in &mut self.active {
            let _ = s.events.send(Event::Failed(Failure::ShuttingDown));
            self.pool.release(&mut s.cache);
        }
        self.active.clear();
        self.stats.waiting.store(0, Ordering::Relaxed);
        self.publish_stats();
    }

    /// False on shutdown.
    fn take(&mut self, m: Msg) -> bool {
        match m {
            Msg::Submit(req, events) => {
                self.waiting.push_back((req, events));
                true
            }
            Msg::Shutdown => false,
        }
    }

    fn drop_cancelled(&mut self) {
        let before = self.waiting.len();
        self.waiting.retain(|(_, e)| !e.is_closed());
        let gone = before - self.waiting.len();
        self.stats.waiting.fetch_sub(gone, Ordering::Relaxed);
        for s in &mut self.active {
            if s.events.is_closed() {
                s.done = true;
            }
        }
        self.retire_done();
    }

    /// Blocks the running sequences may still claim.
    fn blocks_promised(&self) -> usize {
        self.active.iter().map(|s| s.blocks_to_come).sum()
    }

    fn admit(&mut self) {
        while self.active.len() < self.config.max_batch {
            let Some((req, events)) = self.waiting.pop_front() else {
                break;
            };
            let total = req.prompt.len() + req.max_new_tokens;
            // Counted without the prefix cache (looked up when prefill starts): conservative.
            let blocks_to_come = total.div_ceil(BLOCK_TOKENS);
            let free = self.pool.available_blocks() + self.prefix.evictable(&self.pool);
            if blocks_to_come + self.blocks_promised() > free && !self.active.is_empty() {
                // Not now: wait until running sequences give blocks back.
                self.waiting.push_front((req, events));
                break;
            }
            // Counted running before it stops counting waiting (see `submit`).
            self.stats.running.fetch_add(1, Ordering::Relaxed);
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            self.stats
                .prompt_tokens
                .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
            let mut req = req;
            let limits = Limits {
                max_new_tokens: req.max_new_tokens,
                max_context: self.model.config.max_position_embeddings,
                stop_on_eos: req.stop_on_eos,
                eos_ids: self.eos_ids.clone(),
            };
            let state = SequenceState::new(
                std::mem::take(&mut req.prompt),
                req.sampling.clone(),
                &req.stop,
                !req.keep_special,
                limits,
                req.constraint.take(),
            );
            self.active.push(Sequence {
                state,
                req,
                events,
                cache: SequenceCache::default(),
                looked_up: false,
                mtp: MtpDrafter::default(),
                pending: None,
                blocks_to_come,
                done: false,
            });
        }
    }

    /// Makes sure `blocks` more can be allocated, evicting prefix-cache blocks if needed.
    fn make_room(&mut self, blocks: usize) {
        let free = self.pool.available_blocks();
        if blocks > free {
            self.prefix.evict(&mut self.pool, blocks - free);
        }
    }

    fn new_blocks(s: &Sequence, new_tokens: usize) -> usize {
        (s.cache.len + new_tokens)
            .div_ceil(BLOCK_TOKENS)
            .saturating_sub(s.cache.block_table.len())
    }

    /// One step: the decode of every sequence with a sampled token, then a chunk of prefill.
    fn step(&mut self) {
        self.decode_step();
        self.prefill_step();
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.retire_done();
    }

    /// Every sequence with a sampled token, in one forward.
    fn decode_step(&mut self) {
        let decoding: Vec<usize> = (0..self.active.len())
            .filter(|&i| self.active[i].pending.is_some())
            .collect();
        if decoding.is_empty() {
            return;
        }
        // Each sequence's sampled token, then its drafts (speculative decoding).
        let drafts = self.drafts(&decoding);
        let toks: Vec<Vec<u32>> = decoding
            .iter()
            .zip(drafts)
            .map(|(&i, d)| [vec![self.active[i].pending.unwrap_or(0)], d].concat())
            .collect();
        let need: usize = decoding
            .iter()
            .zip(&toks)
            .map(|(&i, t)| Self::new_blocks(&self.active[i], t.len()))
            .sum();
        self.make_room(need);
        let bases: Vec<usize> = decoding.iter().map(|&i| self.active[i].cache.len).collect();
        // Absorbed attention for every token, as a one-token step has: a verified draft sees
        // what it would have seen alone.
        let result = self.forward(
            &decoding,
            &toks,
            LogitsFor::AllTokens,
            PrefillPath::Absorbed,
        );
        for &i in &decoding {
            self.active[i].pending = None;
        }
        let hid = self.model.config.hidden_size;
        self.stats
            .last_batch
            .store(decoding.len(), Ordering::Relaxed);
        let (logits, hidden) = match result {
            Ok(out) => (out.logits, out.hidden),
            Err(e) => {
                for &i in &decoding {
                    self.fail(i, Failure::Internal(e.to_string()));
                }
                return;
            }
        };
        let vocab = self.model.config.vocab_size;
        let mut row = 0;
        for ((&i, step), base) in decoding.iter().zip(&toks).zip(bases) {
            let first = row;
            // Row r: the logits after step[r]. A sampled token equal to the next draft keeps
            // it; any other token replaces it and drops the rest.
            let drafts = &step[1..];
            let mut kept = 0;
            for r in 0..step.len() {
                let next = self.accept(i, &logits[(row + r) * vocab..(row + r + 1) * vocab]);
                if r < drafts.len() && next == Some(drafts[r]) {
                    kept += 1;
                } else {
                    break;
                }
            }
            row += step.len();
            if !drafts.is_empty() {
                self.stats
                    .draft_proposed
                    .fetch_add(drafts.len() as u64, Ordering::Relaxed);
                self.stats
                    .draft_accepted
                    .fetch_add(kept as u64, Ordering::Relaxed);
                self.roll_back(i, base + 1 + kept);
            }
            if self.mtp_drafts() && !self.active[i].done {
                let rows = &hidden[first * hid..(first + kept + 1) * hid];
                self.mtp_add(i, base, rows, &step[1..=kept]);
            }
        }
    }

    fn mtp_drafts(&self) -> bool {
        matches!(self.config.draft, Some(d) if d.method == DraftMethod::Mtp)
    }

    /// Hands sequence `i`'s new rows at `start..` to its MTP drafter (see [`MtpDrafter::add`]).
    fn mtp_add(&mut self, i: usize, start: usize, hidden: &[f32], following: &[u32]) {
        let model = self.model.clone();
        let r = self.with_cache(i, |pool, s| {
            s.mtp
                .add(&model, pool, &mut s.cache, start, hidden, following)
        });
        if let Err(e) = r {
            self.fail(i, Failure::Internal(e.to_string()));
        }
    }

    /// Runs `f` on sequence `i` and the pool; blocks its cache takes come off its reservation.
    fn with_cache<T>(&mut self, i: usize, f: impl FnOnce(&mut BlockPool, &mut Sequence) -> T) -> T {
        let s = &mut self.active[i];
        let before = s.cache.block_table.len();
        let out = f(&mut self.pool, s);
        let took = s.cache.block_table.len().saturating_sub(before);
        s.blocks_to_come = s.blocks_to_come.saturating_sub(took);
        out
    }

    /// The drafts of sequences `seqs` for their next step, when speculative decoding is on: as
    /// many as each one's context has rows for and its output has tokens left for.
    fn drafts(&mut self, seqs: &[usize]) -> Vec<Vec<u32>> {
        let Some(d) = self.config.draft else {
            return vec![vec![]; seqs.len()];
        };
        let max_ctx = self.model.config.max_position_embeddings;
        let limit = |s: &Sequence| {
            let room = max_ctx.saturating_sub(s.cache.len + 1);
            let left = s.req.max_new_tokens.saturating_sub(s.state.generated);
            d.max_tokens.min(room).min(left)
        };
        match d.method {
            DraftMethod::Lookup => seqs
                .iter()
                .map(|&i| {
                    let s = &self.active[i];
                    draft::lookup(&s.state.tokens, LOOKUP_MAX_NGRAM, limit(s))
                })
                .collect(),
            DraftMethod::Mtp => {
                let ks: Vec<usize> = seqs.iter().map(|&i| limit(&self.active[i])).collect();
                // Chained drafts write rows past the caches' ends: room for them first.
                let need: usize = seqs
                    .iter()
                    .zip(&ks)
                    .map(|(&i, &k)| Self::new_blocks(&self.active[i], 1 + k))
                    .sum();
                self.make_room(need);
                let mut taken: Vec<(MtpDrafter, SequenceCache, usize, u32)> = seqs
                    .iter()
                    .map(|&i| {
                        let s = &mut self.active[i];
                        let before = s.cache.block_table.len();
                        let token = s.pending.unwrap_or(0);
                        (
                            std::mem::take(&mut s.mtp),
                            std::mem::take(&mut s.cache),
                            before,
                            token,
                        )
                    })
                    .collect();
                let result = {
                    let mut reqs: Vec<MtpDraftRequest> = taken
                        .iter_mut()
                        .zip(&ks)
                        .map(|((m, c, _, token), &k)| MtpDraftRequest {
                            drafter: m,
                            cache: c,
                            token: *token,
                            k,
                        })
                        .collect();
                    mtp_drafts(&self.model, &mut self.pool, &mut reqs)
                };
                for (&i, (m, c, before, _)) in seqs.iter().zip(taken) {
                    let s = &mut self.active[i];
                    let took = c.block_table.len().saturating_sub(before);
                    s.blocks_to_come = s.blocks_to_come.saturating_sub(took);
                    (s.mtp, s.cache) = (m, c);
                }
                result.unwrap_or_else(|e| {
                    for &i in seqs {
                        self.fail(i, Failure::Internal(e.to_string()));
                    }
                    vec![vec![]; seqs.len()]
                })
            }
        }
    }

    /// Keeps the first `len` rows of sequence `i`'s cache (its rejected drafts' rows go); the
    /// blocks it gives back count again towards what it may still claim.
    fn roll_back(&mut self, i: usize, len: usize) {
        let s = &mut self.active[i];
        if s.done || s.cache.len <= len {
            return;
        }
        let before = s.cache.block_table.len();
        if let Err(e) = self.pool.truncate(&mut s.cache, len) {
            return self.fail(i, Failure::Internal(e.to_string()));
        }
        s.blocks_to_come += before - s.cache.block_table.len();
    }

    /// Chunks of the oldest sequences still reading their prompts, up to `prefill_chunk`
    /// tokens in all, in one forward.
    fn prefill_step(&mut self) {
        let mut budget = self.config.prefill_chunk;
        let mut batch: Vec<(usize, usize, usize)> = vec![]; // (sequence, start, end)
        for i in 0..self.active.len() {
            if budget == 0 {
                break;
            }
            let s = &self.active[i];
            if s.done || s.pending.is_some() || s.cache.len >= s.state.prompt_len {
                continue;
            }
            if !s.looked_up {
                // Look the prefix up only now, so requests queued behind one with the same
                // prefix find what it computed.
                let s = &mut self.active[i];
                s.looked_up = true;
                if !s.req.prompt_logprobs {
                    let cache = self
                        .prefix
                        .lookup(&mut self.pool, &s.state.tokens[..s.state.prompt_len]);
                    s.blocks_to_come -= cache.block_table.len().min(s.blocks_to_come);
                    s.cache = cache;
                    let _ = s.events.send(Event::Started {
                        prompt_tokens: s.state.prompt_len,
                        cached_tokens: s.cache.len,
                    });
                    self.stats
                        .cached_prompt_tokens
                        .fetch_add(s.cache.len as u64, Ordering::Relaxed);
                } else {
                    let _ = s.events.send(Event::Started {
                        prompt_tokens: s.state.prompt_len,
                        cached_tokens: 0,
                    });
                }
            }
            let s = &self.active[i];
            let take = budget.min(s.state.prompt_len - s.cache.len);
            batch.push((i, s.cache.len, s.cache.len + take));
            budget -= take;
        }
        if !batch.is_empty() {
            let need: usize = batch
                .iter()
                .map(|&(i, a, b)| Self::new_blocks(&self.active[i], b - a))
                .sum();
            self.make_room(need);
            let all = batch
                .iter()
                .any(|&(i, _, _)| self.active[i].req.prompt_logprobs);
            let chunks: Vec<Vec<u32>> = batch
                .iter()
                .map(|&(i, a, b)| self.active[i].state.tokens[a..b].to_vec())
                .collect();
            let seqs: Vec<usize> = batch.iter().map(|&(i, _, _)| i).collect();
            let result = self.forward(
                &seqs,
                &chunks,
                if all {
                    LogitsFor::AllTokens
                } else {
                    LogitsFor::LastToken
                },
                PrefillPath::Auto,
            );
            match result {
                Ok(out) => {
                    let (logits, hidden) = (out.logits, out.hidden);
                    let vocab = self.model.config.vocab_size;
                    let hid = self.model.config.hidden_size;
                    let mut row = 0;
                    let mut token_row = 0;
                    for &(i, a, b) in &batch {
                        if self.mtp_drafts() {
                            let rows = &hidden[token_row * hid..(token_row + b - a) * hid];
                            let s = &self.active[i];
                            let following =
                                s.state.tokens[a + 1..(b + 1).min(s.state.prompt_len)].to_vec();
                            self.mtp_add(i, a, rows, &following);
                        }
                        token_row += b - a;
                        let s = &mut self.active[i];
                        let rows = if all { b - a } else { 1 };
                        if s.req.prompt_logprobs {
                            let n = s.req.logprobs.unwrap_or(0);
                            let lps: Vec<TokenLogprob> = (0..b - a)
                                .filter(|r| a + r + 1 < s.state.prompt_len)
                                .map(|r| {
                                    let l = &logits[(row + r) * vocab..(row + r + 1) * vocab];
                                    token_logprob(l, s.state.tokens[a + r + 1], n)
                                })
                                .collect();
                            let _ = s.events.send(Event::PromptLogprobs(lps));
                        }
                        // Whole blocks computed so far serve later requests at once.
                        let (tokens, cache) = (&s.state.tokens[..s.cache.len], &s.cache);
                        self.prefix.insert(&mut self.pool, tokens, cache);
                        let last = row + rows - 1;
                        row += rows;
                        if self.active[i].cache.len == self.active[i].state.prompt_len {
                            self.accept(i, &logits[last * vocab..(last + 1) * vocab]);
                        }
                    }
                }
                Err(e) => {
                    for &(i, _, _) in &batch {
                        self.fail(i, Failure::Internal(e.to_string()));
                    }
                }
            }
        }
    }

    /// One forward over `tokens[k]` for sequence `seqs[k]`: their caches are lent to the model
    /// and put back, with the blocks they took off their reservation.
    fn forward(
        &mut self,
        seqs: &[usize],
        tokens: &[Vec<u32>],
        logits_for: LogitsFor,
        path: PrefillPath,
    ) -> Result<StepOutput, deepseek_model::ModelError> {
        let keep_hidden = self.mtp_drafts();
        let mut caches: Vec<SequenceCache> = seqs
            .iter()
            .map(|&i| std::mem::take(&mut self.active[i].cache))
            .collect();
        let result = {
            let mut steps: Vec<SeqStep> = tokens
                .iter()
                .zip(caches.iter_mut())
                .map(|(t, c)| SeqStep {
                    tokens: t,
                    cache: c,
                })
                .collect();
            self.model
                .step_output(&mut self.pool, &mut steps, logits_for, path, keep_hidden)
        };
        for (&i, c) in seqs.iter().zip(caches) {
            let s = &mut self.active[i];
            s.blocks_to_come = s
                .blocks_to_come
                .saturating_sub(c.block_table.len() - s.cache.block_table.len());
            s.cache = c;
        }
        result
    }

    /// Samples sequence `i`'s next token from `logits` and sends it on; the token, when the
    /// sequence goes on with it.
    fn accept(&mut self, i: usize, logits: &[f32]) -> Option<u32> {
        let s = &mut self.active[i];
        if s.done {
            return None;
        }
        if !s.req.candidates.is_empty() {
            let lp = log_softmax(logits);
            let c = s.req.candidates.iter().map(|&id| lp[id as usize]).collect();
            let _ = s.events.send(Event::CandidateLogprobs(c));
        }
        let accepted = s.state.accept(logits, self.tokenizer.as_deref());
        let (token, finished) = match accepted {
            Accepted::Continue { token, text } => (Some((token, text)), None),
            Accepted::Finished {
                token,
                reason,
                tail,
            } => (token, Some((reason, tail))),
            Accepted::Failed(why) => {
                self.fail(i, why);
                return None;
            }
        };
        if let Some((id, text)) = token {
            self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let logprob = s.req.logprobs.map(|n| token_logprob(logits, id, n));
            let _ = s.events.send(Event::Output {
                text,
                token: Some(id),
                logprob,
            });
            s.pending = Some(id);
        }
        if let Some((reason, tail)) = finished {
            s.pending = None;
            if !tail.is_empty() {
                let _ = s.events.send(Event::Output {
                    text: tail,
                    token: None,
                    logprob: None,
                });
            }
            let _ = s.events.send(Event::Finished {
                reason,
                completion_tokens: s.state.generated,
            });
            s.done = true;
        }
        s.pending
    }

    fn fail(&mut self, i: usize, why: Failure) {
        let s = &mut self.active[i];
        let _ = s.events.send(Event::Failed(why));
        s.done = true;
    }

    /// Finished sequences leave: their computed blocks go to the prefix cache, the rest back
    /// to the pool.
    fn retire_done(&mut self) {
        if !self.active.iter().any(|s| s.done) {
            return;
        }
        // Order kept (oldest first), so prefill stays first-come first-served.
        let (done, running): (Vec<Sequence>, Vec<Sequence>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|s| s.done);
        self.active = running;
        for mut s in done {
            // Prompt and generated rows alike: the next turn of a chat starts with them.
            let n = s.cache.len.min(s.state.tokens.len());
            if !s.events.is_closed() {
                self.prefix
                    .insert(&mut self.pool, &s.state.tokens[..n], &s.cache);
            }
            self.pool.release(&mut s.cache);
        }
    }

    fn publish_stats(&self) {
        let st = &self.stats;
        st.running.store(self.active.len(), Ordering::Relaxed);
        st.cache_blocks_used
            .store(self.pool.used_blocks(), Ordering::Relaxed);
        st.prefix_cache_blocks
            .store(self.prefix.len(), Ordering::Relaxed);
    }
}
