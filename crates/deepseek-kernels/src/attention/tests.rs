use super::rows::{q8_dequantize_plain, Q8_GROUP};
use super::*;

#[test]
fn q8_rows_dequantize_as_the_plain_code() {
    for width in [576, 40, 7, 64] {
        let x: Vec<f32> = (0..width)
            .map(|i| ((i * 37) % 101) as f32 / 9.0 - 5.0)
            .collect();
        let mut row = vec![0u8; q8_row_bytes(width)];
        q8_quantize_row(&x, &mut row);
        let groups = width.div_ceil(Q8_GROUP);
        let (scales, values) = row.split_at(groups * 4);
        let (mut fast, mut plain) = (vec![f32::NAN; width], vec![f32::NAN; width]);
        q8_dequantize_row(&row, &mut fast);
        q8_dequantize_plain(scales, values, &mut plain, 0);
        assert_eq!(fast, plain, "width {width}");
        for (a, b) in fast.iter().zip(&x) {
            assert!((a - b).abs() <= 5.0 / 127.0, "{a} vs {b}");
        }
    }
}

#[test]
fn attend_group_matches_reference_across_blocks() {
    let layout = RowLayout {
        row_width: 40,
        key_offset: 0,
        key_len: 36,
        value_offset: 0,
        value_len: 32,
    };
    let n_ctx = 23;
    let block_tokens = 8;
    let rows: Vec<f32> = (0..n_ctx * 40)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    let queries: Vec<f32> = (0..5 * 36)
        .map(|i| ((i * 13 % 29) as f32 / 14.0) - 1.0)
        .collect();
    let mut padded = rows.clone();
    padded.resize(24 * 40, 0.0);
    let blocks: Vec<&[f32]> = padded.chunks(block_tokens * 40).collect();
    let rb = RowBlocks::f32(blocks, block_tokens, 40);
    let mut out = vec![0.0; 5 * 32];
    attend_group(&queries, &rb, layout, n_ctx, 0.3, &mut out);
    let want = attend_group_reference(&queries, &rows, layout, n_ctx, 0.3);
    for (a, b) in out.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    // Split across threads: same result.
    let mut long = vec![];
    for i in 0..3000 * 40 {
        long.push(((i * 37 % 101) as f32 / 50.0) - 1.0);
    }
    let lb: Vec<&[f32]> = long.chunks(64 * 40).collect();
    let lrows = RowBlocks::f32(lb, 64, 40);
    let mut split_out = vec![0.0; 5 * 32];
    attend_group_split(&queries, &lrows, layout, 3000, 0.3, &mut split_out);
    let want_long = attend_group_reference(&queries, &long, layout, 3000, 0.3);
    for (a, b) in split_out.iter().zip(&want_long) {
        assert!((a - b).abs() < 1e-5, "split: {a} vs {b}");
    }
    // 8-bit rows: the same as attending over the dequantized rows, and close to f32.
    let rb8 = q8_row_bytes(40);
    let mut q8 = vec![0u8; 3000 * rb8];
    let mut deq = vec![0.0f32; 3000 * 40];
    for t in 0..3000 {
        q8_quantize_row(&long[t * 40..(t + 1) * 40], &mut q8[t * rb8..(t + 1) * rb8]);
        q8_dequantize_row(&q8[t * rb8..(t + 1) * rb8], &mut deq[t * 40..(t + 1) * 40]);
    }
    for (a, b) in deq.iter().zip(&long) {
        assert!((a - b).abs() <= 1.0 / 127.0 * 0.5 * 1.01, "{a} vs {b}");
    }
    let q8rows = RowBlocks {
        data: RowData::Q8(q8.chunks(64 * rb8).collect()),
        block_tokens: 64,
        row_width: 40,
    };
    let mut q8_out = vec![0.0; 5 * 32];
    attend_group_split(&queries, &q8rows, layout, 3000, 0.3, &mut q8_out);
    let want_deq = attend_group_reference(&queries, &deq, layout, 3000, 0.3);
    for ((a, b), c) in q8_out.iter().zip(&want_deq).zip(&want_long) {
        assert!((a - b).abs() < 1e-5, "q8: {a} vs {b}");
        assert!((a - c).abs() < 2e-2, "q8 vs f32: {a} vs {c}");
    }
    // GQA-style offsets: keys and values at different places in the row.
    let layout = RowLayout {
        row_width: 40,
        key_offset: 4,
        key_len: 12,
        value_offset: 20,
        value_len: 12,
    };
    let q = &queries[..3 * 12];
    let mut out = vec![0.0; 3 * 12];
    attend_group(q, &rb, layout, n_ctx, 0.5, &mut out);
    let want = attend_group_reference(q, &rows, layout, n_ctx, 0.5);
    for (a, b) in out.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// bf16 rows: the AMX kernel (whole 64-row blocks, where the CPU has AMX) and the f32
/// fallback (8-row blocks) both equal the reference over the bf16-rounded rows; heads not a
/// multiple of 16, contexts not a multiple of 64 or 32, split and unsplit, MLA and GQA
/// layouts.
#[test]
fn bf16_rows_match_reference_on_amx_and_fallback() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mla = RowLayout {
        row_width: 96,
        key_offset: 0,
        key_len: 96,
        value_offset: 0,
        value_len: 64,
    };
    let gqa = RowLayout {
        row_width: 130,
        key_offset: 32,
        key_len: 32,
        value_offset: 64,
        value_len: 64,
    };
    for (layout, groups) in [(mla, 16), (mla, 20), (mla, 3), (gqa, 5), (gqa, 1)] {
        let w = layout.row_width;
        let rl = bf16_row_len(w);
        for n_ctx in [1, 17, 33, 64, 100, 1500] {
            let rows: Vec<f32> = (0..n_ctx * w)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let q: Vec<f32> = (0..groups * layout.key_len)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let mut stored = vec![0u16; n_ctx.next_multiple_of(64) * rl];
            let mut rounded = vec![0.0f32; n_ctx * w];
            for t in 0..n_ctx {
                bf16_round_row(&rows[t * w..(t + 1) * w], &mut stored[t * rl..(t + 1) * rl]);
                for c in 0..w {
                    rounded[t * w + c] = f32::from_bits((stored[t * rl + c] as u32) << 16);
                }
            }
            let want = attend_group_reference(&q, &rounded, layout, n_ctx, 0.2);
            for block_tokens in [64, 8] {
                let blocks = || stored.chunks(block_tokens * rl).collect::<Vec<_>>();
                let rb = RowBlocks {
                    data: RowData::Bf16(blocks()),
                    block_tokens,
                    row_width: w,
                };
                let mut out = vec![f32::NAN; groups * layout.value_len];
                attend_group(&q, &rb, layout, n_ctx, 0.2, &mut out);
                let mut split = vec![f32::NAN; groups * layout.value_len];
                attend_group_split(&q, &rb, layout, n_ctx, 0.2, &mut split);
                // The serial form: the same parts merged in the same order, to the bit.
                let mut serial = vec![f32::NAN; groups * layout.value_len];
                attend_group_split_serial(&q, &rb, layout, n_ctx, 0.2, &mut serial);
                assert_eq!(
                    split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    serial.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "serial split, n_ctx {n_ctx}"
                );
                for (i, ((a, b), c)) in out.iter().zip(&split).zip(&want).enumerate() {
                    assert!(
                        (a - c).abs() < 2e-5 && (b - c).abs() < 2e-5,
                        "{layout:?} groups {groups} n_ctx {n_ctx} blocks of {block_tokens} [{i}]: {a} / {b} vs {c}"
                    );
                }
            }
        }
    }
}

