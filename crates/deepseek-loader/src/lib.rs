//! Reading checkpoints from disk: `config.json` into a [`ModelConfig`], and (sharded)
//! safetensors into memory-mapped [`deepseek_kernels::Matrix`] weights.

pub mod config;
pub mod error;
pub mod safetensors_store;
pub mod synth;

pub use config::{Family, MlaConfig, ModelConfig, MoeConfig, RopeScaling, ScoringFunc, TopkMethod};
pub use error::LoadError;
pub use safetensors_store::{TensorInfo, WeightStore};
