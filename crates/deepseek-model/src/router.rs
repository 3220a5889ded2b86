//! The DeepSeekMoE router: which routed experts each token goes to, and with what weight.
//!
//! - V2 (`softmax` scores): `greedy` top-k, or `group_limited_greedy` (group score = the best
//!   expert score in the group; only experts of the `topk_group` best groups compete). Weights are
//!   the chosen scores, normalised when `norm_topk_prob` (and then *not* scaled, as DeepSeek's
//!   original code does), else times `routed_scaling_factor`.
//! - V3 (`sigmoid` scores, `noaux_tc`): `e_score_correction_bias` is added only to *choose*
//!   experts; group score = sum of the group's top-2 biased scores; unselected groups are masked
//!   with -inf. Weights are the unbiased scores, normalised when `norm_topk_prob`, then times
//!   `routed_scaling_factor`.
//!
//! The router matmul is done in f32 whatever the checkpoint's dtype, as the reference does.

use deepseek_kernels::ops::{sigmoid, softmax};
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{Family, LoadError, MoeConfig, ScoringFunc, TopkMethod, WeightStore};

pub struct Router {
    pub(crate) cfg: MoeConfig,
    family: Family,
    /// `[n_routed_experts, hidden]`, converted to f32 at load.
    weight: Matrix,
    pub(crate) e_score_correction_bias: Option<Vec<f32>>,
}

/// One token's routing decision, experts in the order top-k chose them.
#[derive(Clone, Debug, PartialEq)]
pub struct Routing {
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

impl Router {
    pub fn load(
        w: &WeightStore,
        cfg: &MoeConfig,
        family: Family,
        hidden: usize,
        prefix: &str,
    ) -> Result<Self, LoadError> {
        let m = w.matrix(&format!("{prefix}.weight"), cfg.n_routed_experts, hidden)?;
        let weight = Matrix::from_f32(m.rows, m.cols, m.to_f32());
        let bias_name = format!("{prefix}.e_score_correction_bias");
        let e_score_correction_bias = if w.contains(&bias_name) {
            Some(w.vector(&bias_name, cfg.n_routed_experts)?)
        } else {
            None
        };
        if cfg.topk_method == TopkMethod::NoauxTc && e_score_correction_bias.is_none() {
            return Err(LoadError::MissingTensor {
                name: bias_name,
                dir: w.dir.clone(),
            });
        }
        Ok(Router {
            cfg: cfg.clone(),
            family,
            weight,
            e_score_correction_bias,
        })
    }

    pub fn weight(&self) -> &Matrix {
        &self.weight
    }

    pub fn top_k(&self) -> usize {
        self.cfg.num_experts_per_tok
    }

    /// Raw router logits `[n, n_routed_experts]`.
    pub fn logits(&self, x: &[f32], n: usize, p: Precision) -> Vec<f32> {
        let mut logits = vec![0.0; n * self.cfg.n_routed_experts];
        matmul(&self.weight, x, n, &mut logits, p);
        logits
    }

    /// Routes every token of `x` (`[n, hidden]`, normalised).
    pub fn route_tokens(&self, x: &[f32], n: usize, p: Precision) -> Vec<Routing> {
        let e = self.cfg.n_routed_experts;
        self.logits(x, n, p)
            .chunks_exact(e)
            .map(|l| self.route_one(l))
            .collect()
    }

