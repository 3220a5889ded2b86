//! Synthetic checkpoints: the real shapes of published DeepSeek models with random weights, in
//! the published Hugging Face layout (config.json + sharded safetensors + index). Speed measured
//! on them is real; text is not.

use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::{json, Value};

use crate::{LoadError, ModelConfig};

/// Published shapes, as their config.json files give them.
pub fn preset(name: &str) -> Option<Value> {
    let yarn = json!({"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                      "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1});
    let lite = json!({
        "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 102400,
        "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
        "routed_scaling_factor": 1.0, "kv_lora_rank": 512, "q_lora_rank": null, "qk_rope_head_dim": 64,
        "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
        "num_experts_per_tok": 6, "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": false,
        "scoring_func": "softmax", "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
        "rope_scaling": yarn, "bos_token_id": 100000, "eos_token_id": 100001, "tie_word_embeddings": false,
        "torch_dtype": "bfloat16"});
    Some(match name {
        "v2-lite" => lite,
        "coder-v2-lite" => {
            let mut v = lite;
            v["max_position_embeddings"] = json!(163840);
            v
        }
        "v2" => {
            let mut v = lite;
            for (k, x) in [
                ("hidden_size", json!(5120)),
                ("intermediate_size", json!(12288)),
                ("moe_intermediate_size", json!(1536)),
                ("num_hidden_layers", json!(60)),
                ("num_attention_heads", json!(128)),
                ("num_key_value_heads", json!(128)),
                ("n_routed_experts", json!(160)),
                ("routed_scaling_factor", json!(16.0)),
                ("q_lora_rank", json!(1536)),
                ("topk_method", json!("group_limited_greedy")),
                ("n_group", json!(8)),
                ("topk_group", json!(3)),
            ] {
                v[k] = x;
            }
            v
        }
        "v3" => json!({
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
            "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
            "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
            "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
            "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4,
            "num_experts_per_tok": 8, "moe_layer_freq": 1, "first_k_dense_replace": 3, "norm_topk_prob": true,
            "scoring_func": "sigmoid", "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
            "rope_scaling": {"type": "yarn", "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                             "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1},
            "num_nextn_predict_layers": 1,
            "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}),
        // DeepSeek-V3's vocabulary and router on toy dimensions: with the real V3 tokenizer
        // (`--tokenizer`) it exercises chat templates, tool calls and serving in seconds.
        "v3-tiny" => json!({
            "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
            "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 2, "n_shared_experts": 1, "n_routed_experts": 8,
            "routed_scaling_factor": 2.5, "kv_lora_rank": 32, "q_lora_rank": 48, "qk_rope_head_dim": 16,
            "v_head_dim": 16, "qk_nope_head_dim": 16, "topk_method": "noaux_tc", "n_group": 2, "topk_group": 1,
            "num_experts_per_tok": 2, "moe_layer_freq": 1, "first_k_dense_replace": 1, "norm_topk_prob": true,
            "scoring_func": "sigmoid", "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 10000,
            "bos_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": false, "torch_dtype": "bfloat16"}),
        _ => return None,
    })
}

pub const PRESETS: &str = "v2-lite, coder-v2-lite, v2, v3, v3-tiny";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthDtype {
    F32,
    BF16,
}

/// Every tensor of a checkpoint with `cfg`'s shapes, in the published names and order (with the
/// first multi-token-prediction module where the config has one, as V3's files do, without
/// their copies of the embedding and head).
pub fn tensor_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut v = vec![];
    let (h, hid) = (cfg.num_attention_heads, cfg.hidden_size);
    v.push((
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, hid],
    ));
    let mtp = cfg.num_nextn_predict_layers > 0;
    for i in 0..cfg.num_hidden_layers + usize::from(mtp) {
        let p = format!("model.layers.{i}");
        if i == cfg.num_hidden_layers {
            v.push((format!("{p}.enorm.weight"), vec![hid]));
            v.push((format!("{p}.hnorm.weight"), vec![hid]));
            v.push((format!("{p}.eh_proj.weight"), vec![hid, 2 * hid]));
            v.push((format!("{p}.shared_head.norm.weight"), vec![hid]));
        }
        v.push((format!("{p}.input_layernorm.weight"), vec![hid]));
        v.push((format!("{p}.post_attention_layernorm.weight"), vec![hid]));
        match cfg.mla() {
            Some(m) => {
                let a = format!("{p}.self_attn");
                match m.q_lora_rank {
                    None => v.push((format!("{a}.q_proj.weight"), vec![h * m.qk_head_dim(), hid])),
                    Some(r) => {
                        v.push((format!("{a}.q_a_proj.weight"), vec![r, hid]));
                        v.push((format!("{a}.q_a_layernorm.weight"), vec![r]));
                        v.push((format!("{a}.q_b_proj.weight"), vec![h * m.qk_head_dim(), r]));
                    }
                }
                v.push((
                    format!("{a}.kv_a_proj_with_mqa.weight"),
                    vec![m.kv_lora_rank + m.qk_rope_head_dim, hid],
                ));
                v.push((format!("{a}.kv_a_layernorm.weight"), vec![m.kv_lora_rank]));
                v.push((
                    format!("{a}.kv_b_proj.weight"),
                    vec![h * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank],
                ));
                v.push((format!("{a}.o_proj.weight"), vec![hid, h * m.v_head_dim]));
            }
            None => {
                let (kvh, hd) = (cfg.num_key_value_heads, cfg.head_dim);
                let a = format!("{p}.self_attn");
                v.push((format!("{a}.q_proj.weight"), vec![h * hd, hid]));
                v.push((format!("{a}.k_proj.weight"), vec![kvh * hd, hid]));
                v.push((format!("{a}.v_proj.weight"), vec![kvh * hd, hid]));
                v.push((format!("{a}.o_proj.weight"), vec![hid, h * hd]));
            }
        }
        let mlp = |v: &mut Vec<(String, Vec<usize>)>, prefix: String, inter: usize| {
            v.push((format!("{prefix}.gate_proj.weight"), vec![inter, hid]));
            v.push((format!("{prefix}.up_proj.weight"), vec![inter, hid]));
            v.push((format!("{prefix}.down_proj.weight"), vec![hid, inter]));
        };
        match &cfg.moe {
            Some(m) if m.is_moe_layer(i) => {
                v.push((
                    format!("{p}.mlp.gate.weight"),
                    vec![m.n_routed_experts, hid],
                ));
                if m.topk_method == crate::TopkMethod::NoauxTc {
                    v.push((
                        format!("{p}.mlp.gate.e_score_correction_bias"),
                        vec![m.n_routed_experts],
                    ));
                }
                for e in 0..m.n_routed_experts {
                    mlp(
                        &mut v,
                        format!("{p}.mlp.experts.{e}"),
                        m.moe_intermediate_size,
                    );
                }
                if m.n_shared_experts > 0 {
                    mlp(
                        &mut v,
                        format!("{p}.mlp.shared_experts"),
                        m.moe_intermediate_size * m.n_shared_experts,
                    );
                }
            }
            _ => mlp(&mut v, format!("{p}.mlp"), cfg.intermediate_size),
        }
    }
    v.push(("model.norm.weight".to_string(), vec![hid]));
    v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, hid]));
    v
}

