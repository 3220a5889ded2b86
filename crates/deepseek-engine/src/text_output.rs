//! Generated ids as text: streamed in pieces that never split a character, with stop strings
//! held back until it is clear they do not match.

use crate::tokenizer::{StreamDecoder, Tokenizer};
use crate::EngineError;

/// Generated ids as text, released in pieces that never split a character nor show the start
/// of a stop string before it is clear the stop string does not follow.
pub struct TextOutput {
    decoder: StreamDecoder,
    stop: Vec<String>,
    text: String,
    emitted: usize,
    stopped: bool,
}

impl TextOutput {
    pub fn new(stop: &[String], skip_special: bool) -> Self {
        TextOutput {
            decoder: StreamDecoder::new(skip_special),
            stop: stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds token `id`; returns the text now safe to show and whether a stop string ended the
    /// text (which is then cut before it).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<(String, bool), EngineError> {
        if self.stopped {
            return Ok((String::new(), true));
        }
        let Some(piece) = self.decoder.push(tok, id)? else {
            return Ok((String::new(), false));
        };
        // Search only where a new match can be: the new piece and a stop string's length before.
        let longest = self.stop.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.text.len().saturating_sub(longest);
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        self.text.push_str(&piece);
        if let Some(cut) = self
            .stop
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|i| from + i))
            .min()
        {
            self.text.truncate(cut.max(self.emitted));
            self.stopped = true;
            return Ok((self.flush(), true));
        }
        let safe = self.text.len() - held_back(&self.text, &self.stop);
        let out = if safe > self.emitted {
            self.text[self.emitted..safe].to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(safe);
        Ok((out, false))
    }

    /// Whatever was held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Bytes at the end of `text` that could be the start of a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut hold = 0;
    for s in stops {
        for k in (1..s.len().min(text.len() + 1)).rev() {
            if s.is_char_boundary(k) && text.ends_with(&s[..k]) {
                hold = hold.max(k);
                break;
            }
        }
    }
    // Keep the cut on a character boundary.
    while hold > 0 && !text.is_char_boundary(text.len() - hold) {
        hold += 1;
    }
    hold
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn holds_back_possible_stop_prefixes() {
        let stops = vec!["\nclass".to_string(), "END".to_string()];
        assert_eq!(held_back("abc\ncl", &stops), 3);
        assert_eq!(held_back("abcEN", &stops), 2);
        assert_eq!(held_back("abc", &stops), 0);
    }
}
