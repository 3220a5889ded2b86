//! Model configuration for every supported family, parsed from `config.json` in either the
//! published style (`rope_theta` + `rope_scaling`) or the transformers-5 re-saved style
//! (`rope_parameters`).

use std::path::Path;

use serde_json::Value;

use crate::LoadError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `deepseek_v2`: DeepSeek-V2, V2-Lite, Coder-V2 (MLA + DeepSeekMoE, softmax router).
    DeepseekV2,
    /// `deepseek_v3`: V2.5/V3/R1-style router (sigmoid scores, bias-corrected group top-k).
    DeepseekV3,
    /// `llama`: DeepSeek LLM 7B/67B (dense, rotate-half RoPE, MHA or GQA).
    Llama,
}

impl Family {
    pub const SUPPORTED: &'static str = "deepseek_v2, deepseek_v3, llama";
    pub fn model_type(self) -> &'static str {
        match self {
            Family::DeepseekV2 => "deepseek_v2",
            Family::DeepseekV3 => "deepseek_v3",
            Family::Llama => "llama",
        }
    }
}

/// How the layers attend, with the dimensions of that kind: what the model code matches on to
/// build its attention (the family names the checkpoint; this says what to compute).
#[derive(Clone, Debug, PartialEq)]
pub enum AttentionKind {
    /// Multi-head Latent Attention (DeepSeek-V2/V3): the cache holds the latent and the RoPE key.
    Mla(MlaConfig),
    /// Llama's multi-head or grouped-query attention (DeepSeek LLM): `num_key_value_heads` key
    /// and value heads of `head_dim` each, cached in full.
    Gqa,
}

/// Multi-head Latent Attention dimensions.
#[derive(Clone, Debug, PartialEq)]
pub struct MlaConfig {
    /// `None`: queries come from `q_proj` directly (V2-Lite); else `q_a_proj → norm → q_b_proj`.
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
}

impl MlaConfig {
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }
    /// Values cached per token and layer: the latent plus the shared RoPE key.
    pub fn latent_row_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// Plain top-k over all experts.
    Greedy,
    /// V2: group score = max expert score in the group; keep `topk_group` groups.
    GroupLimitedGreedy,
    /// V3: group score = sum of the top-2 (bias-corrected) scores; keep `topk_group` groups.
    NoauxTc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
}

/// DeepSeekMoE: shared experts plus routed experts, and how tokens are routed.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub topk_method: TopkMethod,
    pub scoring_func: ScoringFunc,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
}

impl MoeConfig {
    /// Whether decoder layer `layer` uses experts (else a dense MLP), as DeepSeek's code decides.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.first_k_dense_replace && layer.is_multiple_of(self.moe_layer_freq)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// YaRN as DeepSeek-V2 uses it.
    Yarn {
        factor: f32,
        original_max_position_embeddings: usize,
        beta_fast: f32,
        beta_slow: f32,
        mscale: f32,
        mscale_all_dim: f32,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Dense MLP width (dense layers of MoE models, and every layer of Llama).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Per-head dimension for Llama attention.
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub attention: AttentionKind,
    pub moe: Option<MoeConfig>,
    pub torch_dtype: Option<String>,
    /// Multi-token-prediction modules after the main stack (DeepSeek-V3's MTP, the checkpoint's
    /// `model.layers.{num_hidden_layers}…`): each drafts one token further ahead.
    pub num_nextn_predict_layers: usize,
}

struct Fields<'a>(&'a serde_json::Map<String, Value>);

