//! The model's tokenizer (`tokenizer.json` via the `tokenizers` crate, with the Oniguruma regex
//! backend the DeepSeek-V3 pre-tokenizer's look-ahead needs), plus `tokenizer_config.json`:
//! BOS/EOS, `add_bos_token`, and the chat template.

use std::path::Path;

use serde_json::Value;

use crate::EngineError;

/// DeepSeek-Coder's fill-in-the-middle tokens.
pub const FIM_BEGIN: &str = "<｜fim▁begin｜>";
pub const FIM_HOLE: &str = "<｜fim▁hole｜>";
pub const FIM_END: &str = "<｜fim▁end｜>";

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_bos_token: bool,
    pub chat_template: Option<String>,
}

fn token_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o
            .get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Reads `dir/tokenizer.json` and, when present, `dir/tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, EngineError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(EngineError::File {
                path,
                msg: "not found (the model folder needs its tokenizer.json)".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| EngineError::File {
            path: path.clone(),
            msg: format!("cannot read tokenizer: {e}"),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Value = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::File {
                path: cfg_path.clone(),
                msg: e.to_string(),
            })?;
            serde_json::from_str(&text).map_err(|e| EngineError::File {
                path: cfg_path.clone(),
                msg: format!("invalid JSON: {e}"),
            })?
        } else {
            Value::Null
        };
        let chat_template = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: use "default".
            Some(Value::Array(a)) => a
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            _ => {
                let jinja = dir.join("chat_template.jinja");
                jinja
                    .exists()
                    .then(|| std::fs::read_to_string(jinja).ok())
                    .flatten()
            }
        };
        Ok(Self::new(
            inner,
            token_content(cfg.get("bos_token")),
            token_content(cfg.get("eos_token")),
            cfg.get("add_bos_token")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            chat_template,
        ))
    }

    /// The tokenizer of a model path: `tokenizer.json` in a Hugging Face folder, or the
    /// metadata of a GGUF file.
    pub fn from_model_path(path: &Path) -> Result<Self, EngineError> {
        let gguf = deepseek_loader::gguf_path(path).map_err(|e| EngineError::File {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        match gguf {
            Some(g) => {
                let file =
                    deepseek_loader::gguf::GgufFile::open(&g).map_err(|e| EngineError::File {
                        path: g.clone(),
                        msg: e.to_string(),
                    })?;
                Self::from_gguf(&file)
            }
            None => Self::from_dir(path),
        }
    }

    /// Whether `path` has a tokenizer we can read.
    pub fn exists_at(path: &Path) -> bool {
        match deepseek_loader::gguf_path(path) {
            // A GGUF file without tokenizer metadata runs on token ids, as a folder without
            // tokenizer.json does; a file that cannot be opened says why when it loads.
            Ok(Some(p)) => deepseek_loader::gguf::GgufFile::open(&p)
                .map_or(true, |g| g.get("tokenizer.ggml.model").is_some()),
            _ => path.join("tokenizer.json").exists(),
        }
    }

    /// The tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(g: &deepseek_loader::gguf::GgufFile) -> Result<Self, EngineError> {
        let parts = crate::gguf_tokenizer::tokenizer_parts(g)?;
        let inner: tokenizers::Tokenizer =
            serde_json::from_value(parts.tokenizer_json).map_err(|e| EngineError::File {
                path: g.path.clone(),
                msg: format!("cannot build the tokenizer from its metadata: {e}"),
            })?;
        Ok(Self::new(
            inner,
            parts.bos_token,
            parts.eos_token,
            parts.add_bos_token,
            parts.chat_template,
        ))
    }

    pub fn new(
        inner: tokenizers::Tokenizer,
        bos_token: Option<String>,
        eos_token: Option<String>,
        add_bos_token: bool,
        chat_template: Option<String>,
    ) -> Self {
        let bos_id = bos_token.as_deref().and_then(|t| inner.token_to_id(t));
        let eos_id = eos_token.as_deref().and_then(|t| inner.token_to_id(t));
        Tokenizer {
            inner,
            bos_token,
            eos_token,
            bos_id,
            eos_id,
            add_bos_token,
            chat_template,
        }
    }

    /// Token ids of `text`; BOS first when the tokenizer config says `add_bos_token` and
    /// `add_special` is set. Special tokens written in the text are recognised.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, EngineError> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && self.add_bos_token {
            if let Some(b) = self.bos_id {
                ids.push(b);
            }
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// `Some(n)` when `text` surely has more than `limit` tokens (at least `n`), found without
    /// encoding all of it: pieces of 16 KiB, cut at a space or newline, are encoded in turn
    /// until their count, less what a cut can add (a few tokens merged across it), passes
    /// `limit`. `None` when it may fit: encode it whole. A server uses this so a prompt of
    /// megabytes costs what its first `limit` tokens cost, not a full encoding's time and memory.
    pub fn tokens_beyond(&self, text: &str, limit: usize) -> Result<Option<usize>, EngineError> {
        const PIECE: usize = 16 << 10;
        // Tokens a cut can add: pre-tokens split in two, a special token cut where no space is.
        const PER_CUT: usize = 16;
        // Each token covers at least one byte of the text.
        if text.len() <= limit {
            return Ok(None);
        }
        let (mut count, mut cuts, mut rest) = (0usize, 0usize, text);
        while !rest.is_empty() {
            let mut end = rest.len();
            if end > PIECE {
                let mut b = PIECE;
                while !rest.is_char_boundary(b) {
                    b -= 1;
                }
                end = match rest[..b].rfind([' ', '\n']) {
                    Some(i) if i > 0 => i,
                    _ => b,
                };
                cuts += 1;
            }
            count += self
                .inner
                .encode(&rest[..end], false)
                .map_err(|e| EngineError::Tokenizer(e.to_string()))?
                .len();
            let sure = count.saturating_sub(cuts * PER_CUT);
            if sure > limit {
                return Ok(Some(sure));
            }
            rest = &rest[end..];
        }
        Ok(None)
    }

    /// A fill-in-the-middle prompt in DeepSeek-Coder's prefix-suffix-middle form:
    /// `[BOS] <｜fim▁begin｜> prefix <｜fim▁hole｜> suffix <｜fim▁end｜>`; the model then writes the
    /// middle (and EOS). `None` when this tokenizer has no FIM tokens.
    pub fn encode_fim(&self, prefix: &str, suffix: &str) -> Result<Option<Vec<u32>>, EngineError> {
        let fim = [FIM_BEGIN, FIM_HOLE, FIM_END].map(|t| self.token_to_id(t));
        let [Some(begin), Some(hole), Some(end)] = fim else {
            return Ok(None);
        };
        let mut ids: Vec<u32> = self
            .bos_id
            .filter(|_| self.add_bos_token)
            .into_iter()
            .collect();
        ids.push(begin);
        ids.extend(self.encode(prefix, false)?);
        ids.push(hole);
        ids.extend(self.encode(suffix, false)?);
        ids.push(end);
        Ok(Some(ids))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, EngineError> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The bytes each token id stands for (None for special tokens, which are not text), for
    /// constraints that check output byte by byte (JSON mode).
    pub fn token_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let byte_level = serde_json::to_string(&self.inner.get_decoder())
            .map(|s| s.contains("ByteLevel"))
            .unwrap_or(false);
        let unicode_to_byte: std::collections::HashMap<char, u8> = gpt2_byte_chars()
            .into_iter()
            .enumerate()
            .map(|(b, c)| (c, b as u8))
            .collect();
        let specials: std::collections::HashSet<u32> = self
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, _)| id)
            .collect();
        (0..self.vocab_size() as u32)
            .map(|id| {
                if specials.contains(&id) {
                    return None;
                }
                let piece = self.inner.id_to_token(id)?;
                if byte_level {
                    if let Some(bytes) = piece
                        .chars()
                        .map(|c| unicode_to_byte.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                    {
                        return Some(bytes);
                    }
                }
                // SentencePiece-style byte tokens.
                if piece.len() == 6 && piece.starts_with("<0x") && piece.ends_with('>') {
                    if let Ok(b) = u8::from_str_radix(&piece[3..5], 16) {
                        return Some(vec![b]);
                    }
                }
                if !byte_level {
                    return Some(piece.replace('\u{2581}', " ").into_bytes());
                }
                self.inner.decode(&[id], false).ok().map(|s| s.into_bytes())
            })
            .collect()
    }
}

/// GPT-2's byte-to-character table of byte-level BPE: printable bytes stand for themselves,
/// the rest map to U+0100 onwards in byte order.
fn gpt2_byte_chars() -> Vec<char> {
    let mut n = 0;
    (0..=255u32)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
            if printable {
                char::from_u32(b).unwrap_or('?')
            } else {
                n += 1;
                char::from_u32(255 + n).unwrap_or('?')
            }
        })
        .collect()
}

/// Turns a stream of token ids into text pieces that never split a UTF-8 character: a piece is
/// released only once the bytes decoded so far form complete characters.
pub struct StreamDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special: bool,
}

impl StreamDecoder {
    pub fn new(skip_special: bool) -> Self {
        StreamDecoder {
            ids: vec![],
            prefix_offset: 0,
            read_offset: 0,
            skip_special,
        }
    }

    /// Adds one token; returns the new text it completes, if any.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>, EngineError> {
        self.ids.push(id);
        // Decode with some context before, so tokenizers that strip leading spaces behave.
        let before = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special,
        )?;
        let after = tok.decode(&self.ids[self.prefix_offset..], self.skip_special)?;
        if after.len() > before.len()
            && !after.ends_with('\u{FFFD}')
            && after.is_char_boundary(before.len())
        {
            let piece = after[before.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(Some(piece))
        } else {
            Ok(None)
        }
    }
}
