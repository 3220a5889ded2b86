//! Times the AMX bf16 GEMM alone and `matmul` (which picks AMX from `DEEPSEEK_AMX_MIN_TOKENS`
//! tokens on) on one thread: `cargo run --release -p deepseek-kernels --example amx_speed --
//! [rows] [cols]`; with `DEEPSEEK_AMX_MIN_TOKENS=100000` the `matmul` column is the FMA tiles.
use std::time::Instant;

use deepseek_kernels::amx::{self, SplitActivations};
use deepseek_kernels::{matmul, Matrix, MatrixData};

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    t.elapsed().as_secs_f64() / reps as f64
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols) = (
        args.first().copied().unwrap_or(1408),
        args.get(1).copied().unwrap_or(2048),
    );
    deepseek_kernels::threads::init(Some(1));
    if !amx::available() {
        println!("AMX not available");
        return;
    }
    let w: Vec<u16> = (0..rows * cols)
        .map(|i| half::bf16::from_f32(((i * 7919) % 1000) as f32 / 1000.0 - 0.5).to_bits())
        .collect();
    let m = Matrix {
        rows,
        cols,
        data: MatrixData::BF16(w.clone().into()),
    };
    for n in [1usize, 4, 8, 16, 64, 512] {
        let x: Vec<f32> = (0..n * cols).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut out = vec![0.0; n * rows];
        let split_s = time(|| {
            std::hint::black_box(SplitActivations::new(&x, n, cols));
        });
        let act = SplitActivations::new(&x, n, cols);
        let amx_s = time(|| amx::gemm_rows(&w, cols, 0, rows, &act, &mut out, rows));
        let fma_s = time(|| matmul(&m, &x, n, &mut out));
        let gf = |s: f64| 2.0 * (rows * cols * n) as f64 / s / 1e9;
        println!(
            "n={n:>3}: split {:>7.1} us, amx {:>8.1} us ({:>6.1} GFLOP/s, {:>5.1} GB/s), matmul {:>8.1} us ({:>6.1} GFLOP/s)",
            split_s * 1e6, amx_s * 1e6, gf(amx_s), (rows * cols * 2) as f64 / amx_s / 1e9, fma_s * 1e6, gf(fma_s)
        );
    }
}
