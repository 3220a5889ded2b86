//! A GGUF file of the `deepseek2` or `llama` architecture as a [`ModelConfig`] and a
//! [`WeightStore`] with Hugging Face tensor names, so the model code is the same for both.
//!
//! The metadata is translated into the `config.json` fields it stands for and parsed by the same
//! code as a real `config.json`. Tensors are renamed (`blk.3.attn_kv_a_mqa.weight` →
//! `model.layers.3.self_attn.kv_a_proj_with_mqa.weight`); stacked experts are split into
//! per-expert views of the mapping; the newer MLA form's `attn_k_b`/`attn_v_b` are joined back
//! into `kv_b_proj`; llama's Q/K rows, which llama.cpp's converter permutes for its RoPE, are put
//! back in Hugging Face order.

use std::sync::Arc;

use deepseek_kernels::{Matrix, MatrixData, QuantType};
use serde_json::{json, Map, Value as Json};

use crate::gguf::{GgufFile, GgufTensor, Value, GGML_BF16, GGML_F16, GGML_F32};
use crate::safetensors_store::{TensorInfo, TensorType};
use crate::{LoadError, ModelConfig, WeightStore};

fn tensor_type(t: u32) -> TensorType {
    match t {
        GGML_F32 => TensorType::F32,
        GGML_F16 => TensorType::F16,
        GGML_BF16 => TensorType::BF16,
        t => match QuantType::from_ggml_type(t) {
            Some(q) => TensorType::Quant(q),
            None => TensorType::Other(crate::gguf::type_name(t)),
        },
    }
}

