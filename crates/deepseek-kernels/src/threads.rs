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
