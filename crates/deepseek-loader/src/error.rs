use std::path::PathBuf;

/// Everything that can go wrong reading a checkpoint. Each variant names the file, field or
/// tensor, so the CLI can print one line a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("config.json field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("tensor `{name}` not found in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {dtype}; supported: F32, BF16, F16, F8_E4M3 (with scales), and GGUF's Q8_0, Q4_0, Q4_1, Q5_0, Q4_K, Q5_K, Q6_K")]
    Dtype { name: String, dtype: String },
}

impl LoadError {
    pub fn config(field: &str, msg: impl Into<String>) -> Self {
        LoadError::Config {
            field: field.to_string(),
            msg: msg.into(),
        }
    }
}
