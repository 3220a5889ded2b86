//! Rotary position embedding tables: plain, linear-scaled, and YaRN exactly as DeepSeek-V2's
//! `DeepseekV2YarnRotaryEmbedding` computes them.

use deepseek_loader::{ModelConfig, RopeScaling};

pub struct Rope {
    /// Per pair i < dim/2.
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN: mscale(factor, mscale) / mscale(factor, mscale_all_dim)).
    magnitude: f32,
    position_divisor: f32,
}

/// YaRN's attention temperature: `0.1 · m · ln(s) + 1` for `s > 1`.
pub fn yarn_mscale(scale: f32, m: f32) -> f32 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * m * scale.ln() + 1.0
    }
}

fn yarn_correction_dim(num_rotations: f64, dim: usize, base: f64, max_pos: usize) -> f64 {
    (dim as f64 * (max_pos as f64 / (num_rotations * 2.0 * std::f64::consts::PI)).ln())
        / (2.0 * base.ln())
}

impl Rope {
    pub fn new(cfg: &ModelConfig) -> Self {
        let dim = cfg.rope_dim();
        let base = cfg.rope_theta as f64;
        // torch computes base ** (arange(0, dim, 2) / dim) in float32.
        let pow = |i: usize| (base as f32).powf((2 * i) as f32 / dim as f32);
        let freq_extra: Vec<f32> = (0..dim / 2).map(|i| 1.0 / pow(i)).collect();
        match cfg.rope_scaling {
            RopeScaling::None => Rope {
                inv_freq: freq_extra,
                magnitude: 1.0,
                position_divisor: 1.0,
            },
            RopeScaling::Linear { factor } => Rope {
                inv_freq: freq_extra,
                magnitude: 1.0,
                position_divisor: factor,
            },
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
            } => {
                let low = yarn_correction_dim(
                    beta_fast as f64,
                    dim,
                    base,
                    original_max_position_embeddings,
                )
                .floor()
                .max(0.0);
                let high = yarn_correction_dim(
                    beta_slow as f64,
                    dim,
                    base,
                    original_max_position_embeddings,
                )
                .ceil()
                .min(dim as f64 - 1.0);
                let (low, mut high) = (low as f32, high as f32);
                if low == high {
                    high += 0.001;
                }
                let inv_freq = (0..dim / 2)
                    .map(|i| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extra_mask = 1.0 - ramp;
                        let inter = 1.0 / (factor * pow(i));
                        inter * (1.0 - extra_mask) + freq_extra[i] * extra_mask
                    })
                    .collect();
                Rope {
                    inv_freq,
                    magnitude: yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim),
                    position_divisor: 1.0,
                }
            }
        }
    }

    /// cos and sin for every pair at `pos` (each `dim/2` long), magnitude included.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let p = pos as f32 / self.position_divisor;
        for (i, &f) in self.inv_freq.iter().enumerate() {
            let angle = p * f; // float32 product, as torch.outer(t, inv_freq)
            cos[i] = angle.cos() * self.magnitude;
            sin[i] = angle.sin() * self.magnitude;
        }
    }
}

/// MLA's softmax scale: `qk_head_dim^-0.5 · mscale(factor, mscale_all_dim)²` under YaRN.
pub fn mla_softmax_scale(cfg: &ModelConfig) -> f32 {
    let qk = cfg.mla().map_or(cfg.head_dim, |m| m.qk_head_dim()) as f32;
    let mut scale = 1.0 / qk.sqrt();
    if let RopeScaling::Yarn {
        factor,
        mscale_all_dim,
        ..
    } = cfg.rope_scaling
    {
        if mscale_all_dim != 0.0 {
            let m = yarn_mscale(factor, mscale_all_dim);
            scale *= m * m;
        }
    }
    scale
}
