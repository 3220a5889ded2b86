//! DeepSeekMoE layer: shared experts on every token plus the routed experts each token chose.
//!
//! The whole batch is routed first, tokens are grouped by expert, and each chosen expert runs
//! once over its tokens (its weights are read once per step, however many tokens chose it).
//! Experts nobody chose are never touched.

use deepseek_kernels::simd::axpy;
use deepseek_kernels::Precision;
use deepseek_loader::{Family, LoadError, ModelConfig, MoeConfig, WeightStore};

use crate::expert_parallel::ExpertParallel;
use crate::mlp::Mlp;
use crate::observe::{show, MatmulObserver};
use crate::router::{Router, Routing};

/// Steps of at most this many tokens run the shared experts as one job beside the routed ones
/// rather than splitting their matmuls across threads.
const SMALL_BATCH: usize = 4;

pub struct Moe {
    /// The checkpoint's prefix (`model.layers.3.mlp`).
    pub prefix: String,
    /// The decoder layer (what expert parallelism's messages name).
    pub layer: usize,
    pub router: Router,
    /// Every routed expert, `None` for those another rank holds under expert parallelism.
    pub experts: Vec<Option<Mlp>>,
    pub shared_experts: Option<Mlp>,
}

/// The routed experts of the MoE block at `prefix`, loading only those `held` says this
/// process holds (all of them, but under expert parallelism).
pub(crate) fn load_routed_experts(
    w: &WeightStore,
    cfg: &ModelConfig,
    m: &MoeConfig,
    prefix: &str,
    held: &dyn Fn(usize) -> bool,
) -> Result<Vec<Option<Mlp>>, LoadError> {
    (0..m.n_routed_experts)
        .map(|e| {
            held(e)
                .then(|| {
                    Mlp::load(
                        w,
                        &format!("{prefix}.experts.{e}"),
                        cfg.hidden_size,
                        m.moe_intermediate_size,
                    )
                })
                .transpose()
        })
        .collect()
}

impl Moe {
    /// The MoE block of decoder layer `layer`, shaped by `m` (the config's `moe`), with only
    /// this rank's routed experts under expert parallelism (`ep`).
    pub fn load(
        w: &WeightStore,
        cfg: &ModelConfig,
        m: &MoeConfig,
        layer: usize,
        ep: Option<&ExpertParallel>,
    ) -> Result<Self, LoadError> {
        let hid = cfg.hidden_size;
        let prefix = &format!("model.layers.{layer}.mlp");
        let experts = load_routed_experts(w, cfg, m, prefix, &|e| ep.is_none_or(|ep| ep.holds(e)))?;
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
            prefix: prefix.to_string(),
            layer,
            router: Router::load(w, m, family, hid, &format!("{prefix}.gate"))?,
            experts,
            shared_experts,
        })
    }

    /// `x`: normalised `[n, hidden]` → `out` `[n, hidden]`. Returns the routing decisions.
    /// `obs` sees the router's input and each expert's, over the tokens routed to it. Under
    /// expert parallelism (`ep`, on rank 0) the other ranks run their experts on the tokens
    /// routed to them meanwhile, and their sums are added in.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
        ep: Option<&ExpertParallel>,
    ) -> Vec<Routing> {
        let routing = self.router.route_tokens(x, n, p);
        show(obs, &self.prefix, "gate", x, n);
        let dispatched = ep
            .filter(|ep| ep.ranks() > 1)
            .map(|ep| (ep, ep.dispatch(self.layer, x, n, &routing)));
        // Group (token, weight) by expert.
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![vec![]; self.experts.len()];
        for (t, r) in routing.iter().enumerate() {
            for (&e, &w) in r.experts.iter().zip(&r.weights) {
                by_expert[e].push((t, w));
            }
        }
        run_experts(
            &self.experts,
            self.shared_experts.as_ref(),
            &by_expert,
            x,
            n,
            out,
            p,
            obs,
        );
        if let Some((ep, d)) = dispatched {
            // A follower that answers out of turn has lost step with this process: nothing
            // after it can be trusted.
            if let Err(e) = ep.combine(d, out) {
                panic!("expert parallelism: {e}");
            }
        }
        routing
    }
}

