//! `bench --device cuda`: prefill and decode speed of the GPU path (`gpu_model`), one sequence
//! and --batch sequences decoding together. Every step returns its logits to the host, so each
//! timing includes the GPU's work and the copy back.

use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use deepseek_model::gpu_model::{GpuModel, GpuPrecision, GpuSequence};
use deepseek_model::LogitsFor;
use serde_json::json;

use crate::commands::bench::{random_tokens, Args};
use crate::common::{load_model, Settings};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn run(a: &Args, s: &Settings) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let launcher = s
        .device
        .open()
        .map_err(|e| anyhow!("--device {}: {e}", s.device))?
        .ok_or_else(|| anyhow!("bench_gpu::run with --device cpu"))?;
    let device = launcher.describe();
    let dir = a.model.dir()?;
    let model = load_model(&dir, s)?;
    let c = model.config.clone();
    if a.prompt > c.max_position_embeddings || a.depth + a.gen + 1 > c.max_position_embeddings {
        bail!(
            "-p {} or --depth {} + -n {} exceeds the model's context of {} tokens",
            a.prompt,
            a.depth,
            a.gen,
            c.max_position_embeddings
        );
    }
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let per_seq = (a.depth + a.gen + 1).max(16).div_ceil(64);
    let blocks = a.prompt.div_ceil(64).max(per_seq * a.batch) + 1;
    let t = Instant::now();
    let mut gm = GpuModel::upload(&model, launcher, GpuPrecision::Bf16, blocks)?;
    let upload_s = t.elapsed().as_secs_f64();
    let active_bytes = gm.active_weight_bytes();
    drop(model);
    let mut rand_token = random_tokens(c.vocab_size);
    // Warm-up: the first launches load kernels and cuBLAS's heuristics.
    let warm: Vec<u32> = (0..8).map(|_| rand_token()).collect();
    let mut s0 = GpuSequence::default();
    gm.forward(&mut [(&mut s0, &warm)], LogitsFor::LastToken)?;
    gm.release(&mut s0);

    let mut prefill = vec![];
    if a.prompt > 0 {
        for _ in 0..a.repetitions {
            let toks: Vec<u32> = (0..a.prompt).map(|_| rand_token()).collect();
            let mut seq = GpuSequence::default();
            let t = Instant::now();
            gm.forward(&mut [(&mut seq, &toks)], LogitsFor::LastToken)?;
            prefill.push(a.prompt as f64 / t.elapsed().as_secs_f64());
            gm.release(&mut seq);
        }
    }
    // Decode: `batch` sequences, each with --depth tokens of random context, one token each a
    // step, greedy.
    let mut decode = |batch: usize| -> Result<Vec<f64>> {
        let mut rates = vec![];
        for _ in 0..a.repetitions {
            let mut seqs: Vec<GpuSequence> = (0..batch).map(|_| GpuSequence::default()).collect();
            let mut next: Vec<[u32; 1]> = (0..batch).map(|_| [rand_token()]).collect();
            if a.depth > 0 {
                for seq in seqs.iter_mut() {
                    let ctx: Vec<u32> = (0..a.depth).map(|_| rand_token()).collect();
                    gm.forward(&mut [(seq, &ctx)], LogitsFor::LastToken)?;
                }
            }
            let t = Instant::now();
            for _ in 0..a.gen {
                let mut steps: Vec<(&mut GpuSequence, &[u32])> = seqs
                    .iter_mut()
                    .zip(&next)
                    .map(|(s, t)| (s, &t[..]))
                    .collect();
                let logits = gm.forward(&mut steps, LogitsFor::LastToken)?;
                for (k, n) in next.iter_mut().enumerate() {
                    n[0] = deepseek_engine::sampler::argmax(
                        &logits[k * c.vocab_size..(k + 1) * c.vocab_size],
                    );
                }
            }
            rates.push((batch * a.gen) as f64 / t.elapsed().as_secs_f64());
            for seq in seqs.iter_mut() {
                gm.release(seq);
            }
        }
        Ok(rates)
    };
    let (mut one, mut many) = (vec![], vec![]);
    if a.gen > 0 {
        one = decode(1)?;
        if a.batch > 1 {
            many = decode(a.batch)?;
        }
    }
    let pp = (!prefill.is_empty()).then(|| median(&mut prefill));
    let tg = (!one.is_empty()).then(|| median(&mut one));
    let tg_batch = (!many.is_empty()).then(|| median(&mut many));
    let v = json!({
        "device": device,
        "model": dir.display().to_string(),
        "weights": "bf16 (f32 tensors kept f32)",
        "upload_s": upload_s,
        "prompt": a.prompt,
        "gen": a.gen,
        "depth": a.depth,
        "batch": a.batch,
        "prefill_tok_s": pp,
        "decode_tok_s": tg,
        "decode_weights_gb_s": tg.map(|r| r * active_bytes as f64 / 1e9),
        "batch_decode_tok_s": tg_batch,
    });
    if a.json {
        println!("{v}");
        return Ok(());
    }
    println!("device       {device}");
    println!(
        "model        {} (uploaded in {upload_s:.1} s)",
        dir.display()
    );
    if let Some(r) = pp {
        println!("prefill      {r:.1} tok/s ({} tokens)", a.prompt);
    }
    if let Some(r) = tg {
        println!(
            "decode       {r:.1} tok/s at depth {} (active weights read at {:.1} GB/s)",
            a.depth,
            r * active_bytes as f64 / 1e9
        );
    }
    if let Some(r) = tg_batch {
        println!("decode x{:<4}  {r:.1} tok/s in all", a.batch);
    }
    Ok(())
}
