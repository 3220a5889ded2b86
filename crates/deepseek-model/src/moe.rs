//! DeepSeekMoE layer: shared experts on every token plus the routed experts each token chose.
//!
//! The whole batch is routed first, tokens are grouped by expert, and each chosen expert runs
//! once over its tokens (its weights are read once per step, however many tokens chose it).
//! Experts nobody chose are never touched.

use deepseek_kernels::simd::axpy;
use deepseek_loader::{Family, LoadError, ModelConfig, WeightStore};

use crate::mlp::Mlp;
use crate::router::{Router, Routing};

pub struct Moe {
    pub router: Router,
    pub experts: Vec<Mlp>,
    pub shared_experts: Option<Mlp>,
}

impl Moe {
    pub fn load(w: &WeightStore, cfg: &ModelConfig, prefix: &str) -> Result<Self, LoadError> {
        let m = cfg.moe.as_ref().expect("MoE config");
        let hid = cfg.hidden_size;
        let experts = (0..m.n_routed_experts)
            .map(|e| {
                Mlp::load(
                    w,
                    &format!("{prefix}.experts.{e}"),
                    hid,
                    m.moe_intermediate_size,
                )
            })
            .collect::<Result<_, _>>()?;
        let shared_experts = if m.n_shared_experts > 0 {
            Some(Mlp::load(
                w,
                &format!("{prefix}.shared_experts"),
                hid,
                m.moe_intermediate_size * m.n_shared_experts,
            )?)
        } else {
            None
        };
        let family = if cfg.family == Family::DeepseekV3 {
            Family::DeepseekV3
        } else {
            Family::DeepseekV2
        };
        Ok(Moe {
            router: Router::load(w, m, family, hid, &format!("{prefix}.gate"))?,
            experts,
            shared_experts,
        })
    }

    /// `x`: normalised `[n, hidden]` → `out` `[n, hidden]`. Returns the routing decisions.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) -> Vec<Routing> {
        let hid = x.len() / n.max(1);
        let routing = self.router.route_tokens(x, n);
        // Group (token, weight) by expert.
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![vec![]; self.experts.len()];
        for (t, r) in routing.iter().enumerate() {
            for (&e, &w) in r.experts.iter().zip(&r.weights) {
                by_expert[e].push((t, w));
            }
        }
        out.fill(0.0);
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for (e, toks) in by_expert.iter().enumerate() {
            if toks.is_empty() {
                continue;
            }
            let m = toks.len();
            xs.clear();
            for &(t, _) in toks {
                xs.extend_from_slice(&x[t * hid..(t + 1) * hid]);
            }
            ys.resize(m * hid, 0.0);
            self.experts[e].forward(&xs, m, &mut ys);
            for (i, &(t, w)) in toks.iter().enumerate() {
                axpy(
                    w,
                    &ys[i * hid..(i + 1) * hid],
                    &mut out[t * hid..(t + 1) * hid],
                );
            }
        }
        if let Some(shared) = &self.shared_experts {
            let mut s = vec![0.0; n * hid];
            shared.forward(x, n, &mut s);
            deepseek_kernels::ops::add_inplace(out, &s);
        }
        routing
    }
}
