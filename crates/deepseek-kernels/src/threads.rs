//! One thread pool for every kernel, sized once at start-up.

/// Sizes the global pool. `None` uses every core. Safe to call more than once; later calls are
/// ignored (the pool can be built only once per process).
pub fn init(threads: Option<usize>) {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .build_global();
}

pub fn current() -> usize {
    rayon::current_num_threads()
}

/// Runs `f` on one of the pool's threads (directly when already on one). A parallel region
/// entered from a thread outside the pool hands its work to the pool and sleeps on a lock until
/// it is done; a model step runs dozens of regions, so it pays that sleep and wake-up once
/// instead of once per region.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::join(f, || ()).0
    }
}
