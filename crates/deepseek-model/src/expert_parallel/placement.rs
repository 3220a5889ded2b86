//! Which process (rank) holds each routed expert.
//!
//! Contiguous ranges by default, sized so that every rank has the same expected expert work per
//! token (rank 0 also runs the shared experts, so it takes fewer routed ones), and cut at
//! V2/V3's expert-group boundaries where the groups share out nearly as evenly: group-limited
//! routing sends a token to at most `topk_group` groups, so with whole groups per rank a
//! token's experts live on at most `topk_group` ranks. `Even` gives every rank the same number
//! of experts instead (memory even, rank 0 busier). Round-robin
//! (expert `e` on rank `e mod N`) spreads every group over all ranks instead, which evens the
//! load when experts of one group are popular together, at the cost of every token meeting
//! every rank.

use deepseek_loader::MoeConfig;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PlacementPolicy {
    /// Contiguous ranges of experts, the work per token even (rank 0's shared experts
    /// counted), whole expert groups per rank where they share out nearly as evenly.
    #[default]
    Contiguous,
    /// Contiguous ranges with the same number of experts on every rank.
    Even,
    /// Expert `e` on rank `e mod ranks`.
    RoundRobin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertPlacement {
    ranks: usize,
    /// The rank of each routed expert.
    owner: Vec<usize>,
    policy: PlacementPolicy,
}

impl PlacementPolicy {
    pub fn name(self) -> &'static str {
        match self {
            PlacementPolicy::Contiguous => "contiguous",
            PlacementPolicy::Even => "even",
            PlacementPolicy::RoundRobin => "round-robin",
        }
    }
}

impl ExpertPlacement {
    /// The routed experts of `m` over `ranks` processes. An error (one line, naming the
    /// counts) when there are more ranks than experts: a follower with no expert has no part
    /// (rank 0 may hold none: it runs the shared experts).
    pub fn new(m: &MoeConfig, ranks: usize, policy: PlacementPolicy) -> Result<Self, String> {
        let e = m.n_routed_experts;
        if ranks == 0 || ranks > e {
            return Err(format!(
                "{ranks} ranks for {e} routed experts: expert parallelism needs 1 to {e} ranks (each holds at least one expert)"
            ));
        }
        let owner = match policy {
            PlacementPolicy::RoundRobin => (0..e).map(|x| x % ranks).collect(),
            PlacementPolicy::Contiguous | PlacementPolicy::Even => {
                let shares = match policy {
                    PlacementPolicy::Even => vec![1.0 / ranks as f64; ranks],
                    _ => shares(m, ranks),
                };
                let by_expert = contiguous_owners(e, 1, &shares);
                let groups = m.n_group.max(1);
                // Whole groups per rank where they share out nearly as evenly as single
                // experts do (the largest rank at most 10% over): a token then meets at most
                // `topk_group` ranks. Eight groups over seven followers would leave one rank
                // twice the others' experts, so there the experts are split one by one.
                if groups > 1 && groups >= ranks && e.is_multiple_of(groups) {
                    let by_group = contiguous_owners(e, e / groups, &shares);
                    let largest = |o: &[usize]| {
                        (0..ranks)
                            .map(|r| o.iter().filter(|&&x| x == r).count())
                            .max()
                            .unwrap_or(0)
                    };
                    if largest(&by_group) * 10 <= largest(&by_expert) * 11 {
                        return Ok(ExpertPlacement {
                            ranks,
                            owner: by_group,
                            policy,
                        });
                    }
                }
                by_expert
            }
        };
        Ok(ExpertPlacement {
            ranks,
            owner,
            policy,
        })
    }

    pub fn ranks(&self) -> usize {
        self.ranks
    }

    pub fn policy(&self) -> PlacementPolicy {
        self.policy
    }

    /// The rank holding routed expert `e`.
    pub fn owner(&self, e: usize) -> usize {
        self.owner[e]
    }

    /// The routed experts rank `rank` holds, in order.
    pub fn experts_of(&self, rank: usize) -> Vec<usize> {
        (0..self.owner.len())
            .filter(|&e| self.owner[e] == rank)
            .collect()
    }