impl Fields<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }
    fn usize(&self, k: &str) -> Result<usize, LoadError> {
        self.opt_usize(k)?
            .ok_or_else(|| LoadError::config(k, "missing (a positive integer is required)"))
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>, LoadError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                LoadError::config(k, format!("expected a non-negative integer, found {v}"))
            }),
        }
    }
    fn f32_or(&self, k: &str, d: f32) -> Result<f32, LoadError> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| LoadError::config(k, format!("expected a number, found {v}"))),
        }
    }
    fn bool_or(&self, k: &str, d: bool) -> Result<bool, LoadError> {
        match self.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| LoadError::config(k, format!("expected true or false, found {v}"))),
        }
    }
    fn str(&self, k: &str) -> Option<&str> {
        self.get(k).and_then(|v| v.as_str())
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|e| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| LoadError::Parse {
            path: path.to_path_buf(),
            msg: format!("invalid JSON: {e}"),
        })?;
        Self::from_json(&v)
    }

    pub fn from_json(v: &Value) -> Result<Self, LoadError> {
        let obj = v
            .as_object()
            .ok_or_else(|| LoadError::config("(root)", "config.json must be a JSON object"))?;
        let f = Fields(obj);
        let family = match f.str("model_type") {
            Some("deepseek_v2") => Family::DeepseekV2,
            Some("deepseek_v3") => Family::DeepseekV3,
            Some("llama") => Family::Llama,
            Some(other) => {
                return Err(LoadError::config(
                    "model_type",
                    format!(
                        "`{other}` is not supported; supported: {}",
                        Family::SUPPORTED
                    ),
                ))
            }
            None => {
                return Err(LoadError::config(
                    "model_type",
                    format!("missing; supported: {}", Family::SUPPORTED),
                ))
            }
        };
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(LoadError::config(
                "num_attention_heads",
                "must be at least 1",
            ));
        }
        let num_key_value_heads = f
            .opt_usize("num_key_value_heads")?
            .unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(LoadError::config(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} must divide num_attention_heads ({num_attention_heads})"
                ),
            ));
        }

        // RoPE: published style has rope_theta + rope_scaling; transformers 5 folds both into
        // rope_parameters (with rope_type instead of type).
        let rope_obj = f.get("rope_parameters").or_else(|| f.get("rope_scaling"));
        let mut rope_theta = f.f32_or("rope_theta", 10000.0)?;
        let mut rope_scaling = RopeScaling::None;
        if let Some(r) = rope_obj {
            let field = if f.get("rope_parameters").is_some() {
                "rope_parameters"
            } else {
                "rope_scaling"
            };
            let ro = r
                .as_object()
                .ok_or_else(|| LoadError::config(field, "expected an object"))?;
            let rf = Fields(ro);
            if rf.get("rope_theta").is_some() {
                rope_theta = rf.f32_or("rope_theta", rope_theta)?;
            }
            let kind = rf
                .str("rope_type")
                .or_else(|| rf.str("type"))
                .unwrap_or("default");
            let factor = rf.f32_or("factor", 1.0)?;
            rope_scaling = match kind {
                "default" => RopeScaling::None,
                "linear" => RopeScaling::Linear { factor },
                "yarn" => RopeScaling::Yarn {
                    factor,
                    original_max_position_embeddings: rf
                        .opt_usize("original_max_position_embeddings")?
                        .unwrap_or(4096),
                    beta_fast: rf.f32_or("beta_fast", 32.0)?,
                    beta_slow: rf.f32_or("beta_slow", 1.0)?,
                    mscale: rf.f32_or("mscale", 1.0)?,
                    mscale_all_dim: rf.f32_or("mscale_all_dim", 0.0)?,
                },
                other => {
                    return Err(LoadError::config(
                        &format!("{field}.type"),
                        format!("`{other}` is not supported; supported: default, linear, yarn"),
                    ))
                }
            };
        }

        let (mla, moe) = if family == Family::Llama {
            (None, None)
        } else {
            let mla = MlaConfig {
                // 0 and null both mean "no query compression" (llama.cpp's converter needs 0).
                q_lora_rank: f.opt_usize("q_lora_rank")?.filter(|&r| r > 0),
                kv_lora_rank: f.usize("kv_lora_rank")?,
                qk_nope_head_dim: f.usize("qk_nope_head_dim")?,
                qk_rope_head_dim: f.usize("qk_rope_head_dim")?,
                v_head_dim: f.usize("v_head_dim")?,
            };
            if !mla.qk_rope_head_dim.is_multiple_of(2) {
                return Err(LoadError::config(
                    "qk_rope_head_dim",
                    format!("{} must be even", mla.qk_rope_head_dim),
                ));
            }
            let moe = match f.opt_usize("n_routed_experts")? {
                None | Some(0) => None,
                Some(n_routed) => {
                    let topk_method = match f.str("topk_method").unwrap_or("greedy") {
                        "greedy" => TopkMethod::Greedy,
                        "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
                        "noaux_tc" => TopkMethod::NoauxTc,
                        other => {
                            return Err(LoadError::config(
                                "topk_method",
                                format!("`{other}` is not supported; supported: greedy, group_limited_greedy, noaux_tc"),
                            ))
                        }
                    };
                    let default_scoring = if family == Family::DeepseekV3 {
                        "sigmoid"
                    } else {
                        "softmax"
                    };
                    let scoring_func = match f.str("scoring_func").unwrap_or(default_scoring) {
                        "softmax" => ScoringFunc::Softmax,
                        "sigmoid" => ScoringFunc::Sigmoid,
                        other => {
                            return Err(LoadError::config(
                                "scoring_func",
                                format!("`{other}` is not supported; supported: softmax, sigmoid"),
                            ))
                        }
                    };
                    let m = MoeConfig {
                        n_routed_experts: n_routed,
                        n_shared_experts: f.opt_usize("n_shared_experts")?.unwrap_or(0),
                        num_experts_per_tok: f.usize("num_experts_per_tok")?,
                        moe_intermediate_size: f.usize("moe_intermediate_size")?,
                        first_k_dense_replace: f.opt_usize("first_k_dense_replace")?.unwrap_or(0),
                        moe_layer_freq: f.opt_usize("moe_layer_freq")?.unwrap_or(1).max(1),
                        n_group: f.opt_usize("n_group")?.unwrap_or(1).max(1),
                        topk_group: f.opt_usize("topk_group")?.unwrap_or(1).max(1),
                        topk_method,
                        scoring_func,
                        norm_topk_prob: f.bool_or("norm_topk_prob", false)?,
                        routed_scaling_factor: f.f32_or("routed_scaling_factor", 1.0)?,
                    };
                    if m.num_experts_per_tok == 0 || m.num_experts_per_tok > n_routed {
                        return Err(LoadError::config(
                            "num_experts_per_tok",
                            format!(
                                "{} must be between 1 and n_routed_experts ({n_routed})",
                                m.num_experts_per_tok
                            ),
                        ));
                    }
                    if n_routed % m.n_group != 0 {
                        return Err(LoadError::config(
                            "n_group",
                            format!("{} must divide n_routed_experts ({n_routed})", m.n_group),
                        ));
                    }
                    if m.topk_group > m.n_group {
                        return Err(LoadError::config(
                            "topk_group",
                            format!("{} must not exceed n_group ({})", m.topk_group, m.n_group),
                        ));
                    }
                    if m.topk_method != TopkMethod::Greedy
                        && m.topk_group * (n_routed / m.n_group) < m.num_experts_per_tok
                    {
                        return Err(LoadError::config(
                            "topk_group",
                            "the kept groups hold fewer experts than num_experts_per_tok",
                        ));
                    }
                    Some(m)
                }
            };
            (Some(mla), moe)
        };

        let head_dim = match &mla {
            None => f
                .opt_usize("head_dim")?
                .unwrap_or(hidden_size / num_attention_heads),
            Some(m) => m.qk_head_dim(),
        };
        let eos_token_ids = match f.get("eos_token_id") {
            None => vec![],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|x| x as u32))
                .collect(),
            Some(v) => v.as_u64().map(|x| vec![x as u32]).ok_or_else(|| {
                LoadError::config(
                    "eos_token_id",
                    format!("expected an integer or a list, found {v}"),
                )
            })?,
        };
        let cfg = ModelConfig {
            family,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.f32_or("rms_norm_eps", 1e-6)?,
            max_position_embeddings: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            tie_word_embeddings: f.bool_or("tie_word_embeddings", false)?,
            rope_theta,
            rope_scaling,
            bos_token_id: f.opt_usize("bos_token_id")?.map(|x| x as u32),
            eos_token_ids,
            attention: mla.map_or(AttentionKind::Gqa, AttentionKind::Mla),
            moe,
            torch_dtype: f
                .str("torch_dtype")
                .or_else(|| f.str("dtype"))
                .map(str::to_string),
            num_nextn_predict_layers: f.opt_usize("num_nextn_predict_layers")?.unwrap_or(0),
        };
        if cfg.vocab_size == 0 || cfg.hidden_size == 0 || cfg.num_hidden_layers == 0 {
            return Err(LoadError::config(
                "vocab_size/hidden_size/num_hidden_layers",
                "must all be positive",
            ));
        }
        if family == Family::Llama && !cfg.head_dim.is_multiple_of(2) {
            return Err(LoadError::config("head_dim", "must be even"));
        }
        Ok(cfg)
    }

    /// Dimension RoPE rotates per head: the shared RoPE part for MLA, the whole head for Llama.
    pub fn rope_dim(&self) -> usize {
        match &self.attention {
            AttentionKind::Mla(m) => m.qk_rope_head_dim,
            AttentionKind::Gqa => self.head_dim,
        }
    }

    /// The MLA dimensions, for a model whose layers run MLA.
    pub fn mla(&self) -> Option<&MlaConfig> {
        match &self.attention {
            AttentionKind::Mla(m) => Some(m),
            AttentionKind::Gqa => None,
        }
    }

    /// f32 values cached per token and layer: latent + RoPE key for MLA, K and V for Llama.
    pub fn cache_row_width(&self) -> usize {
        match &self.attention {
            AttentionKind::Mla(m) => m.latent_row_width(),
            AttentionKind::Gqa => 2 * self.num_key_value_heads * self.head_dim,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v2_lite() -> Value {
        json!({"model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944,
            "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16, "kv_lora_rank": 512,
            "q_lora_rank": null, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
            "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6, "moe_intermediate_size": 1408,
            "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "topk_method": "greedy",
            "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}, "eos_token_id": 100001})
    }

    #[test]
    fn parses_published_v2_lite() {
        let c = ModelConfig::from_json(&v2_lite()).unwrap();
        assert_eq!(c.cache_row_width(), 576);
        assert!(matches!(c.rope_scaling, RopeScaling::Yarn { factor, .. } if factor == 40.0));
        assert!(
            !c.moe.as_ref().unwrap().is_moe_layer(0) && c.moe.as_ref().unwrap().is_moe_layer(1)
        );
        assert_eq!(c.eos_token_ids, vec![100001]);
    }

    #[test]
    fn parses_transformers5_rope_parameters() {
        let mut v = v2_lite();
        let o = v.as_object_mut().unwrap();
        let mut rp = o.remove("rope_scaling").unwrap();
        rp["rope_type"] = json!("yarn");
        rp["rope_theta"] = json!(50000.0);
        o.remove("rope_theta");
        o.insert("rope_parameters".into(), rp);
        o.insert("head_dim".into(), json!(64));
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 50000.0);
        assert!(matches!(c.rope_scaling, RopeScaling::Yarn { .. }));
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = v2_lite();
        v["model_type"] = json!("mixtral");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("model_type") && e.contains("deepseek_v2"), "{e}");
        let mut v = v2_lite();
        v["n_group"] = json!(5);
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("n_group"), "{e}");
        let mut v = v2_lite();
        v.as_object_mut().unwrap().remove("kv_lora_rank");
        let e = ModelConfig::from_json(&v).unwrap_err().to_string();
        assert!(e.contains("kv_lora_rank"), "{e}");
    }
}
