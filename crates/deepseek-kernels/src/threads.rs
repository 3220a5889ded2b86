//! One thread pool for every kernel, sized once at start-up.
//!
//! A decoded token runs about 60 parallel regions (per layer: the projections, the absorbed
//! per-head matmuls, attention, the MoE's expert jobs) with short serial steps between them
//! (norms, RoPE, routing). A pool whose idle workers sleep in the kernel pays a wake-up for
//! each region: rayon's workers sleep after a few rounds of `sched_yield`, and a q4_k decode
//! profile had each of its two workers off the CPU ~25% of the time (BENCHMARKS.md, "Decode: a
//! thread pool whose workers spin between regions"). So the workers here spin between
//! regions, for a bounded time:
//!
//! - a worker that finds no work spins on one atomic (a CPU `pause` per poll), then polls with
//!   `sched_yield` (which lets another process on its core run), and after
//!   [`spin_budget`] without work parks until the next region;
//! - the caller of a region works on it too, and tasks are claimed one at a time from a
//!   counter, so a worker that is slow to arrive (parked, or its core taken by another
//!   process) costs nothing: the caller does its tasks. The region waits only for tasks a
//!   worker has started.
//!
//! Regions do not nest: a region started from inside one, or from a second thread while one is
//! running, runs serially on its caller. A model step runs whole on the pool's leader thread
//! ([`on_pool`]), which starts its regions; the `threads` count is the leader (or whichever
//! thread starts a region) plus `threads - 1` workers.
//!
//! With another process on one of the cores (a busy loop beside a q4_k decode, same section),
//! the spinning pool decoded 25.0–26.0 tok/s where rayon's did 21.7–24.7: no collapse, because
//! nothing waits for a worker that has not started a task.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Sizes the global pool: `None` uses every core. Later calls, and calls after the pool was
/// first used, are ignored (the pool is built once per process).
pub fn init(threads: Option<usize>) {
    pool_with(threads);
}

/// Threads that work on a region, the caller included.
pub fn current() -> usize {
    pool().threads
}

/// Runs `f` on the pool's leader thread, which starts every region of `f` (directly when
/// already on it); the calling thread sleeps until `f` returns. A model step runs here: its
/// temporaries then come from a thread's own malloc arena, not the main thread's, where glibc
/// returns freed memory to the kernel at once and the next step faults it back in (a q4_k
/// pp512 profile: 4% of the time in page faults with steps on the main thread, 0.8% on the
/// leader).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // On the leader already, or on a worker inside a region (whose caller may be the leader,
    // waiting for this very task): run here.
    if IS_POOL_THREAD.with(|l| l.get()) {
        return f();
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let job: Box<dyn FnOnce() + Send + '_> = Box::new(move || {
        let _ = tx.send(catch_unwind(AssertUnwindSafe(f)));
    });
    // SAFETY: this function does not return before the leader has run the job to the end
    // (`rx.recv` below waits for its last act), so what `f` borrows outlives its use.
    let job: Box<dyn FnOnce() + Send + 'static> = unsafe { std::mem::transmute(job) };
    leader()
        .lock()
        .unwrap()
        .send(job)
        .expect("the pool's leader thread is running");
    match rx.recv().expect("the pool's leader thread ran the job") {
        Ok(r) => r,
        Err(p) => resume_unwind(p),
    }
}

thread_local! {
    static IS_POOL_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

type LeaderJob = Box<dyn FnOnce() + Send + 'static>;

fn leader() -> &'static Mutex<std::sync::mpsc::Sender<LeaderJob>> {
    static LEADER: OnceLock<Mutex<std::sync::mpsc::Sender<LeaderJob>>> = OnceLock::new();
    LEADER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<LeaderJob>();
        std::thread::Builder::new()
            .name("deepseek-leader".into())
            .spawn(move || {
                IS_POOL_THREAD.with(|l| l.set(true));
                for job in rx {
                    job();
                }
            })
            .expect("spawning the pool's leader thread");
        Mutex::new(tx)
    })
}

