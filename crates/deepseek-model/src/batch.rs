//! How the tokens of one forward step are laid out: sequences one after another, each with its
//! new tokens at positions following what its cache already holds.

use std::ops::Range;

pub struct BatchLayout {
    ranges: Vec<Range<usize>>,
    start_pos: Vec<usize>,
    token_seq: Vec<usize>,
}

impl BatchLayout {
    /// `(new_tokens, cached_len)` per sequence.
    pub fn new(seqs: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let (mut ranges, mut start_pos, mut token_seq) = (vec![], vec![], vec![]);
        let mut t = 0;
        for (s, (n, cached)) in seqs.into_iter().enumerate() {
            ranges.push(t..t + n);
            start_pos.push(cached);
            token_seq.extend(std::iter::repeat_n(s, n));
            t += n;
        }
        BatchLayout {
            ranges,
            start_pos,
            token_seq,
        }
    }
    pub fn tokens(&self) -> usize {
        self.token_seq.len()
    }
    pub fn sequences(&self) -> usize {
        self.ranges.len()
    }
    pub fn seq_of(&self, t: usize) -> usize {
        self.token_seq[t]
    }
    pub fn tokens_of(&self, s: usize) -> Range<usize> {
        self.ranges[s].clone()
    }
    /// Absolute position of batch token `t` in its sequence.
    pub fn position(&self, t: usize) -> usize {
        let s = self.token_seq[t];
        self.start_pos[s] + (t - self.ranges[s].start)
    }
}
