//! bf16 weights meeting activations rounded to bf16 (`Precision::bf16_activations`): every
//! token count gives the f32 sums of the rounded operands, so a token's result does not depend
//! on how many share its step.

use deepseek_kernels::{matmul, Matrix, MatrixData, Precision};

fn bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

#[test]
fn every_token_count_gives_the_rounded_operands_sums() {
    let p = Precision {
        bf16_activations: true,
        ..Precision::default()
    };
    if !p.rounds_bf16() {
        eprintln!("bf16 activations take effect on AVX512-BF16 CPUs without AMX only: skipped");
        return;
    }
    for &(rows, cols) in &[(40, 100), (33, 512), (7, 33)] {
        let w: Vec<u16> = (0..rows * cols)
            .map(|i| half::bf16::from_f32((i * 37 % 101) as f32 / 50.0 - 1.0).to_bits())
            .collect();
        let m = Matrix {
            rows,
            cols,
            data: MatrixData::BF16(w.clone().into()),
        };
        let n = 33;
        let x: Vec<f32> = (0..n * cols)
            .map(|i| (i * 13 % 29) as f32 / 14.3 - 1.0 + i as f32 * 1e-5)
            .collect();
        let mut all = vec![0.0f32; n * rows];
        matmul(&m, &x, n, &mut all, p);
        for t in 0..n {
            // The same token alone (one-token GEMV), and in steps of 3 and 9 tokens.
            let mut one = vec![0.0f32; rows];
            matmul(&m, &x[t * cols..(t + 1) * cols], 1, &mut one, p);
            for r in 0..rows {
                let want: f64 = (0..cols)
                    .map(|c| {
                        let wv = f32::from_bits((w[r * cols + c] as u32) << 16) as f64;
                        wv * bf16(x[t * cols + c]) as f64
                    })
                    .sum();
                let (a, b) = (all[t * rows + r], one[r]);
                assert!(
                    (a as f64 - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{rows}x{cols} token {t} row {r}: {a} vs {want}"
                );
                assert!(
                    (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                    "batch {a} vs alone {b}"
                );
            }
        }
        for step in [3, 9] {
            for t0 in (0..n).step_by(step) {
                let k = step.min(n - t0);
                let mut part = vec![0.0f32; k * rows];
                matmul(&m, &x[t0 * cols..(t0 + k) * cols], k, &mut part, p);
                for (i, (a, b)) in part.iter().zip(&all[t0 * rows..]).enumerate() {
                    assert!(
                        (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                        "step {step} [{i}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}
