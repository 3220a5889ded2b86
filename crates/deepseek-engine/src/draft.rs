//! Draft tokens for speculative decoding: cheap guesses of what the model says next, which the
//! model then checks all at once in one forward step (see [`crate::Generator`]). A draft is
//! only ever a proposal: the output is decided by the model's own logits, token by token.

/// Where drafts come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DraftMethod {
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the last few
    /// tokens, in the prompt or the output so far. Code edits and quotes repeat long spans of
    /// their prompt, where these drafts are accepted in runs.
    Lookup,
}

impl DraftMethod {
    pub fn name(self) -> &'static str {
        match self {
            DraftMethod::Lookup => "lookup",
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