/// `out` = the sum over the held routed experts (`Some` in `experts`) of each one's output on
/// its tokens (`by_expert[e]`: token and weight), plus `shared`'s on every token.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_experts(
    experts: &[Option<Mlp>],
    shared: Option<&Mlp>,
    by_expert: &[Vec<(usize, f32)>],
    x: &[f32],
    n: usize,
    out: &mut [f32],
    p: Precision,
    obs: Option<&dyn MatmulObserver>,
) {
    let hid = x.len() / n.max(1);
    out.fill(0.0);
    let chosen: Vec<(usize, &Mlp, usize)> = by_expert
        .iter()
        .enumerate()
        .filter_map(|(e, toks)| match (&experts[e], toks.len()) {
            (Some(mlp), m) if m > 0 => Some((e, mlp, m)),
            _ => None,
        })
        .collect();
    let gather = |toks: &[(usize, f32)]| {
        let mut xs = Vec::with_capacity(toks.len() * hid);
        for &(t, _) in toks {
            xs.extend_from_slice(&x[t * hid..(t + 1) * hid]);
        }
        xs
    };
    let scatter = |out: &mut [f32], toks: &[(usize, f32)], ys: &[f32]| {
        for (i, &(t, w)) in toks.iter().enumerate() {
            axpy(
                w,
                &ys[i * hid..(i + 1) * hid],
                &mut out[t * hid..(t + 1) * hid],
            );
        }
    };
    // Whole experts side by side, one job per thread at a time, rather than each expert's
    // matmuls split across the threads: an expert's own matrices are small (a 512-token
    // prompt gives each routed expert ~48 tokens), so splitting them costs a fork-join per
    // matmul and leaves a thread idle through every serial step between them (gathering,
    // quantizing the activations, SiLU). Decode-sized steps also run the shared experts as
    // one more job; longer steps split theirs (each token meets them) across the threads.
    let shared_job = shared.filter(|_| n <= SMALL_BATCH);
    // Each job gathers its own tokens' rows when it runs: gathered for every expert first,
    // the copies of a 512-token prompt (6 per token) were 25 MB at once.
    let mut jobs: Vec<(Option<usize>, &Mlp, usize)> = chosen
        .iter()
        .map(|&(e, mlp, m)| (Some(e), mlp, m))
        .collect();
    if let Some(shared) = shared_job {
        jobs.push((None, shared, n));
    }
    // Largest jobs first (the pool's threads claim tasks in order): whole jobs cannot be
    // split, so a big job taken last leaves the other threads idle. V2-Lite's two shared
    // experts are one MLP twice a routed expert's size; last in the list (6 + 2 units on
    // two threads) it would run alone at the end, 5 units of time instead of 4
    // (BENCHMARKS.md, "the MoE's expert jobs in order", has the measured gain). Splitting
    // every expert's matmuls by rows instead (two regions per layer, balanced to the
    // row chunk) measured the same: 41.5 vs 41.6 tok/s, medians of five q4_k pairs, and
    // the same share of the run in the kernels in a profile (82.5–84% per thread).
    jobs.sort_by_cached_key(|&(_, mlp, m)| std::cmp::Reverse(m * mlp.weight_bytes()));
    let mut results: Vec<(Option<usize>, Vec<f32>)> =
        deepseek_kernels::threads::map(jobs.len(), |i| {
            let (e, mlp, m) = jobs[i];
            let mut ys = vec![0.0; m * hid];
            match e {
                Some(e) => mlp.forward_serial(&gather(&by_expert[e]), m, &mut ys, p, obs),
                None => mlp.forward_serial(x, m, &mut ys, p, obs),
            }
            (e, ys)
        });
    if let (Some(shared), None) = (shared, shared_job) {
        let mut ys = vec![0.0; n * hid];
        shared.forward(x, n, &mut ys, p, obs);
        results.push((None, ys));
    }
    // Summed in expert order, shared last, whatever order they ran in.
    results.sort_by_key(|&(e, _)| e.unwrap_or(usize::MAX));
    for (e, ys) in results {
        match e {
            Some(e) => scatter(out, &by_expert[e], &ys),
            None => deepseek_kernels::ops::add_inplace(out, &ys),
        }
    }
}
