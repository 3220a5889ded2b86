//! Importance matrices (`deepseek imatrix`): the mean square of every input column of every
//! weight matrix over a text, as llama.cpp's `llama-imatrix` measures it. The text is cut into
//! chunks of `chunk` tokens, each evaluated from an empty cache with BOS first; a routed expert
//! counts only the tokens routed to it. Quantizing with it (`quantize --imatrix`) weights each
//! column's rounding error by how large its inputs are.

use std::collections::HashMap;
use std::sync::Mutex;

use deepseek_cache::{CacheDtype, SequenceCache};
use deepseek_loader::gguf_export::ExportPlan;
use deepseek_loader::imatrix::{Entry, Imatrix};
use deepseek_model::{MatmulObserver, Model, ModelError};

/// Σ x² per input column and the rows seen, per checkpoint matrix name.
#[derive(Default)]
pub struct Collector {
    stats: Mutex<HashMap<String, (Vec<f64>, u64)>>,
}

impl MatmulObserver for Collector {
    fn observe(&self, weight: &str, x: &[f32], rows: usize) {
        if rows == 0 {
            return;
        }
        let cols = x.len() / rows;
        let mut sq = vec![0.0f64; cols];
        for r in x.chunks_exact(cols) {
            for (s, &v) in sq.iter_mut().zip(r) {
                *s += (v as f64) * (v as f64);
            }
        }
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let e = stats
            .entry(weight.to_string())
            .or_insert_with(|| (vec![0.0; cols], 0));
        if e.0.len() == cols {
            e.0.iter_mut().zip(&sq).for_each(|(a, b)| *a += b);
            e.1 += rows as u64;
        }
    }
}

impl Collector {
    /// Runs `tokens` through `model` in chunks of `chunk` tokens (the first of each replaced by
    /// `bos` where given, as llama-imatrix does); `progress(done, total)` per chunk. A tail
    /// shorter than a chunk is left out. Returns the chunks evaluated.
    pub fn run(
        &self,
        model: &Model,
        tokens: &[u32],
        chunk: usize,
        bos: Option<u32>,
        max_chunks: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<usize, ModelError> {
        let total = (tokens.len() / chunk).min(max_chunks.unwrap_or(usize::MAX));
        // One pool for every chunk: each chunk's blocks go back before the next.
        let mut pool = model.new_cache_pool(chunk, CacheDtype::F32);
        for c in 0..total {
            let mut ids = tokens[c * chunk..(c + 1) * chunk].to_vec();
            if let Some(b) = bos {
                ids[0] = b;
            }
            let mut cache = SequenceCache::default();
            let run = model.forward_observed(&mut pool, &ids, &mut cache, self);
            pool.release(&mut cache);
            run?;
            progress(c + 1, total);
        }
        Ok(total)
    }

    /// The statistics under the GGUF names of `plan` (experts stacked as llama.cpp stacks
    /// them); matrices never seen are left out, experts never chosen get zero rows.
    pub fn to_imatrix(
        &self,
        plan: &ExportPlan,
        chunk_size: usize,
        chunks: usize,
        dataset: &str,
    ) -> Imatrix {
        let stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut m = Imatrix {
            datasets: vec![dataset.to_string()],
            chunk_count: chunks as u32,
            chunk_size: chunk_size as u32,
            ..Default::default()
        };
        for (gguf, hf) in plan.matrix_sources() {
            let Some(cols) = hf.iter().find_map(|n| stats.get(n).map(|s| s.0.len())) else {
                continue;
            };
            let mut e = Entry {
                sums: Vec::with_capacity(hf.len() * cols),
                counts: Vec::with_capacity(hf.len()),
            };
            for n in &hf {
                match stats.get(n) {
                    Some((s, c)) if s.len() == cols => {
                        e.sums.extend(s.iter().map(|&v| v as f32));
                        e.counts.push(*c as f32);
                    }
                    _ => {
                        e.sums.extend(std::iter::repeat_n(0.0, cols));
                        e.counts.push(0.0);
                    }
                }
            }
            m.entries.insert(gguf, e);
        }
        m
    }
}
