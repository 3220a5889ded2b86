#[test]
fn exp_shifted_sum_matches_libm() {
    // Every lane position and remainder length, values from far below the flush point to
    // the maximum, NaN passed through.
    for n in [1usize, 15, 16, 17, 64, 100] {
        let v: Vec<f32> = (0..n).map(|i| 3.0 - (i as f32 * 0.8713) % 90.0).collect();
        let (mut fast, mut slow) = (v.clone(), v.clone());
        let (a, b) = (
            exp_shifted_sum(&mut fast, 3.0),
            exp_shifted_sum_reference(&mut slow, 3.0),
        );
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() <= 2.5e-7 * y, "{x} vs {y}");
            assert_eq!(*x == 0.0, *y == 0.0);
        }
        assert!((a - b).abs() <= 1e-6 * b, "sum {a} vs {b}");
    }
    let mut v = [0.5, f32::NAN, -100.0];
    exp_shifted_sum(&mut v, 0.5);
    assert_eq!(v[0], 1.0);
    assert!(v[1].is_nan());
    assert_eq!(v[2], 0.0);
}

#[test]
fn bf16_widening_is_exact() {
    for n in [0usize, 1, 7, 8, 9, 100] {
        let src: Vec<u16> = (0..n)
            .map(|i| (i as u16).wrapping_mul(40503) ^ 0x3f80)
            .collect();
        let mut got = vec![f32::NAN; n];
        bf16_to_f32(&src, &mut got);
        for (s, g) in src.iter().zip(&got) {
            assert_eq!(g.to_bits(), bf16_bits_to_f32(*s).to_bits());
        }
    }
}

#[test]
fn silu_mul_matches_libm() {
    for n in [1usize, 7, 8, 9, 100] {
        let g: Vec<f32> = (0..n).map(|i| (i as f32 * 1.3713) % 60.0 - 30.0).collect();
        let u: Vec<f32> = (0..n).map(|i| 1.0 + (i % 5) as f32 * 0.25).collect();
        let (mut fast, mut slow) = (g.clone(), g.clone());
        silu_mul(&mut fast, &u);
        silu_mul_reference(&mut slow, &u);
        for (x, y) in fast.iter().zip(&slow) {
            assert!((x - y).abs() <= 1e-6 * y.abs() + 1e-30, "{x} vs {y}");
        }
    }
    // Far out on both sides, zero, and NaN.
    let mut g = [100.0, -100.0, 0.0, f32::NAN, 1e-20, -1e-20];
    silu_mul(&mut g, &[1.0; 6]);
    assert_eq!(g[0], 100.0);
    assert!(g[1].abs() < 1e-30);
    assert_eq!(g[2], 0.0);
    assert!(g[3].is_nan());
    assert!((g[4] - 0.5e-20).abs() < 1e-27 && (g[5] + 0.5e-20).abs() < 1e-27);
}

#[test]
fn accumulate_rows_matches_reference() {
    for (groups, n, len, stride, offset) in [
        (16, 64, 512, 576, 0),
        (19, 7, 40, 50, 3),
        (3, 1, 5, 9, 2),
        (8, 33, 64, 256, 128),
    ] {
        let ws = n + 3;
        let w: Vec<f32> = (0..groups * ws)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let rows: Vec<f32> = (0..n * stride + offset + len)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let init: Vec<f32> = (0..groups * len).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut got = init.clone();
        accumulate_rows(&w, ws, groups, &rows, stride, offset, n, len, &mut got);
        let mut want = init.clone();
        accumulate_rows_reference(&w, ws, groups, &rows, stride, offset, n, len, &mut want);
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut results = vec![got];
        // The AVX2 kernel too where the dispatcher picks a wider one.
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let mut got = init.clone();
            // SAFETY: features detected just above; slices sized as the dispatcher checks.
            unsafe {
                x86::accumulate_rows_avx2(&w, ws, groups, &rows, stride, offset, n, len, &mut got)
            };
            results.push(got);
        }
        for got in results {
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-4, "{groups}x{n}x{len}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn heads_major_scores_match_reference() {
    for (groups, n, key_len, stride, offset) in [
        (16, 64, 576, 576, 0),
        (19, 13, 40, 50, 3),
        (8, 5, 32, 40, 8),
        (128, 7, 24, 24, 0),
    ] {
        let q: Vec<f32> = (0..groups * key_len)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let rows: Vec<f32> = (0..n * stride + offset + key_len)
            .map(|i| ((i * 11 % 17) as f32 - 8.0) / 9.0)
            .collect();
        let ws = n + 2;
        let mut want = vec![0.0f32; groups * ws];
        scores_reference(&q, key_len, 0.3, &rows, stride, offset, n, &mut want, ws);
        let Some(packed) = HeadsMajorQueries::new(&q, key_len, 0.3) else {
            continue; // no heads-major kernel on this CPU, or too few heads for it
        };
        let mut got = vec![0.0f32; groups * ws];
        scores_heads_major(&packed, &rows, stride, offset, n, &mut got, ws);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                "{groups}x{n}: {a} vs {b}"
            );
        }
    }
}