    /// The most ranks one token's routed experts can live on: `k` experts on at most `k`
    /// ranks, and under group-limited routing at most the ranks of `topk_group` groups.
    pub fn max_ranks_per_token(&self, m: &MoeConfig) -> usize {
        let k = m.num_experts_per_tok.min(self.ranks);
        let groups = m.n_group.max(1);
        if groups <= 1 || m.topk_group >= groups || !m.n_routed_experts.is_multiple_of(groups) {
            return k;
        }
        let per_group = m.n_routed_experts / groups;
        let mut ranks_of_group: Vec<usize> = (0..groups)
            .map(|g| {
                let mut r: Vec<usize> = (g * per_group..(g + 1) * per_group)
                    .map(|e| self.owner[e])
                    .collect();
                r.sort_unstable();
                r.dedup();
                r.len()
            })
            .collect();
        ranks_of_group.sort_unstable_by(|a, b| b.cmp(a));
        k.min(ranks_of_group[..m.topk_group].iter().sum())
    }

    /// One line per rank: its experts (as ranges), their groups, and the bytes they hold
    /// (`expert_bytes[e]` for expert `e`, all layers together).
    pub fn report(&self, m: &MoeConfig, expert_bytes: &[usize]) -> Vec<String> {
        let groups = m.n_group.max(1);
        let per_group = m.n_routed_experts / groups;
        (0..self.ranks)
            .map(|r| {
                let experts = self.experts_of(r);
                let mut gs: Vec<usize> = experts.iter().map(|&e| e / per_group.max(1)).collect();
                gs.dedup();
                let group_note = if groups > 1 {
                    format!(", groups {}", ranges(&gs))
                } else {
                    String::new()
                };
                if experts.is_empty() {
                    return format!("rank {r}: no routed experts");
                }
                let bytes: usize = experts.iter().map(|&e| expert_bytes[e]).sum();
                format!(
                    "rank {r}: {} routed experts ({}){group_note}, {}",
                    experts.len(),
                    ranges(&experts),
                    human_bytes(bytes)
                )
            })
            .collect()
    }
}

/// Each rank's share of the routed experts under contiguous placement, so that each rank's
/// expected expert work per token is the same: a token runs `k` routed experts and rank 0 also
/// runs the shared ones (`S` routed experts' worth), so rank 0 takes `S / k` less than an even
/// share (none at all when that is more than it would have), and the followers split the rest.
fn shares(m: &MoeConfig, ranks: usize) -> Vec<f64> {
    if ranks == 1 {
        return vec![1.0];
    }
    let (k, shared) = (
        m.num_experts_per_tok.max(1) as f64,
        m.n_shared_experts as f64,
    );
    let follower = (1.0 + shared / k) / ranks as f64;
    let leader = 1.0 - (ranks - 1) as f64 * follower;
    if leader <= 0.0 {
        let mut s = vec![1.0 / (ranks - 1) as f64; ranks];
        s[0] = 0.0;
        return s;
    }
    let mut s = vec![follower; ranks];
    s[0] = leader;
    s
}

/// The owner of each of `e` experts, cut into contiguous units of `unit` experts shared out
/// by `shares`.
fn contiguous_owners(e: usize, unit: usize, shares: &[f64]) -> Vec<usize> {
    let bounds = balanced_bounds(e / unit, shares);
    (0..e)
        .map(|x| bounds.iter().rposition(|&b| b <= x / unit).unwrap())
        .collect()
}

/// The first unit of each rank: `units` split by `shares` in order, rank 0 possibly empty,
/// every other rank at least one unit.
fn balanced_bounds(units: usize, shares: &[f64]) -> Vec<usize> {
    let ranks = shares.len();
    let mut bounds = vec![0; ranks];
    let mut cumulative = 0.0;
    for r in 1..ranks {
        cumulative += shares[r - 1];
        let lowest = if r == 1 { 0 } else { bounds[r - 1] + 1 };
        let highest = units - (ranks - r);
        bounds[r] = ((units as f64 * cumulative).round() as usize).clamp(lowest, highest);
    }
    bounds
}