/// xorshift64*: fast, seeded, good enough for random weights.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545F4914F6CDD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Writes `config` (a preset, possibly edited) and random weights to `out`, sharded at about
/// `shard_bytes`. `progress(bytes_done, bytes_total)`.
pub fn write_checkpoint(
    config: &Value,
    dtype: SynthDtype,
    out: &Path,
    shard_bytes: usize,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), LoadError> {
    let cfg = ModelConfig::from_json(config)?;
    let io = |e: std::io::Error| LoadError::Io {
        path: out.to_path_buf(),
        source: e,
    };
    std::fs::create_dir_all(out).map_err(io)?;
    let mut config = config.clone();
    config["torch_dtype"] = json!(match dtype {
        SynthDtype::F32 => "float32",
        SynthDtype::BF16 => "bfloat16",
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .map_err(io)?;
    let esize = match dtype {
        SynthDtype::F32 => 4,
        SynthDtype::BF16 => 2,
    };
    let tensors = tensor_shapes(&cfg);
    let total: usize = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() * esize)
        .sum();
    // Group into shards.
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut cur = 0;
    for t in tensors {
        let b = t.1.iter().product::<usize>() * esize;
        if cur > 0 && cur + b > shard_bytes {
            shards.push(vec![]);
            cur = 0;
        }
        cur += b;
        shards.last_mut().unwrap().push(t);
    }
    let n = shards.len();
    let mut weight_map = serde_json::Map::new();
    let mut done = 0;
    let mut rng = Rng(seed.max(1));
    for (si, shard) in shards.iter().enumerate() {
        let fname = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", si + 1, n)
        };
        let mut header = serde_json::Map::new();
        let mut off = 0;
        for (name, shape) in shard {
            let b = shape.iter().product::<usize>() * esize;
            header.insert(name.clone(), json!({"dtype": match dtype { SynthDtype::F32 => "F32", SynthDtype::BF16 => "BF16" }, "shape": shape, "data_offsets": [off, off + b]}));
            off += b;
            weight_map.insert(name.clone(), json!(fname));
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let path = out.join(&fname);
        let f = std::fs::File::create(&path).map_err(io)?;
        let mut w = BufWriter::with_capacity(1 << 22, f);
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&h).map_err(io)?;
        let mut buf = Vec::with_capacity(1 << 20);
        for (name, shape) in shard {
            let count: usize = shape.iter().product();
            // Norm weights around 1; matrices uniform with variance 1/fan_in (activations stay
            // in range through many layers); the router sharper, as trained routers are.
            let is_norm = shape.len() == 1 && !name.ends_with("e_score_correction_bias");
            let fan_in = *shape.last().unwrap() as f32;
            let scale = if name.ends_with("e_score_correction_bias") {
                0.01
            } else if name.contains("mlp.gate.") {
                4.0 / fan_in.sqrt()
            } else {
                1.7 / fan_in.sqrt()
            };
            let mut left = count;
            while left > 0 {
                let k = left.min(1 << 18);
                buf.clear();
                for _ in 0..k {
                    let x = if is_norm {
                        1.0 + 0.1 * rng.next_f32()
                    } else {
                        scale * rng.next_f32()
                    };
                    match dtype {
                        SynthDtype::F32 => buf.extend_from_slice(&x.to_le_bytes()),
                        SynthDtype::BF16 => {
                            buf.extend_from_slice(&half::bf16::from_f32(x).to_bits().to_le_bytes())
                        }
                    }
                }
                w.write_all(&buf).map_err(io)?;
                left -= k;
                done += k * esize;
                progress(done, total);
            }
        }
        w.flush().map_err(io)?;
    }
    if n > 1 {
        let index =
            json!({"metadata": {"total_size": total}, "weight_map": Value::Object(weight_map)});
        std::fs::write(
            out.join("model.safetensors.index.json"),
            serde_json::to_string_pretty(&index).unwrap(),
        )
        .map_err(io)?;
    }
    Ok(())
}
