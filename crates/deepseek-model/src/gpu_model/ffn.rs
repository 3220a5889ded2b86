//! The feed-forward half of a layer on the device: the dense SwiGLU MLP and DeepSeekMoE (router
//! on the GPU, each token's experts read by the id it wrote, shared experts), as mlp.rs and
//! moe.rs compute them.

use deepseek_cuda::launch::{upload, Buffer, Launch};
use deepseek_cuda::ops::{self, RouterRule, TopkMethod as GpuTopk};
use deepseek_kernels::Matrix;
use deepseek_loader::{ScoringFunc, TopkMethod};

use super::error::{GpuModelError, Result};
use super::step::Step;
use super::weights::{GpuPrecision, Weight};
use crate::layer::FeedForward;
use crate::mlp::Mlp;
use crate::moe::Moe;

pub struct GpuMlp {
    /// gate_proj rows, then up_proj rows.
    gate_up: Weight,
    down: Weight,
}

impl GpuMlp {
    pub fn new(l: &dyn Launch, m: &Mlp, p: GpuPrecision) -> Result<GpuMlp> {
        Ok(GpuMlp {
            gate_up: Weight::stacked(l, &[&m.gate_proj, &m.up_proj], p)?,
            down: Weight::new(l, &m.down_proj, p)?,
        })
    }
}

pub struct GpuMoe {
    router: Weight,
    bias: Option<Buffer>,
    rule: RouterRule,
    /// Every expert's `[gate; up]`: `[E][2I][H]`.
    gate_up: Weight,
    /// Every expert's down_proj: `[E][H][I]`.
    down: Weight,
    inter: usize,
    shared: Option<GpuMlp>,
}

impl GpuMoe {
    pub fn new(l: &dyn Launch, m: &Moe, p: GpuPrecision) -> Result<GpuMoe> {
        let c = &m.router.cfg;
        let experts: Vec<&Mlp> = m.experts.iter().flatten().collect();
        if experts.len() != c.n_routed_experts {
            return Err(GpuModelError::Unsupported(
                "some routed experts live on other ranks (expert parallelism)".into(),
            ));
        }
        let gate_up: Vec<&Matrix> = experts
            .iter()
            .flat_map(|e| [&e.gate_proj, &e.up_proj])
            .collect();
        let down: Vec<&Matrix> = experts.iter().map(|e| &e.down_proj).collect();
        let (normalize, scale) = m.router.weight_rule();
        let rule = RouterRule {
            n_experts: c.n_routed_experts,
            top_k: c.num_experts_per_tok,
            n_group: c.n_group.max(1),
            topk_group: c.topk_group.max(1),
            sigmoid: c.scoring_func == ScoringFunc::Sigmoid,
            method: match c.topk_method {
                TopkMethod::Greedy => GpuTopk::Greedy,
                TopkMethod::GroupLimitedGreedy => GpuTopk::GroupLimitedGreedy,
                TopkMethod::NoauxTc => GpuTopk::NoauxTc,
            },
            normalize,
            scale,
            scaling: c.routed_scaling_factor,
        };
        Ok(GpuMoe {
            // The router's product stays f32, as the reference computes it.
            router: Weight::new(l, m.router.weight(), GpuPrecision::Exact)?,
            bias: match &m.router.e_score_correction_bias {
                Some(b) if c.topk_method == TopkMethod::NoauxTc => Some(upload(l, b)?),
                _ => None,
            },
            rule,
            gate_up: Weight::stacked(l, &gate_up, p)?,
            down: Weight::stacked(l, &down, p)?,
            inter: c.moe_intermediate_size,
            shared: m
                .shared_experts
                .as_ref()
                .map(|s| GpuMlp::new(l, s, p))
                .transpose()?,
        })
    }
}

impl GpuMlp {
    /// SwiGLU MLP on the step's rows of `h` into `out` (accumulating when asked).
    pub fn forward(&self, st: &Step, h: u64, out: u64, accumulate: bool) -> Result<()> {
        let (n, inter) = (st.n, self.down.cols);
        let gu = st.tmp(n * 2 * inter * 4)?;
        st.linear(&self.gate_up, h, n, gu, false)?;
        let act = st.tmp(n * inter * 4)?;
        ops::silu_mul(st.l, gu, act, inter, n)?;
        st.linear(&self.down, act, n, out, accumulate)
    }
}

impl GpuMoe {
    /// DeepSeekMoE on the step's rows of `h` (`hidden` wide), into `out`.
    pub fn forward(&self, st: &Step, h: u64, hidden: usize, out: u64) -> Result<()> {
        let (l, n) = (st.l, st.n);
        let (e, k, inter) = (self.rule.n_experts, self.rule.top_k, self.inter);
        let logits = st.tmp(n * e * 4)?;
        st.linear(&self.router, h, n, logits, false)?;
        let (ids, weights) = (st.tmp(n * k * 4)?, st.tmp(n * k * 4)?);
        let bias = self.bias.as_ref().map_or(0, |b| b.ptr());
        ops::route_topk(l, logits, bias, ids, weights, n, &self.rule)?;
        let slots = n * k;
        let gu = st.tmp(slots * 2 * inter * 4)?;
        let gate_up = (self.gate_up.buf.ptr(), self.gate_up.dtype);
        ops::moe_gemv(
            l,
            gate_up.0,
            gate_up.1,
            h,
            ids,
            gu,
            slots,
            2 * inter,
            hidden,
            k,
            false,
        )?;
        let act = st.tmp(slots * inter * 4)?;
        ops::silu_mul(l, gu, act, inter, slots)?;
        let y = st.tmp(slots * hidden * 4)?;
        let down = (self.down.buf.ptr(), self.down.dtype);
        ops::moe_gemv(
            l, down.0, down.1, act, ids, y, slots, hidden, inter, k, true,
        )?;
        if let Some(s) = &self.shared {
            s.forward(st, h, out, false)?;
        }
        ops::moe_combine(l, y, weights, out, hidden, n, k, self.shared.is_some())?;
        Ok(())
    }
}

#[allow(clippy::large_enum_variant)] // one per layer
pub enum GpuFfn {
    Dense(GpuMlp),
    Moe(GpuMoe),
}

impl GpuFfn {
    pub fn new(l: &dyn Launch, f: &FeedForward, p: GpuPrecision) -> Result<GpuFfn> {
        Ok(match f {
            FeedForward::Dense(m) => GpuFfn::Dense(GpuMlp::new(l, m, p)?),
            FeedForward::Moe(m) => GpuFfn::Moe(GpuMoe::new(l, m, p)?),
        })
    }

    /// Adds the feed-forward output on the step's rows of `h` to the residual `x`.
    pub fn forward(&self, st: &Step, h: u64, hidden: usize, x: u64) -> Result<()> {
        match self {
            GpuFfn::Dense(m) => m.forward(st, h, x, true),
            GpuFfn::Moe(m) => {
                let o = st.tmp(st.n * hidden * 4)?;
                m.forward(st, h, hidden, o)?;
                Ok(ops::add(st.l, x, o, st.n * hidden)?)
            }
        }
    }
}