/// `1.25 GiB`, or `12.5 MiB` below a GiB.
pub fn human_bytes(b: usize) -> String {
    match b >= 1 << 30 {
        true => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        false => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

/// `0-3,8,10-11`: sorted numbers as ranges.
pub fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = vec![];
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(match j > i {
            true => format!("{}-{}", v[i], v[j]),
            false => v[i].to_string(),
        });
        i = j + 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use deepseek_loader::{ScoringFunc, TopkMethod};

    fn moe(e: usize, groups: usize, topk_group: usize, k: usize) -> MoeConfig {
        MoeConfig {
            n_routed_experts: e,
            n_shared_experts: 2,
            num_experts_per_tok: k,
            moe_intermediate_size: 8,
            first_k_dense_replace: 1,
            moe_layer_freq: 1,
            n_group: groups,
            topk_group,
            topk_method: TopkMethod::GroupLimitedGreedy,
            scoring_func: ScoringFunc::Softmax,
            norm_topk_prob: false,
            routed_scaling_factor: 1.0,
        }
    }

    #[test]
    fn every_expert_has_one_owner_and_every_follower_some() {
        for (e, g, ranks) in [(160, 8, 3), (64, 1, 4), (16, 4, 2), (160, 8, 16), (7, 1, 7)] {
            for policy in [
                PlacementPolicy::Contiguous,
                PlacementPolicy::Even,
                PlacementPolicy::RoundRobin,
            ] {
                let p = ExpertPlacement::new(&moe(e, g, 1, 6), ranks, policy).unwrap();
                let mut all: Vec<usize> = (0..ranks).flat_map(|r| p.experts_of(r)).collect();
                all.sort_unstable();
                assert_eq!(
                    all,
                    (0..e).collect::<Vec<_>>(),
                    "{e} {g} {ranks} {policy:?}"
                );
                assert!((1..ranks).all(|r| !p.experts_of(r).is_empty()));
            }
        }
        assert!(ExpertPlacement::new(&moe(4, 1, 1, 2), 5, PlacementPolicy::Contiguous).is_err());
    }

    #[test]
    fn contiguous_placement_evens_the_work_counting_the_shared_experts_as_rank_0s() {
        // 64 experts, 6 a token, 2 shared experts' worth on rank 0 (V2-Lite): over two ranks
        // rank 0 takes a third, so each rank runs 4 experts' worth a token on average.
        let lite = moe(64, 1, 1, 6);
        let p = ExpertPlacement::new(&lite, 2, PlacementPolicy::Contiguous).unwrap();
        assert_eq!(p.experts_of(0), (0..21).collect::<Vec<_>>());
        // Over four, the shared experts are already more than an even share: rank 0 holds none.
        let p = ExpertPlacement::new(&lite, 4, PlacementPolicy::Contiguous).unwrap();
        assert!(p.experts_of(0).is_empty());
        assert_eq!(p.experts_of(2), (21..43).collect::<Vec<_>>());
        // Even: the same count everywhere.
        let p = ExpertPlacement::new(&lite, 4, PlacementPolicy::Even).unwrap();
        assert!((0..4).all(|r| p.experts_of(r).len() == 16));
    }

    #[test]
    fn contiguous_placement_keeps_groups_whole_and_bounds_the_ranks_a_token_meets() {
        // DeepSeek-V2: 160 experts in 8 groups of 20, 6 chosen from at most 3 groups.
        let v2 = moe(160, 8, 3, 6);
        let p = ExpertPlacement::new(&v2, 2, PlacementPolicy::Contiguous).unwrap();
        for g in 0..8 {
            let owners: Vec<usize> = (g * 20..(g + 1) * 20).map(|e| p.owner(e)).collect();
            assert!(owners.iter().all(|&o| o == owners[0]), "group {g} split");
        }
        assert_eq!(
            p.report(&v2, &[1 << 20; 160]),
            [
                "rank 0: 60 routed experts (0-59), groups 0-2, 60.0 MiB",
                "rank 1: 100 routed experts (60-159), groups 3-7, 100.0 MiB"
            ]
        );
        // Eight groups over seven followers (rank 0 runs the shared experts): whole groups
        // would give one rank 40 experts, so they are split one by one, 22 or 23 each.
        let p = ExpertPlacement::new(&v2, 8, PlacementPolicy::Contiguous).unwrap();
        let counts: Vec<usize> = (0..8).map(|r| p.experts_of(r).len()).collect();
        assert_eq!(counts[0], 0);
        assert!(
            counts[1..].iter().all(|&c| c == 22 || c == 23),
            "{counts:?}"
        );
        let rr = ExpertPlacement::new(&v2, 4, PlacementPolicy::RoundRobin).unwrap();
        assert_eq!(rr.max_ranks_per_token(&v2), 4);
    }
}