    /// The routing rule for one token's logits.
    pub fn route_one(&self, logits: &[f32]) -> Routing {
        let c = &self.cfg;
        let e = c.n_routed_experts;
        let mut scores = logits.to_vec();
        match c.scoring_func {
            ScoringFunc::Softmax => softmax(&mut scores),
            ScoringFunc::Sigmoid => scores.iter_mut().for_each(|s| *s = sigmoid(*s)),
        }
        // Scores used to choose; the bias (V3) shifts choice only, never the weights.
        let mut choice: Vec<f32> = match &self.e_score_correction_bias {
            Some(b) if c.topk_method == TopkMethod::NoauxTc => {
                scores.iter().zip(b).map(|(s, b)| s + b).collect()
            }
            _ => scores.clone(),
        };
        if c.topk_method != TopkMethod::Greedy && c.n_group > 1 {
            let gsize = e / c.n_group;
            let group_scores: Vec<f32> = choice
                .chunks_exact(gsize)
                .map(|g| match c.topk_method {
                    TopkMethod::NoauxTc => {
                        top_k_indices(g, 2.min(gsize)).iter().map(|&i| g[i]).sum()
                    }
                    _ => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                })
                .collect();
            let keep = top_k_indices(&group_scores, c.topk_group);
            for (gi, g) in choice.chunks_exact_mut(gsize).enumerate() {
                if !keep.contains(&gi) {
                    g.fill(f32::NEG_INFINITY);
                }
            }
        }
        let experts = top_k_indices(&choice, c.num_experts_per_tok);
        let mut weights: Vec<f32> = experts.iter().map(|&i| scores[i]).collect();
        let (normalise, scale) = self.weight_rule();
        if normalise {
            let denom: f32 = weights.iter().sum::<f32>() + 1e-20;
            weights.iter_mut().for_each(|w| *w /= denom);
        }
        if scale {
            weights
                .iter_mut()
                .for_each(|w| *w *= c.routed_scaling_factor);
        }
        Routing { experts, weights }
    }
}

impl Router {
    /// Whether the chosen scores are normalised to sum 1, and whether they are then times
    /// `routed_scaling_factor`: DeepSeek-V2's code scales only when it does not normalise; V3
    /// always scales.
    pub fn weight_rule(&self) -> (bool, bool) {
        let c = &self.cfg;
        let normalise = c.num_experts_per_tok > 1 && c.norm_topk_prob;
        (normalise, !normalise || self.family == Family::DeepseekV3)
    }
}

/// Indices of the `k` largest values, largest first (ties: lower index first).
pub fn top_k_indices(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| {
        v[b].partial_cmp(&v[a])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(
        method: TopkMethod,
        scoring: ScoringFunc,
        family: Family,
        norm: bool,
        bias: Option<Vec<f32>>,
    ) -> Router {
        Router {
            cfg: MoeConfig {
                n_routed_experts: 8,
                n_shared_experts: 1,
                num_experts_per_tok: 2,
                moe_intermediate_size: 4,
                first_k_dense_replace: 0,
                moe_layer_freq: 1,
                n_group: 4,
                topk_group: 2,
                topk_method: method,
                scoring_func: scoring,
                norm_topk_prob: norm,
                routed_scaling_factor: 2.0,
            },
            family,
            weight: Matrix::from_f32(8, 1, vec![0.0; 8]),
            e_score_correction_bias: bias,
        }
    }

    #[test]
    fn group_limited_greedy_keeps_best_groups_by_max() {
        // Groups: [0,1] [2,3] [4,5] [6,7]. Group maxima 0.9, 0.8, 0.85, 0.1 → keep groups 0 and 2.
        let r = router(
            TopkMethod::GroupLimitedGreedy,
            ScoringFunc::Softmax,
            Family::DeepseekV2,
            false,
            None,
        );
        let logits = [0.9f32, 0.0, 0.8, 0.79, 0.85, 0.84, 0.1, 0.0];
        let out = r.route_one(&logits);
        assert_eq!(out.experts, vec![0, 4]);
        let mut s = logits.to_vec();
        softmax(&mut s);
        assert!((out.weights[0] - 2.0 * s[0]).abs() < 1e-7);
    }

    #[test]
    fn noaux_tc_chooses_with_bias_but_weights_without() {
        let bias = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0];
        let r = router(
            TopkMethod::NoauxTc,
            ScoringFunc::Sigmoid,
            Family::DeepseekV3,
            true,
            Some(bias),
        );
        let logits = [3.0f32, 2.9, -1.0, -1.0, 1.0, 1.0, -4.0, -4.0];
        let out = r.route_one(&logits);
        // Group 3 wins through the bias of expert 6 (sum of top-2), group 0 on its own merit.
        assert_eq!(out.experts, vec![6, 0]);
        let (a, b) = (sigmoid(-4.0), sigmoid(3.0));
        assert!((out.weights[0] - 2.0 * a / (a + b)).abs() < 1e-6);
    }

    #[test]
    fn v2_normalised_weights_are_not_scaled() {
        let r = router(
            TopkMethod::Greedy,
            ScoringFunc::Softmax,
            Family::DeepseekV2,
            true,
            None,
        );
        let out = r.route_one(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(out.experts, vec![2, 1]);
        assert!((out.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }
}
