//! Reading checkpoints from disk: `config.json` into a [`ModelConfig`], and (sharded)
//! safetensors into memory-mapped [`deepseek_kernels::Matrix`] weights.

pub mod config;
pub mod error;
pub mod gguf;
pub mod gguf_export;
pub mod gguf_mix;
pub mod gguf_model;
pub mod gguf_split;
pub mod gguf_writer;
pub mod hf_cache;
pub mod imatrix;
pub mod safetensors_store;
pub mod synth;

pub use config::{
    AttentionKind, Family, MlaConfig, ModelConfig, MoeConfig, RopeScaling, ScoringFunc, TopkMethod,
};
pub use error::LoadError;
pub use safetensors_store::{TensorInfo, TensorType, WeightStore};

use std::path::{Path, PathBuf};

/// The checkpoint at `path`: a Hugging Face folder (config.json + safetensors), a `.gguf` file,
/// or a folder holding one `.gguf` file and no config.json.
pub fn open_checkpoint(path: &Path) -> Result<(ModelConfig, WeightStore), LoadError> {
    match gguf_path(path)? {
        Some(g) => gguf_model::open(&g),
        None => {
            let config = ModelConfig::from_file(&path.join("config.json"))?;
            Ok((config, WeightStore::open(path)?))
        }
    }
}

/// The GGUF file `path` names, if it names one.
pub fn gguf_path(path: &Path) -> Result<Option<PathBuf>, LoadError> {
    if path.is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    if path.join("config.json").exists() {
        return Ok(None);
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    // The parts of one split model (NAME-0000k-of-0000N.gguf): its first part.
    let first_part = gguf_split::first_of_one_split(&ggufs);
    match ggufs.len() {
        0 => Ok(None),
        1 => Ok(ggufs.into_iter().next()),
        _ if first_part.is_some() => Ok(first_part),
        n => Err(LoadError::Parse {
            path: path.to_path_buf(),
            msg: format!("{n} .gguf files and no config.json: pass the file itself as --model"),
        }),
    }
}
