//! Times the lattice i-quant dot products on one thread, per super-block, with either
//! activation form: `cargo run --release -p deepseek-kernels --example lattice_dot_speed`.
//! `scripts/lattice_dot_speed.sh` runs it beside llama.cpp's `vec_dot` for the same types.
//! The weights are random valid blocks (8 experts' worth of V2-Lite's gate rows, 23 MB for
//! IQ2_XXS), read from memory as in decode.
use std::time::Instant;

use deepseek_kernels::quant::{dot_row, QuantizedActivations};
use deepseek_kernels::QuantType;

fn main() {
    let (rows, cols) = (1408 * 8, 2048);
    // A fixed xorshift stream: random bytes are valid blocks of every lattice type once the
    // f16 super-block scale (the first two bytes of these types) is set.
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let x: Vec<f32> = (0..cols)
        .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    for t in [
        QuantType::IQ2XXS,
        QuantType::IQ2XS,
        QuantType::IQ2S,
        QuantType::IQ3XXS,
        QuantType::IQ3S,
        QuantType::IQ1S,
    ] {
        let (rb, bb) = (t.row_bytes(cols), t.block_bytes());
        let mut w: Vec<u8> = (0..rows * rb).map(|_| next() as u8).collect();
        for b in w.chunks_exact_mut(bb) {
            b[..2].copy_from_slice(&half::f16::from_f32(0.003).to_bits().to_le_bytes());
        }
        for (form, a) in [
            ("per 32", QuantizedActivations::new(&x, cols)),
            ("per 256", QuantizedActivations::per_super_block(&x, cols)),
        ] {
            let mut best = f64::MAX;
            for _ in 0..20 {
                let t0 = Instant::now();
                let mut sum = 0.0;
                for r in w.chunks_exact(rb) {
                    sum += dot_row(t, r, &a, 0);
                }
                std::hint::black_box(sum);
                best = best.min(t0.elapsed().as_secs_f64());
            }
            let per = best * 1e9 / (rows * cols / 256) as f64;
            println!(
                "deepseek-rs {:8} activations {form:7}: {per:5.1} ns per super-block",
                t.name()
            );
        }
    }
}
