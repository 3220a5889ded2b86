//! What turns a model into a text generator: the tokenizer (with streaming detokenization), chat
//! templates, sampling, and the generation loop.

pub mod chat_template;
pub mod draft;
pub mod generate;
pub mod gguf_tokenizer;
pub mod imatrix;
pub mod json_mode;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod sequence;
pub mod text_output;
pub mod tokenizer;

pub use chat_template::ChatTemplate;
pub use draft::{DraftMethod, DraftOptions};
pub use generate::{GenerateOptions, Generated, Generator};
pub use sampler::{Sampler, SamplingParams};
pub use sequence::{Accepted, Failure, FinishReason, Limits, SequenceState};
pub use text_output::TextOutput;
pub use tokenizer::{StreamDecoder, Tokenizer};

/// Errors from the engine layer, each naming what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {msg}")]
    File {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(transparent)]
    Model(#[from] deepseek_model::ModelError),
    #[error("{0}")]
    Input(String),
    /// A failure of the engine itself (a token the tokenizer cannot decode).
    #[error("{0}")]
    Internal(String),
}
