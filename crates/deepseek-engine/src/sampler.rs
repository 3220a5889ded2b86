//! Choosing the next token from logits: penalties, temperature, top-k, top-p, min-p, then a
//! seeded draw (same seed, same tokens). Temperature 0 is greedy.

use rand::{Rng, SeedableRng};

#[derive(Clone, Debug)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0 disables: drop tokens below `min_p` × the top probability.
    pub min_p: f32,
    /// 1.0 disables (CTRL-style: positive logits divided, negative multiplied).
    pub repetition_penalty: f32,
    /// OpenAI-style: subtract `frequency_penalty × count` and `presence_penalty × (count > 0)`.
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: None,
        }
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: rand::rngs::StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => rand::rngs::StdRng::seed_from_u64(s),
            None => rand::rngs::StdRng::from_os_rng(),
        };
        Sampler { params, rng }
    }

    /// Applies the penalties for tokens seen in `history` to `logits` in place.
    pub fn apply_penalties(&self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
            let mut counts = std::collections::HashMap::<u32, u32>::new();
            for &t in history {
                *counts.entry(t).or_default() += 1;
            }
            for (&t, &c) in &counts {
                let Some(l) = logits.get_mut(t as usize) else {
                    continue;
                };
                if p.repetition_penalty != 1.0 {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
                *l -= p.frequency_penalty * c as f32 + p.presence_penalty;
            }
        }
    }

    /// Next token for `logits` given the tokens so far (prompt and generated) in `history`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        self.sample_allowed(logits, history, None)
    }

    /// Like [`Sampler::sample`], choosing only among tokens `allowed` accepts (constrained
    /// output such as JSON mode): the others get probability zero.
    pub fn sample_allowed(
        &mut self,
        logits: &[f32],
        history: &[u32],
        allowed: Option<&dyn Fn(u32) -> bool>,
    ) -> u32 {
        let mut l = logits.to_vec();
        self.apply_penalties(&mut l, history);
        if let Some(allowed) = allowed {
            for (i, x) in l.iter_mut().enumerate() {
                if !allowed(i as u32) {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        let p = &self.params;
        if p.temperature <= 0.0 {
            return argmax(&l);
        }
        // Candidates sorted by logit, best first.
        let mut idx: Vec<u32> = (0..l.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| {
            l[b as usize]
                .partial_cmp(&l[a as usize])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        if p.top_k > 0 && p.top_k < idx.len() {
            idx.truncate(p.top_k);
        }
        let m = l[idx[0] as usize];
        let mut probs: Vec<f32> = idx
            .iter()
            .map(|&i| ((l[i as usize] - m) / p.temperature).exp())
            .collect();
        let z: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= z);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = probs.len();
            for (i, &x) in probs.iter().enumerate() {
                cum += x;
                if cum >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let cut = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&x| x >= cut).count().max(1);
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &x) in probs.iter().enumerate() {
            r -= x;
            if r <= 0.0 {
                return idx[i];
            }
        }
        idx[probs.len() - 1]
    }
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Log-softmax of `logits` (for logprobs and scoring).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = logits
        .iter()
        .map(|&x| ((x - m) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + m;
    logits.iter().map(|&x| x - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_seeded_sampling() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&logits, &[]), 1);
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(7),
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..20).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..20).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.contains(&2),
            "temperature 1 should sometimes pick the runner-up"
        );
    }

    #[test]
    fn top_k_one_and_min_p_restrict_to_best() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut s = Sampler::new(SamplingParams {
            temperature: 5.0,
            top_k: 1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            min_p: 0.99,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.1,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..50).all(|_| s.sample(&logits, &[]) == 1));
    }

    #[test]
    fn repetition_penalty_can_flip_greedy_choice() {
        let logits = [0.0, 2.0, 1.9];
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 1.2,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[1]), 2);
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[1]), 2);
    }
}
