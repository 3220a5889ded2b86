//! `--expert-parallel`: the routed experts split across the ranks of an `mpirun` job
//! (deepseek_model::expert_parallel has the scheme). Rank 0 runs the command; the other ranks
//! load their experts and answer its MoE layers until it is done.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use deepseek_loader::ModelConfig;
use deepseek_model::expert_parallel::worker::{serve_experts, wait_for_stop, ExpertShard};
use deepseek_model::expert_parallel::{
    stop_followers, ExpertLink, ExpertParallel, ExpertPlacement, PlacementPolicy,
};

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default)]
pub enum Placement {
    /// Contiguous ranges sized so every rank has the same expert work per token (rank 0 runs
    /// the shared experts, so it holds fewer routed ones), whole expert groups per rank where
    /// they share out nearly as evenly (a token then meets at most `topk_group` ranks).
    #[default]
    Contiguous,
    /// Contiguous ranges of the same number of experts on every rank: memory even, rank 0
    /// busier (decode waits for it).
    Even,
    /// Expert e on rank e mod N: every group spread over every rank.
    RoundRobin,
}

impl Placement {
    pub fn policy(self) -> PlacementPolicy {
        match self {
            Placement::Contiguous => PlacementPolicy::Contiguous,
            Placement::Even => PlacementPolicy::Even,
            Placement::RoundRobin => PlacementPolicy::RoundRobin,
        }
    }
}

/// The ranks of this job and how they share the experts.
pub struct Cluster {
    link: Arc<dyn ExpertLink>,
    policy: PlacementPolicy,
}

impl Cluster {
    pub fn rank(&self) -> usize {
        self.link.rank()
    }

    pub fn ranks(&self) -> usize {
        self.link.ranks()
    }

    /// Rank 0's part for a model of config `c`: which experts it holds and the link to the
    /// others. None for a dense model, which rank 0 runs alone (with a warning) while the
    /// others wait.
    pub fn leader(&self, c: &ModelConfig) -> Result<Option<Arc<ExpertParallel>>> {
        let Some(placement) = self.placement(c)? else {
            if self.ranks() > 1 {
                eprintln!("warning: --expert-parallel: this model has no routed experts (it is dense); rank 0 runs it alone");
            }
            return Ok(None);
        };
        Ok(Some(Arc::new(ExpertParallel::new(
            self.link.clone(),
            placement,
        ))))
    }

    fn placement(&self, c: &ModelConfig) -> Result<Option<ExpertPlacement>> {
        let Some(m) = &c.moe else {
            return Ok(None);
        };
        ExpertPlacement::new(m, self.ranks(), self.policy)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("--expert-parallel: {e}"))
    }

    /// A follower rank: loads its experts of the model at `dir` and answers rank 0 until it
    /// is done.
    pub fn follow(&self, dir: &Path, precision: deepseek_kernels::Precision) -> Result<()> {
        let rank = self.rank();
        let (config, store) = deepseek_loader::open_checkpoint(dir)
            .with_context(|| format!("rank {rank}: loading {}", dir.display()))?;
        ignore_termination();
        let Some(placement) = self.placement(&config)? else {
            return wait_for_stop(&*self.link).map_err(anyhow::Error::msg);
        };
        let ep = ExpertParallel::new(self.link.clone(), placement);
        let shard = ExpertShard::load(&store, &config, &ep, &mut |_, _| {})
            .with_context(|| format!("rank {rank}: loading {}", dir.display()))?;
        drop(store);
        tracing::info!(rank, held_bytes = shard.held_bytes(), "serving experts");
        deepseek_kernels::threads::on_pool(|| serve_experts(&shard, &ep, precision))
            .map_err(anyhow::Error::msg)?;
        let peak_rss_mib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .map(|kb| kb / 1024);
        tracing::info!(rank, ?peak_rss_mib, "experts served");
        Ok(())
    }

    /// Rank 0, when its command is done: lets the followers go.
    pub fn finish(&self) {
        stop_followers(&*self.link);
    }
}

/// A follower leaves when rank 0 says stop, not on the SIGTERM or Ctrl-C that `mpirun` passes
/// to every rank: rank 0 may still be finishing requests (a server drains its running ones)
/// and needs the experts until then. If rank 0 dies instead, `mpirun` ends the job.
fn ignore_termination() {
    #[cfg(feature = "mpi")]
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to run.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// Joins the `mpirun` job this process was started in (one rank of one when it was not).
/// Keep the returned guard until the end of `main`: dropping it leaves MPI.
#[cfg(feature = "mpi")]
pub fn start(placement: Placement) -> Result<(Cluster, Box<dyn std::any::Any>)> {
    let (universe, link) = mpi_link::init()?;
    Ok((
        Cluster {
            link: Arc::new(link),
            policy: placement.policy(),
        },
        Box::new(universe),
    ))
}

#[cfg(not(feature = "mpi"))]
pub fn start(_: Placement) -> Result<(Cluster, Box<dyn std::any::Any>)> {
    anyhow::bail!("--expert-parallel: this `deepseek` was built without MPI; build it with `cargo build --release -p deepseek-cli --features mpi` (needs Open MPI: apt install libopenmpi-dev openmpi-bin libclang-dev) and start it with `mpirun -np N deepseek --expert-parallel …`")
}

#[cfg(feature = "mpi")]
mod mpi_link {
    use anyhow::{bail, Result};
    use deepseek_model::expert_parallel::ExpertLink;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;

    /// MPI_COMM_WORLD as the experts' link.
    pub struct MpiLink {
        world: SimpleCommunicator,
        rank: usize,
        ranks: usize,
    }

    // SAFETY: MPI is initialised at MPI_THREAD_SERIALIZED (checked in `init`): any thread may
    // call it, one call at a time. The calls come from model steps, which all run on the
    // kernel pool's one leader thread, and from `main` after the command's last step.
    unsafe impl Send for MpiLink {}
    unsafe impl Sync for MpiLink {}

    pub fn init() -> Result<(Universe, MpiLink)> {
        let Some((universe, threading)) =
            mpi::initialize_with_threading(mpi::Threading::Serialized)
        else {
            bail!("--expert-parallel: MPI was already initialised");
        };
        if threading < mpi::Threading::Serialized {
            bail!("--expert-parallel: this MPI library offers thread level {threading:?}; expert parallelism needs MPI_THREAD_SERIALIZED");
        }
        let world = universe.world();
        let (rank, ranks) = (world.rank() as usize, world.size() as usize);
        Ok((universe, MpiLink { world, rank, ranks }))
    }

    impl ExpertLink for MpiLink {
        fn rank(&self) -> usize {
            self.rank
        }

        fn ranks(&self) -> usize {
            self.ranks
        }

        fn send(&self, to: usize, msg: &[u8]) {
            self.world.process_at_rank(to as i32).send(msg);
        }

        fn receive(&self, from: usize) -> Vec<u8> {
            self.world
                .process_at_rank(from as i32)
                .receive_vec::<u8>()
                .0
        }
    }
}