/// The `config.json` a GGUF file's metadata stands for.
pub fn config_json(g: &GgufFile) -> Result<Json, LoadError> {
    let arch = g.architecture()?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let get = |k: &str| g.get(&key(k));
    let req_u = |k: &str| -> Result<u64, LoadError> {
        match get(k) {
            Some(v) => v.as_u64().ok_or_else(|| {
                g.err(format!(
                    "metadata `{}` is {v:?}, expected a non-negative integer (per-layer arrays are not supported)",
                    key(k)
                ))
            }),
            None => Err(g.err(format!("metadata `{}` is missing", key(k)))),
        }
    };
    let opt_u = |k: &str| get(k).and_then(Value::as_u64);
    let opt_f = |k: &str| get(k).and_then(Value::as_f64);

    let mut c = Map::new();
    let vocab = opt_u("vocab_size")
        .or_else(|| {
            g.get("tokenizer.ggml.tokens")
                .and_then(Value::as_array)
                .map(|a| a.len() as u64)
        })
        .or_else(|| {
            g.tensors
                .iter()
                .find(|t| t.name == "token_embd.weight")
                .and_then(|t| t.dims.get(1).copied())
        })
        .ok_or_else(|| g.err(format!("metadata `{}` is missing", key("vocab_size"))))?;
    let hidden = req_u("embedding_length")?;
    let heads = req_u("attention.head_count")?;
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    // block_count includes the multi-token-prediction blocks stored after the main stack.
    let blocks = req_u("block_count")?;
    let nextn = opt_u("nextn_predict_layers").unwrap_or(0);
    if nextn >= blocks {
        return Err(g.err(format!(
            "metadata `{}` is {nextn}, but `{}` is only {blocks}",
            key("nextn_predict_layers"),
            key("block_count")
        )));
    }
    c.insert("num_hidden_layers".into(), json!(blocks - nextn));
    c.insert("num_nextn_predict_layers".into(), json!(nextn));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "intermediate_size".into(),
        json!(req_u("feed_forward_length")?),
    );
    c.insert(
        "max_position_embeddings".into(),
        json!(opt_u("context_length").unwrap_or(4096)),
    );
    c.insert(
        "rms_norm_eps".into(),
        json!(opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-6)),
    );
    c.insert(
        "rope_theta".into(),
        json!(opt_f("rope.freq_base").unwrap_or(10000.0)),
    );
    let tied = !g.tensors.iter().any(|t| t.name == "output.weight");
    c.insert("tie_word_embeddings".into(), json!(tied));
    if let Some(b) = g.get("tokenizer.ggml.bos_token_id").and_then(Value::as_u64) {
        c.insert("bos_token_id".into(), json!(b));
    }
    if let Some(e) = g.get("tokenizer.ggml.eos_token_id").and_then(Value::as_u64) {
        c.insert("eos_token_id".into(), json!(e));
    }
    match get("rope.scaling.type").and_then(Value::as_str) {
        None | Some("none") => {}
        Some("linear") => {
            c.insert(
                "rope_scaling".into(),
                json!({"type": "linear", "factor": opt_f("rope.scaling.factor").unwrap_or(1.0)}),
            );
        }
        Some("yarn") => {
            // llama.cpp stores 0.1 · mscale_all_dim as the log multiplier (DeepSeek-V2 configs
            // have mscale == mscale_all_dim, which is what we assume for `mscale`).
            let m = opt_f("rope.scaling.yarn_log_multiplier").unwrap_or(0.0) / 0.1;
            c.insert(
                "rope_scaling".into(),
                json!({
                    "type": "yarn",
                    "factor": opt_f("rope.scaling.factor").unwrap_or(1.0),
                    "original_max_position_embeddings": opt_u("rope.scaling.original_context_length").unwrap_or(4096),
                    "beta_fast": opt_f("rope.scaling.yarn_beta_fast").unwrap_or(32.0),
                    "beta_slow": opt_f("rope.scaling.yarn_beta_slow").unwrap_or(1.0),
                    "mscale": m,
                    "mscale_all_dim": m,
                }),
            );
        }
        Some(other) => {
            return Err(g.err(format!(
                "metadata `{}` = `{other}` is not supported (none, linear, yarn)",
                key("rope.scaling.type")
            )))
        }
    }
    match arch.as_str() {
        "llama" => {
            c.insert("model_type".into(), json!("llama"));
            c.insert(
                "num_key_value_heads".into(),
                json!(opt_u("attention.head_count_kv").unwrap_or(heads)),
            );
            let head_dim = opt_u("attention.key_length").unwrap_or(hidden / heads.max(1));
            c.insert("head_dim".into(), json!(head_dim));
        }
        "deepseek2" => {
            let rope = req_u("rope.dimension_count")?;
            // Newer files (MLA as MQA) carry the per-head sizes in *_mla keys.
            let (k_len, v_len) = match (
                opt_u("attention.key_length_mla"),
                opt_u("attention.value_length_mla"),
            ) {
                (Some(k), Some(v)) => (k, v),
                _ => (
                    req_u("attention.key_length")?,
                    req_u("attention.value_length")?,
                ),
            };
            if k_len <= rope {
                return Err(g.err(format!(
                    "metadata key length {k_len} must exceed rope.dimension_count {rope}"
                )));
            }
            let sigmoid = opt_u("expert_gating_func") == Some(2);
            c.insert(
                "model_type".into(),
                json!(if sigmoid {
                    "deepseek_v3"
                } else {
                    "deepseek_v2"
                }),
            );
            c.insert("num_key_value_heads".into(), json!(heads));
            c.insert(
                "q_lora_rank".into(),
                json!(opt_u("attention.q_lora_rank").unwrap_or(0)),
            );
            c.insert(
                "kv_lora_rank".into(),
                json!(req_u("attention.kv_lora_rank")?),
            );
            c.insert("qk_rope_head_dim".into(), json!(rope));
            c.insert("qk_nope_head_dim".into(), json!(k_len - rope));
            c.insert("v_head_dim".into(), json!(v_len));
            if let Some(n) = opt_u("expert_count").filter(|&n| n > 0) {
                let n_group = opt_u("expert_group_count").unwrap_or(1).max(1);
                c.insert("n_routed_experts".into(), json!(n));
                c.insert(
                    "num_experts_per_tok".into(),
                    json!(req_u("expert_used_count")?),
                );
                c.insert(
                    "n_shared_experts".into(),
                    json!(opt_u("expert_shared_count").unwrap_or(0)),
                );
                c.insert(
                    "moe_intermediate_size".into(),
                    json!(req_u("expert_feed_forward_length")?),
                );
                c.insert(
                    "first_k_dense_replace".into(),
                    json!(opt_u("leading_dense_block_count").unwrap_or(0)),
                );
                c.insert("moe_layer_freq".into(), json!(1));
                c.insert(
                    "routed_scaling_factor".into(),
                    json!(opt_f("expert_weights_scale").unwrap_or(1.0)),
                );
                c.insert(
                    "norm_topk_prob".into(),
                    json!(get("expert_weights_norm")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)),
                );
                c.insert("n_group".into(), json!(n_group));
                c.insert(
                    "topk_group".into(),
                    json!(opt_u("expert_group_used_count").unwrap_or(n_group)),
                );
                c.insert(
                    "scoring_func".into(),
                    json!(if sigmoid { "sigmoid" } else { "softmax" }),
                );
                let method = if sigmoid {
                    "noaux_tc"
                } else if n_group > 1 {
                    "group_limited_greedy"
                } else {
                    "greedy"
                };
                c.insert("topk_method".into(), json!(method));
            }
        }
        other => {
            return Err(g.err(format!(
                "architecture `{other}` is not supported (deepseek2, llama)"
            )))
        }
    }
    Ok(Json::Object(c))
}

