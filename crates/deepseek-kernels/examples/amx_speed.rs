//! Times the AMX GEMMs alone and `matmul` on one thread: `cargo run --release -p
//! deepseek-kernels --example amx_speed -- [rows] [cols] [type]`.
//!
//! With no type (or `bf16`) the AMX column is the bf16 GEMM and `matmul` picks AMX from
//! `DEEPSEEK_AMX_MIN_TOKENS` tokens on (set it to 100000 for the FMA tiles). With a quantized
//! type (`q8_0`, `q5_0`, `q4_k`) the weights are repacked as at load, the AMX column is the
//! dequantize-to-bf16 GEMM, and `matmul` picks it from `DEEPSEEK_AMX_GROUPED_MIN_TOKENS` on (set
//! it to 100000 for the VNNI kernels).
use std::time::Instant;

use deepseek_kernels::amx::{self, grouped, SplitActivations};
use deepseek_kernels::{matmul, Matrix, MatrixData, QuantType};

/// Fastest of 7 runs after a warm-up (the machine is shared: the minimum is the stable figure).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(d);
    let (rows, cols) = (num(0, 1408), num(1, 2048));
    let ty = args.get(2).map(String::as_str).unwrap_or("bf16");
    deepseek_kernels::threads::init(Some(1));
    if !amx::available() {
        println!("AMX not available");
        return;
    }
    let wf: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let m = if ty == "bf16" {
        Matrix {
            rows,
            cols,
            data: MatrixData::BF16(
                wf.iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect::<Vec<_>>()
                    .into(),
            ),
        }
    } else {
        let q = QuantType::from_name(ty).expect("type: bf16, q8_0, q5_0 or q4_k");
        let rb = q.row_bytes(cols);
        let mut bytes = vec![0u8; rows * rb];
        for (r, o) in bytes.chunks_mut(rb).enumerate() {
            deepseek_kernels::quant::quantize_row(q, &wf[r * cols..(r + 1) * cols], o);
        }
        Matrix {
            rows,
            cols,
            data: MatrixData::Quant {
                ty: q,
                data: bytes.into(),
            },
        }
        .repacked()
    };
    for n in [1usize, 4, 8, 16, 32, 48, 64, 128, 512] {
        let x: Vec<f32> = (0..n * cols).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut out = vec![0.0; n * rows];
        let (prep_s, amx_s) = match &m.data {
            MatrixData::BF16(b) => {
                let w = b.as_slice();
                let act = SplitActivations::new(&x, n, cols);
                (
                    time(|| {
                        std::hint::black_box(SplitActivations::new(&x, n, cols));
                    }),
                    time(|| amx::gemm_rows(w, cols, 0, rows, &act, &mut out, rows)),
                )
            }
            MatrixData::Grouped { layout, data } => {
                let act = grouped::Bf16Activations::new(&x, n, cols);
                let d = data.as_slice();
                (
                    time(|| {
                        std::hint::black_box(grouped::Bf16Activations::new(&x, n, cols));
                    }),
                    time(|| grouped::gemm_rows(*layout, d, cols, 0, rows, &act, &mut out, rows)),
                )
            }
            _ => panic!("{ty} is not repacked on this CPU"),
        };
        let mm_s = time(|| matmul(&m, &x, n, &mut out, precision()));
        let gf = |s: f64| 2.0 * (rows * cols * n) as f64 / s / 1e9;
        println!(
            "n={n:>3}: act {:>7.1} us, amx {:>8.1} us ({:>6.1} GFLOP/s), matmul {:>8.1} us ({:>6.1} GFLOP/s)",
            prep_s * 1e6,
            amx_s * 1e6,
            gf(amx_s),
            mm_s * 1e6,
            gf(mm_s)
        );
    }
}

/// The activation precision `DEEPSEEK_BF16_ACTIVATIONS` / `DEEPSEEK_EXACT_ACTIVATIONS` ask for.
fn precision() -> deepseek_kernels::Precision {
    deepseek_kernels::Precision::from_tuning(deepseek_kernels::tuning::get())
}
