//! What the subcommands share: finding the model, loading it with a progress bar, parsing ids.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use deepseek_engine::{ChatTemplate, Tokenizer};
use deepseek_loader::hf_cache::{self, ModelId};
use deepseek_model::Model;

use crate::expert_parallel::Cluster;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum CacheType {
    #[default]
    F32,
    Bf16,
    Q8,
}

impl CacheType {
    pub fn dtype(self) -> deepseek_cache::CacheDtype {
        match self {
            CacheType::F32 => deepseek_cache::CacheDtype::F32,
            CacheType::Bf16 => deepseek_cache::CacheDtype::Bf16,
            CacheType::Q8 => deepseek_cache::CacheDtype::Q8,
        }
    }
}

/// What the global flags set for the commands that load a model, passed to each explicitly.
#[derive(Clone, Default)]
pub struct Settings {
    /// `--cache-type`: how caches store rows.
    pub cache: CacheType,
    /// `--bf16-activations`, `DEEPSEEK_BF16_ACTIVATIONS`, `DEEPSEEK_EXACT_ACTIVATIONS`: how
    /// activations meet the weights.
    pub precision: deepseek_kernels::Precision,
    /// `--expert-parallel`: the ranks the routed experts are split across (this is rank 0).
    pub experts: Option<Arc<Cluster>>,
    /// `--expert-placement`: which rank holds which routed expert.
    pub expert_placement: deepseek_model::expert_parallel::PlacementPolicy,
    /// `--device`: where the model runs.
    pub device: deepseek_cuda::Device,
}

/// The model bundled in the repo, used when --model is not given.
pub const BUNDLED_MODEL: &str = "models/deepseek-coder-nano";

#[derive(clap::Args, Clone)]
pub struct ModelArg {
    /// Model: a Hugging Face folder (config.json, *.safetensors, tokenizer.json), a GGUF file
    /// (llama.cpp's `deepseek2` or `llama` architecture), or a Hub id ORG/NAME[@REVISION] already
    /// downloaded to the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
    /// ~/.cache/huggingface/hub; nothing is downloaded). Default: the bundled model,
    /// models/deepseek-coder-nano.
    #[arg(
        long,
        short = 'm',
        value_name = "PATH|ORG/NAME",
        env = "DEEPSEEK_MODEL"
    )]
    pub model: Option<PathBuf>,
}

impl ModelArg {
    /// The folder to use: --model, else the bundled model (looked up from the current
    /// directory, then from where the binary was built).
    pub fn dir(&self) -> Result<PathBuf> {
        let dir = match &self.model {
            Some(p) => p.clone(),
            None => {
                let here = PathBuf::from(BUNDLED_MODEL);
                let built = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../..")
                    .join(BUNDLED_MODEL);
                if here.exists() {
                    here
                } else if built.exists() {
                    built
                } else {
                    bail!("no --model given and the bundled model {BUNDLED_MODEL} is not here; pass --model PATH")
                }
            }
        };
        if dir.exists() {
            return Ok(dir);
        }
        // Not a path here: a Hub id (`ORG/NAME[@REV]`) is looked up in the Hugging Face cache,
        // offline.
        let Some(id) = dir.to_str().and_then(ModelId::parse) else {
            bail!("model {} does not exist", dir.display());
        };
        let Some(cache) = hf_cache::hub_cache_dir(&|k| std::env::var(k).ok()) else {
            bail!("model `{id}` is not a path here, and there is no Hugging Face cache to look in (set HF_HUB_CACHE or HF_HOME)");
        };
        hf_cache::resolve(&id, &cache).map_err(anyhow::Error::msg)
    }

    /// What to call the model (the server's model id, eval reports): the repository's name for
    /// a Hub id, else the folder's or file's name without extension.
    pub fn name(&self) -> String {
        let given = self.model.as_deref().and_then(|p| p.to_str());
        if let Some(id) = given.and_then(ModelId::parse) {
            if !Path::new(given.unwrap_or_default()).exists() {
                return id.name;
            }
        }
        self.dir()
            .ok()
            .and_then(|d| d.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "deepseek".into())
    }
}

