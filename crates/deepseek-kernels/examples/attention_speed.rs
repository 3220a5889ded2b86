//! Times one layer's MLA decode attention (16 heads, 576-value latent rows, 512 values) over a
//! long context, per cache type: `cargo run --release -p deepseek-kernels --example
//! attention_speed -- [context] [threads] [heads] [f32|bf16|q8 ...]` (default: all three). The context is 8 layers' worth of rows
//! apart in memory, as in a real cache, so every call streams its rows from DRAM.
use std::time::Instant;

use deepseek_kernels::attention::{
    attend_group_split, bf16_round_row, bf16_row_len, q8_quantize_row, q8_row_bytes, RowBlocks,
    RowData, RowLayout,
};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n_ctx = args.first().copied().unwrap_or(16384);
    let threads = args.get(1).copied().unwrap_or(2);
    let heads = args.get(2).copied().unwrap_or(16);
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.parse::<usize>().is_err())
        .collect();
    let wanted = |t: &str| named.is_empty() || named.iter().any(|n| n == t);
    deepseek_kernels::threads::init(Some(threads));
    let (w, block) = (576, 64);
    let layout = RowLayout {
        row_width: w,
        key_offset: 0,
        key_len: w,
        value_offset: 0,
        value_len: 512,
    };
    // Eight layers' rows: one layer is timed per call, cycling, so no call finds its rows in
    // the last-level cache.
    let layers = 8;
    let value = |t: usize, c: usize| (((t * 31 + c * 17) % 97) as f32 / 97.0 - 0.5) * 0.2;
    let q: Vec<f32> = (0..heads * w)
        .map(|i| ((i % 13) as f32 - 6.0) * 0.05)
        .collect();
    let mut out = vec![0.0f32; heads * 512];
    // The fastest of 9 passes over the 8 layers (this machine is shared and noisy).
    let time = |rows: &[RowBlocks], out: &mut [f32]| {
        (0..10)
            .map(|_| {
                let t = Instant::now();
                for r in rows {
                    attend_group_split(&q, r, layout, n_ctx, 0.07, out);
                }
                t.elapsed().as_secs_f64() / rows.len() as f64 * 1e3
            })
            .skip(1)
            .fold(f64::INFINITY, f64::min)
    };
    let mut row = vec![0.0f32; w];
    let mut fill = |t: usize| {
        for (c, v) in row.iter_mut().enumerate() {
            *v = value(t, c);
        }
        row.clone()
    };
    let f32_rows: Vec<Vec<f32>> = (0..layers)
        .map(|_| (0..n_ctx).flat_map(&mut fill).collect())
        .collect();
    let rl = bf16_row_len(w);
    let bf16_rows: Vec<Vec<u16>> = f32_rows
        .iter()
        .map(|l| {
            let mut v = vec![0u16; n_ctx.next_multiple_of(block) * rl];
            for (t, r) in l.chunks(w).enumerate() {
                bf16_round_row(r, &mut v[t * rl..(t + 1) * rl]);
            }
            v
        })
        .collect();
    let qb = q8_row_bytes(w);
    let q8_rows: Vec<Vec<u8>> = f32_rows
        .iter()
        .map(|l| {
            let mut v = vec![0u8; n_ctx.next_multiple_of(block) * qb];
            for (t, r) in l.chunks(w).enumerate() {
                q8_quantize_row(r, &mut v[t * qb..(t + 1) * qb]);
            }
            v
        })
        .collect();
    // One layer's rows per entry, in cache blocks of `block` rows.
    fn views<'a>(
        layers: usize,
        block: usize,
        w: usize,
        data: impl Fn(usize) -> RowData<'a>,
    ) -> Vec<RowBlocks<'a>> {
        (0..layers)
            .map(|l| RowBlocks {
                data: data(l),
                block_tokens: block,
                row_width: w,
            })
            .collect()
    }
    print!("context {n_ctx}, {heads} heads, {threads} threads, ms per layer:");
    if wanted("f32") {
        let ms = time(
            &views(layers, block, w, |l| {
                RowData::F32(f32_rows[l].chunks(block * w).collect())
            }),
            &mut out,
        );
        print!(" f32 {ms:.2}");
    }
    if wanted("bf16") {
        let ms = time(
            &views(layers, block, w, |l| {
                RowData::Bf16(bf16_rows[l].chunks(block * rl).collect())
            }),
            &mut out,
        );
        let how = if deepseek_kernels::amx::available() {
            "AMX"
        } else {
            "no AMX: f32 math"
        };
        print!(" bf16 {ms:.2} ({how})");
    }
    if wanted("q8") {
        let ms = time(
            &views(layers, block, w, |l| {
                RowData::Q8(q8_rows[l].chunks(block * qb).collect())
            }),
            &mut out,
        );
        print!(" q8 {ms:.2}");
    }
    println!();
}