/// The Hugging Face name of a per-layer GGUF tensor (`blk.N.` stripped into `layer`).
fn hf_layer_name(arch: &str, rest: &str) -> Option<&'static str> {
    Some(match rest {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" if arch == "llama" => "self_attn.k_proj.weight",
        "attn_v.weight" if arch == "llama" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_a.weight" => "self_attn.q_a_proj.weight",
        "attn_q_a_norm.weight" => "self_attn.q_a_layernorm.weight",
        "attn_q_b.weight" => "self_attn.q_b_proj.weight",
        "attn_kv_a_mqa.weight" => "self_attn.kv_a_proj_with_mqa.weight",
        "attn_kv_a_norm.weight" => "self_attn.kv_a_layernorm.weight",
        "attn_kv_b.weight" => "self_attn.kv_b_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "ffn_gate_inp.weight" => "mlp.gate.weight",
        "exp_probs_b.bias" => "mlp.gate.e_score_correction_bias",
        "ffn_gate_shexp.weight" => "mlp.shared_experts.gate_proj.weight",
        "ffn_up_shexp.weight" => "mlp.shared_experts.up_proj.weight",
        "ffn_down_shexp.weight" => "mlp.shared_experts.down_proj.weight",
        _ => return None,
    })
}

/// GGUF's names of the multi-token-prediction parts (`blk.N.nextn.*`), as Hugging Face names
/// them under `model.layers.N`.
fn nextn_name(rest: &str) -> Option<&'static str> {
    Some(match rest {
        "nextn.eh_proj.weight" => "eh_proj.weight",
        "nextn.enorm.weight" => "enorm.weight",
        "nextn.hnorm.weight" => "hnorm.weight",
        "nextn.embed_tokens.weight" => "embed_tokens.weight",
        "nextn.shared_head_head.weight" => "shared_head.head.weight",
        "nextn.shared_head_norm.weight" => "shared_head.norm.weight",
        _ => return None,
    })
}

