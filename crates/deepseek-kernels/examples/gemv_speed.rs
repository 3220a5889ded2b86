//! Streams a large matrix through the GEMV/GEMM kernels and reports GB/s, beside the read
//! bandwidth probe. `cargo run --release --example gemv_speed -- [rows] [cols] [threads] [type]`
//! with type bf16 (default) or a GGML block type (q8_0, q4_k, q6_k, …).
use std::time::Instant;

use deepseek_kernels::quant::{quantize_row, QuantType};
use deepseek_kernels::{matmul, Matrix, MatrixData};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (rows, cols) = (
        args.first().copied().unwrap_or(102400),
        args.get(1).copied().unwrap_or(2048),
    );
    deepseek_kernels::threads::init(args.get(2).copied());
    let value = |i: usize| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
    let ty = std::env::args().nth(4).unwrap_or_else(|| "bf16".into());
    let data = match QuantType::from_name(&ty) {
        Some(q) => {
            let rb = q.row_bytes(cols);
            let mut bytes = vec![0u8; rows * rb];
            let mut row = vec![0.0; cols];
            for (r, o) in bytes.chunks_mut(rb).enumerate() {
                for (c, v) in row.iter_mut().enumerate() {
                    *v = value(r * cols + c);
                }
                quantize_row(q, &row, o);
            }
            MatrixData::Quant {
                ty: q,
                data: bytes.into(),
            }
        }
        None => MatrixData::BF16(
            (0..rows * cols)
                .map(|i| half::bf16::from_f32(value(i)).to_bits())
                .collect::<Vec<_>>()
                .into(),
        ),
    };
    let m = Matrix { rows, cols, data }.repacked();
    let x: Vec<f32> = (0..cols).map(|i| (i % 13) as f32 / 13.0).collect();
    let mut out = vec![0.0; rows];
    let bw = deepseek_kernels::probe::read_bandwidth(1 << 30, 5);
    // Token counts: `GEMV_TOKENS=1,48,512` overrides the default list.
    let ns: Vec<usize> = std::env::var("GEMV_TOKENS")
        .ok()
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 16, 48, 64]);
    for n in ns {
        let xs: Vec<f32> = x.iter().cycle().take(n * cols).copied().collect();
        let mut out_n = vec![0.0; n * rows];
        matmul(&m, &xs, n, &mut out_n, precision());
        // The fastest of several runs: on a shared machine the mean mostly measures the
        // neighbours.
        let s = (0..9)
            .map(|_| {
                let t = Instant::now();
                matmul(&m, &xs, n, &mut out_n, precision());
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        println!(
            "n={n:>3}: {:.1} GB/s of weights ({:.1} GFLOP/s); probe {:.1} GB/s",
            m.size_bytes() as f64 / s / 1e9,
            2.0 * (rows * cols * n) as f64 / s / 1e9,
            bw / 1e9
        );
    }
    matmul(&m, &x, 1, &mut out, precision());
    std::hint::black_box(&out);
}

/// The activation precision `DEEPSEEK_BF16_ACTIVATIONS` / `DEEPSEEK_EXACT_ACTIVATIONS` ask for.
fn precision() -> deepseek_kernels::Precision {
    deepseek_kernels::Precision::from_tuning(deepseek_kernels::tuning::get())
}
