//! Measures the machine's memory read bandwidth, so benchmarks can say what share of it they
//! reach. Every thread streams its own slice of a buffer much larger than the caches, with the
//! widest vector loads available.

use std::time::Instant;

/// Read bandwidth in bytes/s over a `bytes`-sized buffer, best of `reps` passes, on the global
/// thread pool.
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    let n = bytes / 4;
    let mut buf = vec![0.0f32; n];
    // One slice per thread, as under rayon: a worker that is parked when the probe starts
    // wakes long before the caller is through its half (tens of milliseconds at 1 GiB).
    let chunk = n.div_ceil(crate::threads::current()).max(1);
    crate::threads::for_each_chunk_mut(&mut buf, chunk, |ci, c| {
        for (j, v) in c.iter_mut().enumerate() {
            *v = ((ci * chunk + j) % 7) as f32;
        }
    });
    let mut best = 0.0f64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let s: f32 = crate::threads::map(n.div_ceil(chunk), |ci| {
            sum_stream(&buf[ci * chunk..((ci + 1) * chunk).min(n)])
        })
        .iter()
        .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((n * 4) as f64 / secs);
    }
    best
}

fn sum_stream(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::isa() == crate::simd::Isa::Avx512 {
        // SAFETY: AVX-512F detected at run time.
        return unsafe { sum_avx512(x) };
    }
    // Four independent accumulators keep the loads in flight.
    let mut acc = [0.0f32; 16];
    for c in x.chunks_exact(16) {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_avx512(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mut a = [_mm512_setzero_ps(); 4];
    let p = x.as_ptr();
    let mut i = 0;
    while i + 64 <= x.len() {
        a[0] = _mm512_add_ps(a[0], _mm512_loadu_ps(p.add(i)));
        a[1] = _mm512_add_ps(a[1], _mm512_loadu_ps(p.add(i + 16)));
        a[2] = _mm512_add_ps(a[2], _mm512_loadu_ps(p.add(i + 32)));
        a[3] = _mm512_add_ps(a[3], _mm512_loadu_ps(p.add(i + 48)));
        i += 64;
    }
    let s = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
    _mm512_reduce_add_ps(s) + x[i..].iter().sum::<f32>()
}