/// Opens a GGUF file (or the first of its parts) as a config and a weight store.
pub fn open(path: &std::path::Path) -> Result<(ModelConfig, WeightStore), LoadError> {
    let g = Arc::new(GgufFile::open(path)?);
    let parts = crate::gguf_split::open_parts(g.clone())?;
    let config = ModelConfig::from_json(&config_json(&g)?).map_err(|e| {
        g.err(format!(
            "metadata does not describe a model we can run: {e}"
        ))
    })?;
    let arch = g.architecture()?.to_string();
    let mut store = WeightStore::empty(path);
    let shards: Vec<usize> = parts
        .iter()
        .map(|p| store.add_map(p.path.clone(), p.map.clone()))
        .collect();
    let info =
        |shard: usize, t: &GgufTensor, offset: usize, shape: Vec<usize>, len: usize| TensorInfo {
            shard,
            dtype: tensor_type(t.ggml_type),
            shape,
            offset,
            len_bytes: len,
        };
    // PyTorch shape: GGML dims reversed.
    let shape = |t: &GgufTensor| t.dims.iter().rev().map(|&d| d as usize).collect::<Vec<_>>();
    // Every layer has tensors of its own: a block count above the tensor count is a corrupt
    // or hostile header, refused before anything is sized by it.
    let tensor_count: usize = parts.iter().map(|p| p.tensors.len()).sum();
    if config.num_hidden_layers > tensor_count {
        return Err(g.err(format!(
            "metadata `{arch}.block_count` is {}, but the file holds only {tensor_count} tensors",
            config.num_hidden_layers,
        )));
    }
    let blocks = config.num_hidden_layers + config.num_nextn_predict_layers;
    let mut k_b = vec![None; blocks];
    let mut v_b = vec![None; blocks];
    let all = parts
        .iter()
        .zip(&shards)
        .flat_map(|(p, &shard)| p.tensors.iter().map(move |t| (p, shard, t)));
    for (part, shard, t) in all {
        let top = match t.name.as_str() {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(hf) = top {
            store.insert(hf.into(), info(shard, t, t.offset, shape(t), t.len_bytes));
            continue;
        }
        let Some((layer, rest)) = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(n, rest)| Some((n.parse::<usize>().ok()?, rest)))
        else {
            continue; // e.g. rope_freqs: derived from the config instead
        };
        if layer >= blocks {
            continue;
        }
        let p = format!("model.layers.{layer}");
        // A multi-token-prediction block: an ordinary layer plus its own input and head parts.
        if let Some(hf) = hf_layer_name(&arch, rest).or_else(|| nextn_name(rest)) {
            store.insert(
                format!("{p}.{hf}"),
                info(shard, t, t.offset, shape(t), t.len_bytes),
            );
            continue;
        }
        let experts = [
            ("ffn_gate_exps.weight", "gate_proj"),
            ("ffn_up_exps.weight", "up_proj"),
            ("ffn_down_exps.weight", "down_proj"),
        ];
        if let Some((_, proj)) = experts.iter().find(|(g, _)| *g == rest) {
            // [experts, rows, cols]: each expert's slab is contiguous.
            let s = shape(t);
            if s.len() != 3 {
                return Err(g.err(format!(
                    "tensor `{}` should have 3 dimensions, has {s:?}",
                    t.name
                )));
            }
            let per = t.len_bytes / s[0];
            for e in 0..s[0] {
                store.insert(
                    format!("{p}.mlp.experts.{e}.{proj}.weight"),
                    info(shard, t, t.offset + e * per, vec![s[1], s[2]], per),
                );
            }
            continue;
        }
        match rest {
            // Also kept as stored, 2-D: [heads · kv_lora, nope] and [heads · v, kv_lora].
            "attn_k_b.weight" | "attn_v_b.weight" => {
                let s = shape(t);
                if s.len() == 3 {
                    let hf = if rest == "attn_k_b.weight" {
                        "k_b_proj"
                    } else {
                        "v_b_proj"
                    };
                    store.insert(
                        format!("{p}.self_attn.{hf}.weight"),
                        info(shard, t, t.offset, vec![s[0] * s[1], s[2]], t.len_bytes),
                    );
                }
                if rest == "attn_k_b.weight" {
                    k_b[layer] = Some((part.clone(), t.clone()));
                } else {
                    v_b[layer] = Some((part.clone(), t.clone()));
                }
            }
            _ => {}
        }
    }
    store.gguf = Some(g.clone());
    // Newer MLA files: kv_b_proj = per head [W_UK (nope rows); W_UV (v rows)], from
    // k_b [heads, kv_lora, nope] (transposed) and v_b [heads, v, kv_lora].
    if let Some(mla) = config.mla() {
        for layer in 0..blocks {
            let (Some((kb_part, kb)), Some((vb_part, vb))) = (&k_b[layer], &v_b[layer]) else {
                continue;
            };
            let (h, lora, nope, v) = (
                config.num_attention_heads,
                mla.kv_lora_rank,
                mla.qk_nope_head_dim,
                mla.v_head_dim,
            );
            let kb_m = dequantized(kb_part, kb, h * lora, nope)?;
            let vb_m = dequantized(vb_part, vb, h * v, lora)?;
            let mut kv = vec![0.0f32; h * (nope + v) * lora];
            for head in 0..h {
                let base = head * (nope + v);
                for c in 0..lora {
                    for i in 0..nope {
                        kv[(base + i) * lora + c] = kb_m[(head * lora + c) * nope + i];
                    }
                }
                let src = &vb_m[head * v * lora..(head + 1) * v * lora];
                kv[(base + nope) * lora..(base + nope + v) * lora].copy_from_slice(src);
            }
            // Held in bf16 where that loses nothing the file kept (bf16 sources) or next to
            // nothing beside its own quantization error (block formats): prefill's matmul over
            // it then runs on AMX tiles instead of f32 FMAs, and it takes half the memory. f32
            // and f16 sources keep their precision.
            let lossless_enough = |t: &GgufTensor| {
                matches!(
                    tensor_type(t.ggml_type),
                    TensorType::BF16 | TensorType::Quant(_)
                )
            };
            let rows = h * (nope + v);
            let matrix = if lossless_enough(kb) && lossless_enough(vb) {
                let bits: Vec<u16> = kv
                    .iter()
                    .map(|&x| half::bf16::from_f32(x).to_bits())
                    .collect();
                Matrix {
                    rows,
                    cols: lora,
                    data: MatrixData::BF16(bits.into()),
                }
            } else {
                Matrix::from_f32(rows, lora, kv)
            };
            store.insert_built(
                format!("model.layers.{layer}.self_attn.kv_b_proj.weight"),
                matrix,
            );
        }
    }
    if arch == "llama" {
        unpermute_llama_qk(&mut store, &config)?;
    }
    Ok((config, store))
}

