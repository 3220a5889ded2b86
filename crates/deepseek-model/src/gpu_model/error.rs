//! What the GPU path refuses or meets, each said in one line.

use deepseek_cuda::CudaError;

/// Rows per cache block, as the CPU's pool.
pub const BLOCK_TOKENS: usize = deepseek_cache::BLOCK_TOKENS;

#[derive(Debug, thiserror::Error)]
pub enum GpuModelError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error("the GPU path does not run this model yet: {0}")]
    Unsupported(String),
    #[error("token id {id} is out of range: the vocabulary has {vocab} tokens")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(
        "position {pos} is beyond the model's context of {max} tokens (max_position_embeddings)"
    )]
    ContextExceeded { pos: usize, max: usize },
    #[error(
        "the GPU cache is full: {needed} more blocks of {BLOCK_TOKENS} tokens needed, {free} free"
    )]
    OutOfBlocks { needed: usize, free: usize },
}

pub type Result<T> = std::result::Result<T, GpuModelError>;