/// Runs `f(0)`, …, `f(tasks - 1)` on the pool; returns when all have run. Tasks are claimed one
/// at a time in index order, so put the largest first when sizes differ.
pub fn for_each(tasks: usize, f: impl Fn(usize) + Sync) {
    if tasks == 0 {
        return;
    }
    let pool = pool();
    if tasks == 1 || pool.threads == 1 || pool.busy.swap(true, Acquire) {
        (0..tasks).for_each(f);
        return;
    }
    pool.run(tasks, &f);
    pool.busy.store(false, Release);
}

/// [`for_each`] that collects `f`'s results in task order.
pub fn map<R: Send>(tasks: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..tasks).map(|_| Mutex::new(None)).collect();
    for_each(tasks, |i| {
        let r = f(i);
        *slots[i].lock().unwrap() = Some(r);
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().unwrap().expect("every task ran"))
        .collect()
}

/// Splits `data` into chunks of `chunk` elements (the last may be shorter) and runs `f(index,
/// chunk)` on each, in parallel.
pub fn for_each_chunk_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk size 0");
    let len = data.len();
    let base = SendPtr(data.as_mut_ptr());
    for_each(len.div_ceil(chunk), |i| {
        let start = i * chunk;
        let n = chunk.min(len - start);
        // SAFETY: tasks have distinct indices, so their ranges `start..start + n` are disjoint
        // and inside `data`, which stays mutably borrowed until every task has returned.
        let part = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), n) };
        f(i, part)
    });
}

struct SendPtr<T>(*mut T);
// SAFETY: only used to hand disjoint sub-slices of one `&mut [T]` to tasks (see above).
unsafe impl<T: Send> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// How long an idle worker polls for the next region before it parks (`DEEPSEEK_SPIN_US`,
/// microseconds, default 2000; 0 parks at once). With 2000 both threads of a q4_k decode were
/// on the CPU 96–99% of the time: the serial steps between regions and tokens are shorter.
fn spin_budget() -> Duration {
    Duration::from_micros(crate::tuning::get().spin_us.value)
}

/// Polls with a CPU `pause` before switching to `sched_yield`.
const PAUSE_POLLS: u32 = 2000;

// `state`: the region's epoch in the high 32 bits, a "closed" bit, and in the low 31 bits the
// number of workers inside the region. Workers join by incrementing the count of an open
// region's state with a compare-and-swap, which fails once the caller has closed it; the
// caller returns once the region is closed and the count is back to zero, so no worker can
// touch a finished region's job.
const CLOSED: u64 = 1 << 31;
const REFS: u64 = CLOSED - 1;
const EPOCH_ONE: u64 = 1 << 32;

struct Pool {
    threads: usize,
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    busy: AtomicBool,
    workers: Vec<Worker>,
}

struct Worker {
    thread: OnceLock<Thread>,
    parked: AtomicBool,
}

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    fn run(&self) {
        loop {
            let i = self.next.fetch_add(1, Relaxed);
            if i >= self.tasks {
                return;
            }
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                self.panic.lock().unwrap().get_or_insert(p);
            }
        }
    }
}

fn pool() -> &'static Pool {
    pool_with(None)
}

fn pool_with(threads: Option<usize>) -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = threads
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            })
            .max(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            threads,
            state: AtomicU64::new(CLOSED),
            job: AtomicPtr::new(std::ptr::null_mut()),
            busy: AtomicBool::new(false),
            workers: (1..threads)
                .map(|_| Worker {
                    thread: OnceLock::new(),
                    parked: AtomicBool::new(false),
                })
                .collect(),
        }));
        for i in 0..threads - 1 {
            let handle = std::thread::Builder::new()
                .name(format!("deepseek-worker-{i}"))
                .spawn(move || work(pool, i))
                .expect("spawning a worker thread");
            let _ = pool.workers[i].thread.set(handle.thread().clone());
        }
        pool
    })
}