use super::*;

/// Every ISA path this CPU has, against the scalar code (the dispatcher only ever picks the
/// widest, so the others are exercised here).
#[test]
fn all_isa_tiles_agree_with_scalar() {
    // Whole 32-column steps with short and long tails, and shorter than one step.
    for n in [77, 127, 9] {
        tiles_agree_with_scalar(n);
    }
}

fn tiles_agree_with_scalar(n: usize) {
    let w: Vec<Vec<f32>> = (0..4)
        .map(|r| {
            (0..n)
                .map(|i| ((i * 13 + r * 7) % 17) as f32 / 8.0 - 1.0)
                .collect()
        })
        .collect();
    let wb: Vec<Vec<u16>> = w
        .iter()
        .map(|r| {
            r.iter()
                .map(|&v| half::bf16::from_f32(v).to_bits())
                .collect()
        })
        .collect();
    let x: Vec<Vec<f32>> = (0..3)
        .map(|t| {
            (0..n)
                .map(|i| ((i * 5 + t) % 11) as f32 / 5.0 - 1.0)
                .collect()
        })
        .collect();
    let wr: [&[f32]; 4] = std::array::from_fn(|r| &w[r][..]);
    let wbr: [&[u16]; 4] = std::array::from_fn(|r| &wb[r][..]);
    let xr: [&[f32]; 3] = std::array::from_fn(|t| &x[t][..]);
    let mut want = [[0.0f32; 3]; 4];
    tile_scalar(wr, xr, &mut want, |v| v);
    let mut want_b = [[0.0f32; 3]; 4];
    tile_scalar(wbr, xr, &mut want_b, bf16_bits_to_f32);
    let close = |a: &[[f32; 3]; 4], b: &[[f32; 3]; 4]| {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-4)
    };
    #[allow(unused)]
    let check_axpy = |axpy: unsafe fn(f32, &[u16], &mut [f32]), isa: &str| {
        let mut y = vec![0.5f32; n];
        let mut y_ref = y.clone();
        unsafe { axpy(0.25, &wb[0], &mut y) };
        for (yv, &b) in y_ref.iter_mut().zip(&wb[0]) {
            *yv += 0.25 * bf16_bits_to_f32(b);
        }
        let ok = y.iter().zip(&y_ref).all(|(a, b)| (a - b).abs() < 1e-6);
        assert!(ok, "{isa} axpy_bf16");
    };
    #[cfg(target_arch = "x86_64")]
    {
        let mut got = [[0.0f32; 3]; 4];
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            unsafe { x86::tile_f32_avx2(wr, xr, &mut got) };
            assert!(close(&got, &want), "avx2 f32");
            unsafe { x86::tile_bf16_avx2(wbr, xr, &mut got) };
            assert!(close(&got, &want_b), "avx2 bf16");
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            unsafe { x86::tile_f32_avx512(wr, xr, &mut got) };
            assert!(close(&got, &want), "avx512 f32");
            unsafe { x86::tile_bf16_avx512(wbr, xr, &mut got) };
            assert!(close(&got, &want_b), "avx512 bf16");
            unsafe { x86::tile_bf16_widening_avx512(wbr, xr, &mut got) };
            assert!(close(&got, &want_b), "avx512 bf16 (widening)");
            check_axpy(x86::axpy_bf16_avx512, "avx512");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        let mut got = [[0.0f32; 3]; 4];
        unsafe { neon::tile_f32(wr, xr, &mut got) };
        assert!(close(&got, &want), "neon f32");
        unsafe { neon::tile_bf16(wbr, xr, &mut got) };
        assert!(close(&got, &want_b), "neon bf16");
        check_axpy(neon::axpy_bf16, "neon");
    }
    let mut acc = [0.0f32; 3];
    dot_f32_multi(&w[0], &xr, &mut acc);
    assert!(acc.iter().zip(&want[0]).all(|(a, b)| (a - b).abs() < 1e-4));
}
