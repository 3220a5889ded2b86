//! Draft tokens for speculative decoding: cheap guesses of what the model says next, which the
//! model then checks all at once in one forward step (see [`crate::Generator`]). A draft is
//! only ever a proposal: the output is decided by the model's own logits, token by token.

use deepseek_cache::{BlockPool, SequenceCache};
use deepseek_model::{LogitsFor, Model, ModelError, MtpStep, PrefillPath};

use crate::sampler::argmax;

/// Where drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftMethod {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the last few
    /// tokens, in the prompt or the output so far. Code edits and quotes repeat long spans of
    /// their prompt, where these drafts are accepted in runs.
    Lookup,
    /// DeepSeek-V3's multi-token-prediction module ([`MtpDrafter`]): the checkpoint's own
    /// guess of the token after next, chained for further drafts.
    Mtp,
}

impl DraftMethod {
    pub fn name(self) -> &'static str {
        match self {
            DraftMethod::Lookup => "lookup",
            DraftMethod::Mtp => "mtp",
        }
    }

    /// Why `model` cannot draft this way, if it cannot.
    pub fn unsupported_by(self, model: &Model) -> Option<String> {
        match self {
            DraftMethod::Mtp if model.mtp.is_none() => Some(ModelError::NoMtp.to_string()),
            _ => None,
        }
    }
}

/// Speculative decoding's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DraftOptions {
    pub method: DraftMethod,
    /// Most draft tokens checked per step.
    pub max_tokens: usize,
}

/// Longest n-gram prompt lookup matches (then shorter ones, down to one token).
pub const LOOKUP_MAX_NGRAM: usize = 3;

/// Prompt lookup over `tokens` (prompt, then output): for n from `max_ngram` down to 1, the
/// latest earlier place where the last n tokens occur; the up to `k` tokens that followed it.
/// Empty when nothing matches.
pub fn lookup(tokens: &[u32], max_ngram: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    if k == 0 {
        return vec![];
    }
    for n in (1..=max_ngram.min(len.saturating_sub(1))).rev() {
        let tail = &tokens[len - n..];
        // Latest first: nearby repeats predict best (the line being rewritten).
        for start in (0..len - n).rev() {
            if &tokens[start..start + n] == tail {
                let from = start + n;
                return tokens[from..(from + k).min(len)].to_vec();
            }
        }
    }
    vec![]
}

/// The multi-token-prediction module's state for one sequence. The module at position i needs
/// the main model's hidden state there and the token at i + 1, so the main model's rows wait
/// here until the token after them is known (the last one until the next token is sampled);
/// then the module runs over them, writing its cache rows, and its prediction at the last one is
/// the first draft. Further drafts chain the module on its own output. Sequences decoding
/// together run the module together ([`mtp_drafts`]).
#[derive(Default)]
pub struct MtpDrafter {
    /// First position whose module row is not written yet.
    start: usize,
    /// `[rows, hidden]`: the main model's final-normed hidden states from `start` on.
    hidden: Vec<f32>,
    /// The tokens following those positions, as far as known (one per row, or one fewer).
    next: Vec<u32>,
}

/// Rows kept waiting at most: past this many (a long prompt's chunks) the module runs over
/// those whose next token is known, so the hidden states held stay bounded.
const MAX_WAITING_ROWS: usize = 512;

impl MtpDrafter {
    /// Records the main model's rows at positions `start..` (`hidden`, one row each) and the
    /// tokens known to follow them.
    pub fn add(
        &mut self,
        model: &Model,
        pool: &mut BlockPool,
        cache: &mut SequenceCache,
        start: usize,
        hidden: &[f32],
        following: &[u32],
    ) -> Result<(), ModelError> {
        let hid = model.config.hidden_size;
        if self.hidden.is_empty() {
            self.start = start;
        }
        debug_assert_eq!(start, self.start + self.hidden.len() / hid, "rows in order");
        debug_assert_eq!(
            self.next.len() * hid,
            self.hidden.len(),
            "earlier rows complete"
        );
        self.hidden.extend_from_slice(hidden);
        self.next.extend_from_slice(following);
        if self.next.len() >= MAX_WAITING_ROWS {
            let n = self.next.len();
            let mut step = [self.step(hid, cache)];
            model.mtp_forward(pool, &mut step, LogitsFor::LastToken, PrefillPath::Auto)?;
            self.consume(n, hid);
        }
        Ok(())
    }

    /// The module's step over the rows whose next token is known.
    fn step<'a>(&'a self, hid: usize, cache: &'a mut SequenceCache) -> MtpStep<'a> {
        MtpStep {
            next: &self.next,
            hidden: &self.hidden[..self.next.len() * hid],
            start: self.start,
            cache,
        }
    }

    /// Forgets the first `n` rows, now in the module's cache.
    fn consume(&mut self, n: usize, hid: usize) {
        self.start += n;
        self.hidden.drain(..n * hid);
        self.next.drain(..n);
    }
}

