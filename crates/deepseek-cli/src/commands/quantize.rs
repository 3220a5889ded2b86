//! `deepseek quantize`: a Hugging Face checkpoint written as a GGUF file llama.cpp loads.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use deepseek_engine::gguf_tokenizer::metadata_from_tokenizer_json;
use deepseek_engine::Tokenizer;
use deepseek_kernels::quant::iq_quantize::needs_imatrix;
use deepseek_loader::gguf::Value;
use deepseek_loader::gguf_export::{plan, ExportType};

use crate::common::ModelArg;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  deepseek quantize --type q4_k --out nano-q4_k.gguf        # the bundled model
  deepseek quantize --model deepseek-ai/DeepSeek-V2-Lite-Chat \\
      --type q8_0 --out v2-lite-q8_0.gguf
  deepseek quantize -t q4_k --imatrix imatrix.gguf -o nano-q4_k.gguf
  deepseek quantize -t q4_k --split-max-size 4G -o m.gguf   # written in parts")]
pub struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Weight type: q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s,
    /// iq2_xs, iq2_xxs, iq1_m, iq1_s, q5_1, q5_0, q4_1, q4_0, bf16, f16 or f32. Rows that are not a whole
    /// number of 256-value blocks fall back as llama.cpp's do: q8_0 for q6_k, q5_1 for q5_k,
    /// q5_0 for q4_k, q4_0 for q3_k and q2_k, iq4_nl for iq4_xs and the iq1-iq3 types; norms
    /// and the router stay f32. The iq1-iq3 types get the per-tensor mix of llama-quantize's
    /// presets (output, embeddings, attention values and the first eighth of ffn_down at more
    /// bits), the others every matrix at the type. Every type uses llama.cpp's searches, with
    /// or without --imatrix (byte-identical blocks). iq2_xxs, iq2_xs and iq1_s need --imatrix
    /// (as llama-quantize does).
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    ty: String,
    /// The GGUF file to write.
    #[arg(long, short = 'o', value_name = "FILE.gguf")]
    out: PathBuf,
    /// Write the model in parts of at most SIZE of tensor data each (e.g. 4G, 500M), as
    /// llama.cpp's `gguf-split --split-max-size` does: FILE-00001-of-0000N.gguf, … beside
    /// --out; give the first part to any command (or llama.cpp) to load them all.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    split_max_size: Option<usize>,
    /// An importance matrix (`deepseek imatrix`, or llama.cpp's llama-imatrix: GGUF or .dat):
    /// K-quant and i-quant rows (q2_k … q6_k, iq1_s … iq4_xs) then round so that columns
    /// with large inputs keep their precision (weighted scale search); the other 32-wide types
    /// are written as without it.
    #[arg(long, value_name = "FILE")]
    imatrix: Option<PathBuf>,
}

/// `4G`, `500M`, `64K` or a number of bytes (powers of 1000, as gguf-split counts).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mul) = match t.char_indices().last() {
        Some((i, 'G' | 'g')) => (&t[..i], 1_000_000_000.0),
        Some((i, 'M' | 'm')) => (&t[..i], 1_000_000.0),
        Some((i, 'K' | 'k')) => (&t[..i], 1_000.0),
        _ => (t, 1.0),
    };
    match num.parse::<f64>() {
        Ok(v) if v * mul >= 1.0 && (v * mul).is_finite() => Ok((v * mul) as usize),
        _ => Err(format!(
            "`{s}` is not a size: a positive number with an optional K, M or G"
        )),
    }
}

