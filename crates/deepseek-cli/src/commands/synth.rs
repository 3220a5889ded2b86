use std::path::PathBuf;

use anyhow::{bail, Result};
use deepseek_loader::synth::{preset, write_checkpoint, SynthDtype, PRESETS};

#[derive(Clone, Copy, clap::ValueEnum)]
enum Dtype {
    Bf16,
    F32,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek synth --preset v2-lite --layers 8 --out /tmp/v2-lite-8l
  deepseek synth --preset v3 --layers 4 --experts 16 --out /tmp/v3-4l
  deepseek synth --preset v2-lite --layers 8 --mtp 1 --out /tmp/v2-lite-8l-mtp
  deepseek bench --model /tmp/v2-lite-8l  # the real shapes' speed, no download")]
pub struct Args {
    /// Shapes to copy: v2-lite, coder-v2-lite, v2, v3; or v3-tiny (V3's vocabulary and router
    /// on toy dimensions, for trying templates and serving with `--tokenizer`).
    #[arg(long)]
    preset: String,
    /// Keep only the first N decoder layers (memory and disk).
    #[arg(long)]
    layers: Option<usize>,
    /// Keep only N routed experts per layer (top-k and groups shrink to fit).
    #[arg(long)]
    experts: Option<usize>,
    /// Multi-token-prediction modules after the main stack: 0 or 1 (the v3 preset has 1, as
    /// DeepSeek-V3 does; the others 0). What `--draft mtp` drafts with.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=1))]
    mtp: Option<u64>,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: Dtype,
    /// Output folder (Hugging Face layout).
    #[arg(long)]
    out: PathBuf,
    /// Shard size in GiB.
    #[arg(long, default_value_t = 4.0)]
    shard_gib: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Copy tokenizer.json and tokenizer_config.json from this folder (converters need them).
    #[arg(long, value_name = "DIR")]
    tokenizer: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let Some(mut cfg) = preset(&a.preset) else {
        bail!(
            "--preset: `{}` is not a preset; presets: {PRESETS}",
            a.preset
        )
    };
    if let Some(l) = a.layers {
        if l == 0 {
            bail!("--layers must be at least 1");
        }
        cfg["num_hidden_layers"] = l.into();
    }
    if let Some(n) = a.mtp {
        cfg["num_nextn_predict_layers"] = n.into();
    }
    if let Some(e) = a.experts {
        let k = cfg["num_experts_per_tok"].as_u64().unwrap_or(1) as usize;
        if e < k {
            bail!("--experts {e} is fewer than num_experts_per_tok ({k})");
        }
        let groups = cfg["n_group"].as_u64().unwrap_or(1) as usize;
        if e % groups != 0 {
            cfg["n_group"] = 1.into();
            cfg["topk_group"] = 1.into();
        }
        cfg["n_routed_experts"] = e.into();
    }
    let dtype = match a.dtype {
        Dtype::Bf16 => SynthDtype::BF16,
        Dtype::F32 => SynthDtype::F32,
    };
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "writing {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    write_checkpoint(
        &cfg,
        dtype,
        &a.out,
        (a.shard_gib * (1u64 << 30) as f64) as usize,
        a.seed,
        &mut |d, t| {
            bar.set_length(t as u64);
            bar.set_position(d as u64);
        },
    )?;
    bar.finish_and_clear();
    if let Some(t) = &a.tokenizer {
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            let src = t.join(f);
            std::fs::copy(&src, a.out.join(f))
                .map_err(|e| anyhow::anyhow!("--tokenizer: copying {}: {e}", src.display()))?;
        }
    }
    eprintln!(
        "wrote {} ({} preset{}) to {}",
        match dtype {
            SynthDtype::BF16 => "bf16",
            SynthDtype::F32 => "f32",
        },
        a.preset,
        a.layers
            .map(|l| format!(", {l} layers"))
            .unwrap_or_default(),
        a.out.display()
    );
    Ok(())
}
