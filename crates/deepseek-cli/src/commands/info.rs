use anyhow::Result;
use serde_json::json;

use crate::common::{load_model, ModelArg, Settings};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek info                                        # the bundled model
  deepseek info --model deepseek-ai/DeepSeek-V2-Lite --json
  deepseek info --model DeepSeek-V2-Lite-Chat.Q4_K_M.gguf")]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, s: Settings) -> Result<()> {
    let dir = a.model.dir()?;
    let model = load_model(&dir, s)?;
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
        println!("kernels          {}", crate::common::tier_line(s));
    }
    Ok(())
}