impl Pool {
    /// Runs one region; the caller holds `busy`.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            f,
            tasks,
            next: AtomicUsize::new(0),
            panic: Mutex::new(None),
        };
        // SAFETY (of the lifetime erasure): the job is reachable only while the region is open
        // or a worker holds a count on it; both end before this function returns.
        let ptr = &job as *const Job<'_> as *mut Job<'static>;
        self.job.store(ptr, Release);
        // The previous region is closed with no workers inside: only this thread writes now.
        let epoch = (self.state.load(Relaxed) & !(CLOSED | REFS)).wrapping_add(EPOCH_ONE);
        self.state.store(epoch, SeqCst);
        for w in &self.workers {
            // Paired with the worker's store of `parked` before its last look at `state`.
            if w.parked.load(SeqCst) {
                if let Some(t) = w.thread.get() {
                    t.unpark();
                }
            }
        }
        job.run();
        let mut s = self.state.fetch_or(CLOSED, AcqRel) | CLOSED;
        let mut polls = 0u32;
        while s & REFS != 0 {
            idle_poll(&mut polls);
            s = self.state.load(Acquire);
        }
        if let Some(p) = job.panic.into_inner().unwrap() {
            self.busy.store(false, Release);
            resume_unwind(p);
        }
    }
}

fn idle_poll(polls: &mut u32) {
    *polls += 1;
    if *polls < PAUSE_POLLS {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn work(pool: &'static Pool, index: usize) {
    IS_POOL_THREAD.with(|l| l.set(true));
    let me = &pool.workers[index];
    let mut seen = pool.state.load(Acquire) & !(CLOSED | REFS);
    let mut polls = 0u32;
    let mut idle_since = Instant::now();
    loop {
        let s = pool.state.load(Acquire);
        let epoch = s & !(CLOSED | REFS);
        if epoch != seen {
            if s & CLOSED != 0 {
                // Finished before this worker arrived.
                seen = epoch;
            } else if pool
                .state
                .compare_exchange_weak(s, s + 1, Acquire, Relaxed)
                .is_ok()
            {
                seen = epoch;
                // SAFETY: the count taken above keeps the caller (and its job) waiting.
                let job = unsafe { &*pool.job.load(Acquire) };
                job.run();
                pool.state.fetch_sub(1, Release);
            }
            polls = 0;
            idle_since = Instant::now();
            continue;
        }
        idle_poll(&mut polls);
        if polls >= PAUSE_POLLS && polls.is_multiple_of(64) && idle_since.elapsed() >= spin_budget()
        {
            me.parked.store(true, SeqCst);
            if pool.state.load(SeqCst) & !(CLOSED | REFS) == seen {
                std::thread::park();
            }
            me.parked.store(false, SeqCst);
            polls = 0;
            idle_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_and_results_keep_their_order() {
        for tasks in [0usize, 1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each(tasks, |i| {
                counts[i].fetch_add(1, Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Relaxed) == 1), "tasks {tasks}");
            assert_eq!(
                map(tasks, |i| i * i),
                (0..tasks).map(|i| i * i).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 1003];
        for_each_chunk_mut(&mut v, 100, |ci, c| {
            for (j, x) in c.iter_mut().enumerate() {
                *x = ci * 100 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
    }

    #[test]
    fn nested_and_concurrent_regions_run_serially() {
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    for _ in 0..50 {
                        for_each(8, |_| {
                            for_each(4, |_| {
                                total.fetch_add(1, Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 3 * 50 * 8 * 4);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_goes_on() {
        let r = catch_unwind(|| {
            for_each(16, |i| {
                if i == 7 {
                    panic!("task 7");
                }
            })
        });
        assert!(r.is_err());
        assert_eq!(map(16, |i| i).len(), 16);
    }

    #[test]
    fn on_pool_runs_regions_and_returns_or_rethrows() {
        let v = vec![3usize; 100];
        assert_eq!(
            on_pool(|| map(100, |i| v[i] * i).iter().sum::<usize>()),
            3 * 4950
        );
        assert_eq!(on_pool(|| on_pool(|| 7)), 7);
        // From inside a region's tasks, on whichever thread they run.
        assert_eq!(
            on_pool(|| map(8, |i| on_pool(|| i))),
            (0..8).collect::<Vec<_>>()
        );
        assert!(catch_unwind(|| on_pool(|| panic!("inside"))).is_err());
        assert_eq!(on_pool(|| 8), 8);
    }

    #[test]
    fn regions_after_the_workers_parked() {
        // Longer than the default spin budget, so the workers have parked in between.
        for _ in 0..3 {
            std::thread::sleep(spin_budget() + Duration::from_millis(5));
            assert_eq!(map(64, |i| i + 1).iter().sum::<usize>(), 64 * 65 / 2);
        }
    }
}