/// A tensor as f32 `[rows, cols]` (checked against its stored size).
fn dequantized(
    g: &GgufFile,
    t: &GgufTensor,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, LoadError> {
    let n: u64 = t.dims.iter().product();
    if n != (rows * cols) as u64 || t.dims[0] as usize != cols {
        return Err(g.err(format!(
            "tensor `{}` has dims {:?}, expected {} values in rows of {cols}",
            t.name,
            t.dims,
            rows * cols
        )));
    }
    let rb = t.len_bytes / rows;
    let bytes = &g.map[t.offset..t.offset + t.len_bytes];
    let mut out = vec![0.0f32; rows * cols];
    for (r, o) in out.chunks_mut(cols).enumerate() {
        let row = &bytes[r * rb..(r + 1) * rb];
        match tensor_type(t.ggml_type) {
            TensorType::F32 => {
                for (v, b) in o.iter_mut().zip(row.chunks_exact(4)) {
                    *v = f32::from_le_bytes(b.try_into().unwrap());
                }
            }
            TensorType::F16 => {
                for (v, b) in o.iter_mut().zip(row.chunks_exact(2)) {
                    *v = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            TensorType::BF16 => {
                for (v, b) in o.iter_mut().zip(row.chunks_exact(2)) {
                    *v = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            TensorType::Quant(q) => deepseek_kernels::quant::dequantize_row(q, row, o),
            other => {
                return Err(LoadError::Dtype {
                    name: t.name.clone(),
                    dtype: other.name(),
                })
            }
        }
    }
    Ok(out)
}

/// llama.cpp's converter reorders each head's Q and K rows from rotate-half to interleaved
/// pairs (row `2i + h` ← row `h·d/2 + i`); undo it so our rotate-half RoPE applies. Rows are
/// copied whole, so quantized rows stay as they are.
fn unpermute_llama_qk(store: &mut WeightStore, c: &ModelConfig) -> Result<(), LoadError> {
    let hd = c.head_dim;
    for layer in 0..c.num_hidden_layers {
        for (proj, heads) in [
            ("q_proj", c.num_attention_heads),
            ("k_proj", c.num_key_value_heads),
        ] {
            let name = format!("model.layers.{layer}.self_attn.{proj}.weight");
            let m = store.matrix_as_stored(&name, heads * hd, c.hidden_size)?;
            let rb = m.dtype().row_bytes(m.cols);
            let src: Vec<u8> = raw_bytes(&m);
            let mut dst = vec![0u8; src.len()];
            for head in 0..heads {
                for h in 0..2 {
                    for i in 0..hd / 2 {
                        let to = head * hd + h * hd / 2 + i;
                        let from = head * hd + 2 * i + h;
                        dst[to * rb..(to + 1) * rb]
                            .copy_from_slice(&src[from * rb..(from + 1) * rb]);
                    }
                }
            }
            store.insert_built(name, from_raw_bytes(&m, dst).repacked());
        }
    }
    Ok(())
}

fn raw_bytes(m: &Matrix) -> Vec<u8> {
    match &m.data {
        MatrixData::F32(b) => b.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect(),
        MatrixData::BF16(b) | MatrixData::F16(b) => {
            b.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        MatrixData::Quant { data, .. } => data.as_slice().to_vec(),
        _ => unreachable!("stored matrices are not repacked"),
    }
}

fn from_raw_bytes(m: &Matrix, bytes: Vec<u8>) -> Matrix {
    let u16s = |b: &[u8]| -> Vec<u16> {
        b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    let data = match &m.data {
        MatrixData::F32(_) => MatrixData::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect::<Vec<_>>()
                .into(),
        ),
        MatrixData::BF16(_) => MatrixData::BF16(u16s(&bytes).into()),
        MatrixData::F16(_) => MatrixData::F16(u16s(&bytes).into()),
        MatrixData::Quant { ty, .. } => MatrixData::Quant {
            ty: *ty,
            data: bytes.into(),
        },
        _ => unreachable!("stored matrices are not repacked"),
    };
    Matrix {
        rows: m.rows,
        cols: m.cols,
        data,
    }
}