/// One sequence's part of [`mtp_drafts`].
pub struct MtpDraftRequest<'a> {
    pub drafter: &'a mut MtpDrafter,
    pub cache: &'a mut SequenceCache,
    /// The token just chosen after the sequence's last recorded row.
    pub token: u32,
    /// Most drafts wanted (0: the module still runs, so its rows stay complete).
    pub k: usize,
}

/// Drafts for several sequences, the module run once per draft depth for all of them: each
/// sequence's waiting rows and its new `token` first (the first draft), then one position
/// further on the module's own output for each further draft.
pub fn mtp_drafts(
    model: &Model,
    pool: &mut BlockPool,
    reqs: &mut [MtpDraftRequest],
) -> Result<Vec<Vec<u32>>, ModelError> {
    let hid = model.config.hidden_size;
    let mut drafts = vec![vec![]; reqs.len()];
    // Sequences with a row waiting for `token` (all of them, unless nothing was recorded).
    let live: Vec<bool> = reqs
        .iter()
        .map(|r| r.drafter.hidden.len() > r.drafter.next.len() * hid)
        .collect();
    if !live.contains(&true) {
        return Ok(drafts);
    }
    for (r, _) in reqs.iter_mut().zip(&live).filter(|(_, &l)| l) {
        r.drafter.next.push(r.token);
    }
    let out = {
        let mut steps: Vec<MtpStep> = live
            .iter()
            .zip(reqs.iter_mut())
            .filter(|(&is_live, _)| is_live)
            .map(|(_, r)| r.drafter.step(hid, r.cache))
            .collect();
        model.mtp_forward(pool, &mut steps, LogitsFor::LastToken, PrefillPath::Auto)?
    };
    // Per live sequence: its last position, and the module's output hidden state there.
    let vocab = model.config.vocab_size;
    let mut chain: Vec<(usize, usize, Vec<f32>)> = vec![]; // (request, position, hidden)
    let mut row_end = 0;
    let live_ids = (0..reqs.len()).filter(|&i| live[i]);
    for (j, i) in live_ids.enumerate() {
        let r = &mut reqs[i];
        let n = r.drafter.next.len();
        row_end += n;
        let last = r.drafter.start + n - 1;
        r.drafter.consume(n, hid);
        if r.k > 0 {
            drafts[i].push(argmax(&out.logits[j * vocab..(j + 1) * vocab]));
            chain.push((
                i,
                last,
                out.hidden[(row_end - 1) * hid..row_end * hid].to_vec(),
            ));
        }
    }
    // Further drafts: rows past the main model's, rewritten (or dropped) once checked.
    loop {
        chain.retain(|(i, _, _)| drafts[*i].len() < reqs[*i].k);
        if chain.is_empty() {
            return Ok(drafts);
        }
        let nexts: Vec<[u32; 1]> = chain
            .iter()
            .map(|(i, _, _)| [*drafts[*i].last().unwrap()])
            .collect();
        let out = {
            let mut steps: Vec<MtpStep> = vec![];
            let mut caches: Vec<Option<&mut SequenceCache>> =
                reqs.iter_mut().map(|r| Some(&mut *r.cache)).collect();
            for ((i, pos, h), next) in chain.iter().zip(&nexts) {
                steps.push(MtpStep {
                    next,
                    hidden: h,
                    start: pos + 1,
                    cache: caches[*i].take().expect("one step per sequence"),
                });
            }
            model.mtp_forward(
                pool,
                &mut steps,
                LogitsFor::LastToken,
                PrefillPath::Absorbed,
            )?
        };
        for (j, (i, pos, h)) in chain.iter_mut().enumerate() {
            drafts[*i].push(argmax(&out.logits[j * vocab..(j + 1) * vocab]));
            *pos += 1;
            *h = out.hidden[j * hid..(j + 1) * hid].to_vec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lookup;

    #[test]
    fn lookup_proposes_what_followed_the_latest_longest_match() {
        // "a b c d | x b c" → the last 2 tokens (b c) occurred at 1; d and x followed.
        let t = [1, 2, 3, 4, 9, 2, 3];
        assert_eq!(lookup(&t, 3, 2), [4, 9]);
        assert_eq!(lookup(&t, 3, 8), [4, 9, 2, 3]);
        // A longer match wins over a later shorter one.
        let t = [5, 6, 7, 8, 7, 0, 5, 6, 7];
        assert_eq!(lookup(&t, 3, 1), [8]);
        // Latest among equal lengths.
        let t = [1, 2, 1, 3, 1];
        assert_eq!(lookup(&t, 3, 1), [3]);
        // Nothing repeats, or nothing asked.
        assert!(lookup(&[1, 2, 3], 3, 4).is_empty());
        assert!(lookup(&[1, 1], 3, 0).is_empty());
        assert!(lookup(&[7], 3, 4).is_empty());
    }
}
