use anyhow::Result;
use serde_json::json;

use crate::common::{load_model, ModelArg, Settings};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek info                                        # the bundled model
  deepseek info --model deepseek-ai/DeepSeek-V2-Lite --json
  deepseek info --model DeepSeek-V2-Lite-Chat.Q4_K_M.gguf
  deepseek info --ranks 4     # memory per rank under --expert-parallel")]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Also show how --expert-parallel over N ranks would place the routed experts (by
    /// --expert-placement) and what each rank would hold.
    #[arg(long, value_name = "N")]
    ranks: Option<usize>,
}

/// Under --expert-parallel over `ranks`: each rank's routed experts and the bytes it holds
/// (rank 0 also everything that is not a routed expert).
fn placement_report(
    model: &deepseek_model::Model,
    ranks: usize,
    policy: deepseek_model::expert_parallel::PlacementPolicy,
) -> Result<serde_json::Value> {
    use deepseek_model::expert_parallel::ExpertPlacement;
    let Some(m) = &model.config.moe else {
        anyhow::bail!("--ranks: this model has no routed experts to place (it is dense)");
    };
    let p = ExpertPlacement::new(m, ranks, policy).map_err(|e| anyhow::anyhow!("--ranks: {e}"))?;
    let expert_bytes = model.routed_expert_bytes();
    let rest = model.held_weight_bytes() - expert_bytes.iter().sum::<usize>();
    let per_rank: Vec<serde_json::Value> = (0..ranks)
        .map(|r| {
            let experts = p.experts_of(r);
            let held = experts.iter().map(|&e| expert_bytes[e]).sum::<usize>()
                + if r == 0 { rest } else { 0 };
            json!({"rank": r, "experts": experts, "bytes": held})
        })
        .collect();
    Ok(json!({
        "ranks": ranks,
        "policy": format!("{policy:?}"),
        "max_ranks_per_token": p.max_ranks_per_token(m),
        "per_rank": per_rank,
        "rest_bytes": rest,
        "lines": p.report(m, &expert_bytes),
    }))
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    let dir = a.model.dir()?;
    let model = load_model(&dir, &s)?;
    let c = &model.config;
    let (total, active) = model.parameter_counts();
    let (_, store) = deepseek_loader::open_checkpoint(&dir)?;
    let shape = model.cache_shape(s.cache.dtype());
    let (mix, bits) = store.dtype_mix();
    let attention = match c.mla() {
        Some(m) => format!(
            "MLA (kv_lora_rank {}, rope {}, q_lora_rank {})",
            m.kv_lora_rank,
            m.qk_rope_head_dim,
            m.q_lora_rank
                .map(|r| r.to_string())
                .unwrap_or("none".into())
        ),
        None => format!(
            "{} ({} heads, {} KV heads)",
            if c.num_key_value_heads == c.num_attention_heads {
                "MHA"
            } else {
                "GQA"
            },
            c.num_attention_heads,
            c.num_key_value_heads
        ),
    };
    let moe = c.moe.as_ref().map(|m| {
        json!({"n_routed_experts": m.n_routed_experts, "n_shared_experts": m.n_shared_experts, "num_experts_per_tok": m.num_experts_per_tok,
               "topk_method": format!("{:?}", m.topk_method), "scoring_func": format!("{:?}", m.scoring_func), "first_k_dense_replace": m.first_k_dense_replace})
    });
    let v = json!({
        "model": dir.display().to_string(),
        "family": c.family.model_type(),
        "layers": c.num_hidden_layers,
        "hidden_size": c.hidden_size,
        "vocab_size": c.vocab_size,
        "attention": attention,
        "moe": moe,
        "total_parameters": total,
        "active_parameters": active,
        "dtype": store.main_dtype(),
        "bits_per_weight": bits,
        "dtype_bytes": mix.iter().map(|(d, b)| (d.clone(), (*b).into())).collect::<serde_json::Map<_, _>>(),
        "weights_bytes": store.total_bytes(),
        "active_weight_bytes_per_token": model.active_weight_bytes(),
        "kv_cache_values_per_token_per_layer": shape.row_width,
        "mtp_module": model.mtp.is_some(),
        "kv_bytes_per_token": shape.bytes_per_token(),
        "max_position_embeddings": c.max_position_embeddings,
        "isa": deepseek_kernels::tier::active().name(),
        "host_isa_tiers": deepseek_kernels::tier::host_tiers().iter().map(|t| t.name()).collect::<Vec<_>>(),
    });
    let placement = match a.ranks {
        Some(n) => Some(placement_report(&model, n, s.expert_placement)?),
        None => None,
    };
    let mut v = v;
    if let Some(p) = &placement {
        v["expert_placement"] = p.clone();
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let human = |n: usize| {
            if n >= 1_000_000_000 {
                format!("{:.2}B", n as f64 / 1e9)
            } else {
                format!("{:.2}M", n as f64 / 1e6)
            }
        };
        println!("model            {}", dir.display());
        println!("family           {}", c.family.model_type());
        match &model.mtp {
            Some(m) => println!(
                "layers           {} + a multi-token-prediction module (model.layers.{}: drafts with --draft mtp)",
                c.num_hidden_layers, m.layer
            ),
            None => println!("layers           {}", c.num_hidden_layers),
        }
        println!("attention        {attention}");
        if let Some(m) = &c.moe {
            println!(
                "experts          {} routed (top {}) + {} shared, {:?}",
                m.n_routed_experts, m.num_experts_per_tok, m.n_shared_experts, m.topk_method
            );
        }
        println!(
            "parameters       {} total, {} active per token",
            human(total),
            human(active)
        );
        let total_bytes = mix.iter().map(|m| m.1).sum::<usize>().max(1);
        let shares: Vec<String> = mix
            .iter()
            .map(|(d, b)| format!("{d} {:.0}%", 100.0 * *b as f64 / total_bytes as f64))
            .collect();
        println!(
            "dtype            {} ({bits:.2} bits per weight; of the bytes: {})",
            store.main_dtype(),
            shares.join(", ")
        );
        println!(
            "kv cache         {} bytes per token ({} {} values × {} layers)",
            shape.bytes_per_token(),
            shape.row_width,
            match shape.dtype {
                deepseek_cache::CacheDtype::F32 => "f32",
                deepseek_cache::CacheDtype::Bf16 => "bf16",
                deepseek_cache::CacheDtype::Q8 => "8-bit (+ a scale per 32)",
            },
            shape.layers
        );
        println!("context          {} tokens", c.max_position_embeddings);
        if let Some(p) = &placement {
            println!(
                "expert parallel  {} ranks, {} placement: a token's routed experts on at most {} ranks",
                p["ranks"], s.expert_placement.name(), p["max_ranks_per_token"]
            );
            for line in p["lines"].as_array().into_iter().flatten() {
                println!("  {}", line.as_str().unwrap_or_default());
            }
            println!(
                "  rank 0 also holds everything else: {} (attention, dense layers, shared experts, embeddings, lm_head)",
                deepseek_model::expert_parallel::placement::human_bytes(
                    p["rest_bytes"].as_u64().unwrap_or(0) as usize
                )
            );
        }
        println!("kernels          {}", crate::common::tier_line(s));
    }
    Ok(())
}