#[test]
fn attend_causal_matches_one_query_at_a_time() {
    // Per-head keys and values at offsets, as in decompressed MLA prefill; contexts that
    // cross blocks, and query groups larger than the score tiles.
    let layout = RowLayout {
        row_width: 70,
        key_offset: 35,
        key_len: 20,
        value_offset: 55,
        value_len: 15,
    };
    let n = 150;
    let rows: Vec<f32> = (0..n * 70)
        .map(|i| ((i * 41 % 113) as f32 / 56.0) - 1.0)
        .collect();
    let blocks: Vec<&[f32]> = rows.chunks(64 * 70).collect();
    let rb = RowBlocks::f32(blocks, 64, 70);
    for (first_ctx, groups) in [(1, 1), (1, 16), (63, 5), (100, 16), (130, 20)] {
        let q: Vec<f32> = (0..groups * 20)
            .map(|i| ((i * 7 % 31) as f32 / 15.0) - 1.0)
            .collect();
        let mut out = vec![f32::NAN; groups * 15];
        attend_causal(&q, &rb, layout, first_ctx, 0.4, &mut out);
        for j in 0..groups {
            let want =
                attend_group_reference(&q[j * 20..(j + 1) * 20], &rows, layout, first_ctx + j, 0.4);
            for (a, b) in out[j * 15..(j + 1) * 15].iter().zip(&want) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "ctx {first_ctx} query {j}: {a} vs {b}"
                );
            }
        }
    }
}