pub fn run(a: Args) -> Result<()> {
    let target = ExportType::parse(&a.ty).with_context(|| {
        format!(
            "--type `{}` is not one of q8_0, q6_k, q5_k, q4_k, q3_k, q2_k, iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s, iq2_xs, iq2_xxs, iq1_m, iq1_s, q5_1, q5_0, q4_1, q4_0, bf16, f16, f32{}",
            a.ty,
            if deepseek_kernels::QuantType::from_name(&a.ty).is_some() {
                " (this engine reads that i-quant but does not write it)"
            } else {
                ""
            }
        )
    })?;
    if let ExportType::Quant(q) = target {
        if a.imatrix.is_none() && needs_imatrix(q) {
            bail!(
                "--type {} needs an importance matrix (its 1-2-bit grid is unusable without \
                 one, and llama-quantize refuses it too): make one with `deepseek imatrix \
                 --model M --text FILE -o imatrix.gguf`, then pass --imatrix imatrix.gguf",
                q.name()
            );
        }
    }
    let dir = a.model.dir()?;
    if deepseek_loader::gguf_path(&dir)?.is_some() {
        bail!(
            "{} is already a GGUF file: quantize from the Hugging Face folder it was made from",
            dir.display()
        );
    }
    let (config, store) = deepseek_loader::open_checkpoint(&dir)?;
    let mut extra = vec![(
        "general.name".to_string(),
        Value::String(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    )];
    let tok_path = dir.join("tokenizer.json");
    if tok_path.exists() {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&tok_path)?)
            .with_context(|| format!("{}: invalid JSON", tok_path.display()))?;
        let meta = metadata_from_tokenizer_json(&json, config.vocab_size)
            .map_err(|e| anyhow::anyhow!("{}: {e}", tok_path.display()))?;
        let tok = Tokenizer::from_dir(&dir)?;
        let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
        extra.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
        extra.push(("tokenizer.ggml.pre".into(), Value::String(meta.pre)));
        extra.push(("tokenizer.ggml.tokens".into(), strings(meta.tokens)));
        extra.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(meta.token_types.into_iter().map(Value::I32).collect()),
        ));
        extra.push(("tokenizer.ggml.merges".into(), strings(meta.merges)));
        if let Some(b) = tok.bos_id {
            extra.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(b)));
        }
        if let Some(e) = tok.eos_id {
            extra.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(e)));
        }
        extra.push((
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(tok.add_bos_token),
        ));
        if let Some(t) = &tok.chat_template {
            extra.push(("tokenizer.chat_template".into(), Value::String(t.clone())));
        }
    } else {
        eprintln!(
            "warning: {} has no tokenizer.json; the GGUF file will have no tokenizer",
            dir.display()
        );
    }
    let mut p = plan(&config, &store, target, extra)?;
    if let Some(f) = &a.imatrix {
        let m = deepseek_loader::imatrix::Imatrix::read(f)?;
        let covered = p
            .use_imatrix(&m)
            .with_context(|| format!("--imatrix {}", f.display()))?;
        if covered == 0 {
            bail!(
                "--imatrix {}: none of its {} entries names a matrix of this model",
                f.display(),
                m.entries.len()
            );
        }
        eprintln!(
            "importance matrix {}: {covered} matrices ({} chunks of {} tokens)",
            f.display(),
            m.chunk_count,
            m.chunk_size
        );
    }
    let mixed = p.apply_preset_mix(a.imatrix.is_some());
    if mixed > 0 {
        eprintln!("llama.cpp's {} mix: {mixed} matrices at other types", a.ty);
    }
    let bar = indicatif::ProgressBar::new(p.tensors.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "quantizing [{bar:30}] {pos}/{len} tensors {elapsed} (eta {eta})",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let files = match a.split_max_size {
        Some(max) => p.write_split(&store, &config, &a.out, max, &mut |done, _| {
            bar.set_position(done as u64)
        })?,
        None => {
            p.write(&store, &config, &a.out, &mut |done, _| {
                bar.set_position(done as u64)
            })?;
            vec![a.out.clone()]
        }
    };
    bar.finish_and_clear();
    let mut bytes = 0;
    for f in &files {
        bytes += std::fs::metadata(f)?.len();
    }
    let parts = match files.len() {
        1 => String::new(),
        n => format!(" in {n} parts: {} …", files[0].display()),
    };
    println!(
        "wrote {} ({:.1} MB, {} tensors, {}){parts}",
        if files.len() == 1 {
            files[0].display().to_string()
        } else {
            a.out.display().to_string()
        },
        bytes as f64 / 1e6,
        p.tensors.len(),
        a.ty.to_lowercase()
    );
    Ok(())
}