/// Loads the model at `dir` (a progress bar on a terminal), its cache rows stored as `cache`
/// (the global `--cache-type`).
pub fn load_model(dir: &Path, s: &Settings) -> Result<Arc<Model>> {
    let config = dir.join("config.json");
    if deepseek_loader::gguf_path(dir)?.is_none() && !config.exists() {
        bail!(
            "{}: not found (is {} a Hugging Face model folder or a GGUF file?)",
            config.display(),
            dir.display()
        );
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading {msg} [{bar:30}] {pos}/{len} layers {elapsed}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    bar.set_message(dir.display().to_string());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let model = match &s.experts {
        None => Model::load(dir, &mut progress),
        Some(cluster) => {
            let (config, store) = deepseek_loader::open_checkpoint(dir)
                .with_context(|| format!("loading {}", dir.display()))?;
            let ep = cluster.leader(&config)?;
            let model = Model::from_store_with_experts(config, &store, &mut progress, ep)
                .with_context(|| format!("loading {}", dir.display()))?;
            if let Some(ep) = model.expert_parallel() {
                ep.check_followers(model.weights_fingerprint)
                    .map_err(|e| anyhow::anyhow!("--expert-parallel: {e}"))?;
                let held = ep.placement().experts_of(0).len();
                tracing::info!(ranks = ep.ranks(), held, "expert parallel");
            }
            Ok(model)
        }
    }
    .with_context(|| format!("loading {}", dir.display()))?;
    bar.finish_and_clear();
    Ok(Arc::new(model.with_precision(s.precision)))
}

pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer> {
    Ok(Tokenizer::from_model_path(dir)?)
}

/// The tokenizer when the model has one (a model can run on ids alone).
pub fn maybe_tokenizer(dir: &Path) -> Result<Option<Arc<Tokenizer>>> {
    if Tokenizer::exists_at(dir) {
        Ok(Some(Arc::new(load_tokenizer(dir)?)))
    } else {
        Ok(None)
    }
}

pub fn chat_template(tok: &Tokenizer, dir: &Path) -> Result<ChatTemplate> {
    let Some(src) = &tok.chat_template else {
        bail!(
            "{}: no chat_template in tokenizer_config.json (and no chat_template.jinja)",
            dir.display()
        );
    };
    Ok(ChatTemplate::new(
        src,
        tok.bos_token.as_deref().unwrap_or(""),
        tok.eos_token.as_deref().unwrap_or(""),
    )?)
}

/// "0,5,7" or "0 5 7" → ids, each checked against the vocabulary.
pub fn parse_token_ids(s: &str, vocab: usize) -> Result<Vec<u32>> {
    let mut ids = vec![];
    for part in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let id: u64 = part
            .parse()
            .with_context(|| format!("--token-ids: `{part}` is not a non-negative integer"))?;
        if id >= vocab as u64 {
            bail!("--token-ids: token id {id} is out of range: the vocabulary has {vocab} tokens (ids 0..{})", vocab - 1);
        }
        ids.push(id as u32);
    }
    if ids.is_empty() {
        bail!("--token-ids: no ids given (expected a list like 0,5,7)");
    }
    Ok(ids)
}

/// The kernels' instruction-set tier for `info` and `bench`: the one in use, and the host's
/// best where a cap (`--isa`, `DEEPSEEK_ISA`) keeps the kernels below it.
pub fn tier_line(s: Settings) -> String {
    use deepseek_kernels::tier;
    let (active, host) = (tier::active(), tier::host());
    let mut line = if active == host {
        format!("{active} tier")
    } else {
        format!("{active} tier (capped; this CPU has {host})")
    };
    if s.precision.rounds_bf16() {
        line += ", bf16 activations for bf16 weights";
    }
    let overrides = deepseek_kernels::tuning::get().overrides();
    if !overrides.is_empty() {
        line += &format!(", tuning {}", overrides.join(" "));
    }
    line
}
