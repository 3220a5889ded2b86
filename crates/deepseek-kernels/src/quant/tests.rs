use super::*;

#[test]
fn q4_0_blocks_become_q5_0_blocks_of_the_same_values() {
    let x: Vec<f32> = (0..256)
        .map(|i| ((i * 37) % 61) as f32 / 30.0 - 1.0)
        .collect();
    let mut q4 = vec![0u8; QuantType::Q4_0.row_bytes(256)];
    quantize_row(QuantType::Q4_0, &x, &mut q4);
    // Every nibble value, so both halves of the fifth-bit rule are met.
    for (i, b) in q4[2..18].iter_mut().enumerate() {
        *b = (i as u8) | ((15 - i as u8) << 4);
    }
    let q5 = q4_0_to_q5_0(&q4);
    assert_eq!(q5.len(), QuantType::Q5_0.row_bytes(256));
    let (mut a, mut b) = (vec![0.0; 256], vec![0.0; 256]);
    dequantize_row_plain(QuantType::Q4_0, &q4, &mut a);
    dequantize_row_plain(QuantType::Q5_0, &q5, &mut b);
    assert_eq!(a, b);
}
use rand::{Rng, SeedableRng};

#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_activation_quantization_is_bit_exact() {
    if !is_x86_feature_detected!("avx2") {
        return;
    }
    let mut r = rand::rngs::StdRng::seed_from_u64(9);
    for block in [QK, QK_K] {
        for case in 0..40 {
            let mut xs: Vec<f32> = (0..block).map(|_| r.random_range(-3.0..3.0)).collect();
            match case % 4 {
                // All zero: scale 0, every value 0.
                0 => xs.fill(0.0),
                // A max of 127 (scale 1): half the values are ties at k + 0.5.
                1 => {
                    for (i, v) in xs.iter_mut().enumerate() {
                        *v = (i % 200) as f32 / 2.0 - 50.0;
                    }
                    xs[1] = 127.0;
                }
                // Negative zeros and a single large value.
                2 => {
                    xs.iter_mut().step_by(3).for_each(|v| *v = -0.0);
                    xs[block / 2] = -1e6;
                }
                _ => {}
            }
            let (mut q0, mut q1) = (vec![0i8; block], vec![0i8; block]);
            let (mut s0, mut s1) = (vec![0i32; block / QK], vec![7i32; block / QK]);
            let d0 = quantize_block_reference(&xs, &mut q0, &mut s0);
            // SAFETY: AVX2 detected above; lengths as required.
            let d1 = unsafe { super::x86::quantize_activations_avx2(&xs, &mut q1, &mut s1) };
            assert_eq!(d0.to_bits(), d1.to_bits(), "scale, case {case}");
            assert_eq!(q0, q1, "values, block {block}, case {case}");
            assert_eq!(s0, s1, "sums, block {block}, case {case}");
        }
    }
}

#[test]
fn super_block_activations_share_a_scale_and_round_to_it() {
    let mut r = rand::rngs::StdRng::seed_from_u64(5);
    let cols = 512;
    // Two rows; the second row's blocks differ in magnitude by 100x.
    let x: Vec<f32> = (0..2 * cols)
        .map(|i| {
            let v: f32 = r.random_range(-1.0..1.0);
            if i >= cols && (i / QK).is_multiple_of(2) {
                v * 100.0
            } else {
                v
            }
        })
        .collect();
    let a = QuantizedActivations::per_super_block(&x, cols);
    for (s, xs) in x.chunks(QK_K).enumerate() {
        let d = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        for b in 0..QK_K / QK {
            let bi = s * QK_K / QK + b;
            assert_eq!(a.d[bi], d, "super-block {s}, block {b}");
            let q = &a.qs[bi * QK..(bi + 1) * QK];
            assert_eq!(a.sums[bi], q.iter().map(|&v| v as i32).sum::<i32>());
            for (&qv, &xv) in q.iter().zip(&xs[b * QK..(b + 1) * QK]) {
                assert!((qv as f32 * d - xv).abs() <= 0.5 * d * 1.0001);
            }
        }
    }
}

fn vectors() -> serde_json::Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/quant/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ty(name: &str) -> QuantType {
    QuantType::from_name(name).unwrap()
}

#[test]
fn dequantize_matches_gguf_py_for_every_type() {
    let v = vectors();
    for (name, case) in v.as_object().unwrap() {
        let t = ty(name);
        let blocks = hex(case["blocks"].as_str().unwrap());
        let want = floats(&case["dequant"]);
        let mut got = vec![0.0; want.len()];
        dequantize_row(t, &blocks, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{name}[{i}]: {a} vs {b}"
            );
        }
    }
}

#[test]
fn simd_dequantization_equals_plain() {
    let x = rand_vec(QK_K * 3, 31);
    for t in QuantType::ALL {
        let mut q = vec![0u8; t.row_bytes(x.len())];
        quantize_row(t, &x, &mut q);
        // Random bytes too, for every bit pattern of the scales and values; the f16
        // fields are kept from the quantized row (finite, of a sensible size).
        let mut r = rand::rngs::StdRng::seed_from_u64(32);
        let mut noise: Vec<u8> = (0..q.len()).map(|_| r.random::<u8>()).collect();
        let f16_fields = match t {
            QuantType::Q4_1 | QuantType::Q5_1 | QuantType::Q4K | QuantType::Q5K => 0..4,
            QuantType::Q2K => 80..84,
            QuantType::Q3K => 108..110,
            QuantType::Q6K => 208..210,
            _ => 0..2, // Q8_0, Q4_0, Q5_0, IQ4_NL; IQ4_XS's d (its scales_h are random)
        };
        let bb = t.block_bytes();
        for (n, b) in noise.chunks_exact_mut(bb).zip(q.chunks_exact(bb)) {
            n[f16_fields.clone()].copy_from_slice(&b[f16_fields.clone()]);
        }
        for bytes in [q, noise] {
            let (mut a, mut b) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            dequantize_row(t, &bytes, &mut a);
            dequantize_row_plain(t, &bytes, &mut b);
            for (i, (u, v)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (u - v).abs() <= 1e-6 * (1.0 + v.abs()),
                    "{t:?}[{i}]: {u} vs {v}"
                );
            }
        }
    }
    // The lattice types on random valid blocks (every index, sign pattern and scale).
    for t in QuantType::LATTICE {
        let bytes = random_lattice_rows(t, 1, QK_K * 4, 40 + t.ggml_type() as u64);
        let (mut a, mut b) = (vec![0.0; QK_K * 4], vec![0.0; QK_K * 4]);
        dequantize_row(t, &bytes, &mut a);
        dequantize_row_plain(t, &bytes, &mut b);
        assert_eq!(a, b, "{t:?}");
    }
}

#[test]
fn quantize_is_byte_identical_to_gguf_py() {
    let v = vectors();
    for name in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"] {
        let case = &v[name];
        let t = ty(name);
        let x = floats(&case["input"]);
        let mut out = vec![0u8; t.row_bytes(x.len())];
        quantize_row(t, &x, &mut out);
        assert_eq!(out, hex(case["blocks"].as_str().unwrap()), "{name}");
    }
}

/// Random but valid rows of a lattice i-quant: every byte random except each super-block's
/// f16 scale, kept small (IQ1_M spreads it over its scale words' top nibbles).
pub(crate) fn random_lattice_rows(ty: QuantType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let (bb, n) = (ty.block_bytes(), rows * cols / ty.block_elems());
    let mut out = vec![0u8; n * bb];
    for b in out.chunks_mut(bb) {
        r.fill(&mut b[..]);
        let d = half::f16::from_f32(r.random_range(0.0005f32..0.01)).to_bits();
        if ty == QuantType::IQ1M {
            for k in 0..4 {
                let w = u16::from_le_bytes([b[48 + 2 * k], b[49 + 2 * k]]) & 0x0FFF;
                let w = w | ((d >> (4 * k)) & 0xF) << 12;
                b[48 + 2 * k..50 + 2 * k].copy_from_slice(&w.to_le_bytes());
            }
        } else {
            b[..2].copy_from_slice(&d.to_le_bytes());
        }
    }
    out
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn k_quant_round_trip_error_is_small() {
    let x = rand_vec(QK_K * 4, 3);
    for (t, tol) in [
        (QuantType::Q4K, 0.08),
        (QuantType::Q5K, 0.04),
        (QuantType::Q6K, 0.035), // one step where a value mirrors the sub-block extreme
        (QuantType::Q8_0, 0.005),
        (QuantType::Q5_1, 0.04),
        (QuantType::Q3K, 0.3), // 8 levels: a step of a quarter to a third of the extreme
        (QuantType::Q2K, 0.4),
        (QuantType::IQ4NL, 0.12), // the levels are up to 24 apart (of 127) at the ends
        (QuantType::IQ4XS, 0.12),
    ] {
        let mut q = vec![0u8; t.row_bytes(x.len())];
        quantize_row(t, &x, &mut q);
        let mut y = vec![0.0; x.len()];
        dequantize_row(t, &q, &mut y);
        let err = x
            .iter()
            .zip(&y)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < tol, "{t:?}: max error {err}");
    }
}

/// With the activation's own rounding applied to the reference, every path agrees to
/// float summation order.
#[test]
fn dot_is_exact_given_the_activation_rounding() {
    let cols = QK_K * 2;
    let x = rand_vec(cols, 21);
    // Both activation forms: a scale per 32 values, and one per super-block (the Q4_Kx8
    // kernels' form; every kernel must take either).
    for a in [
        QuantizedActivations::new(&x, cols),
        QuantizedActivations::per_super_block(&x, cols),
    ] {
        dot_is_exact_for(&a, cols);
    }
}

fn dot_is_exact_for(a: &QuantizedActivations, cols: usize) {
    let xq: Vec<f32> = (0..cols).map(|i| a.d[i / QK] * a.qs[i] as f32).collect();
    let w = rand_vec(cols, 22);
    // The block formats from `w`; the lattice types from gguf-py's vectors (two super-blocks).
    let v = vectors();
    let rows = QuantType::ALL
        .into_iter()
        .map(|t| {
            let mut q = vec![0u8; t.row_bytes(cols)];
            quantize_row(t, &w, &mut q);
            (t, q)
        })
        .chain(QuantType::LATTICE.into_iter().map(|t| {
            (
                t,
                hex(v[t.name().to_uppercase()]["blocks"].as_str().unwrap()),
            )
        }));
    for (t, q) in rows {
        assert_eq!(q.len(), t.row_bytes(cols), "{t:?}");
        let want = dot_row_reference(t, &q, &xq);
        let (ad, s, aq) = a.row(0);
        let generic = dot_row_generic(t, &q, ad, s, aq);
        let fast = dot_row(t, &q, a, 0);
        for g in [generic, fast] {
            assert!(
                (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{t:?}: {g} vs {want}"
            );
        }
    }
}

#[test]
fn dot_matches_dequantized_reference_on_every_isa() {
    let cols = QK_K * 3;
    let x = rand_vec(cols * 2, 11);
    let a = QuantizedActivations::new(&x, cols);
    let w = rand_vec(cols, 12);
    for t in QuantType::ALL {
        let mut q = vec![0u8; t.row_bytes(cols)];
        quantize_row(t, &w, &mut q);
        for row in 0..2 {
            let want = dot_row_reference(t, &q, &x[row * cols..(row + 1) * cols]);
            let (ad, s, aq) = a.row(row);
            let mut got = vec![dot_row_generic(t, &q, ad, s, aq)];
            #[cfg(target_arch = "x86_64")]
            {
                let acts = [a.row(row)];
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                    got.push(unsafe { super::x86::dot_rows_avx2::<1>(t, &q, &acts)[0] });
                }
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    got.push(unsafe { super::x86::dot_rows_vnni::<1>(t, &q, &acts)[0] });
                }
            }
            #[cfg(target_arch = "aarch64")]
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                let acts = [a.row(row)];
                got.push(unsafe { super::neon::dot_rows::<1>(t, &q, &acts)[0] });
            }
            got.push(dot_row(t, &q, &a, row));
            if row == 0 {
                // The batched forms agree with the single-row one.
                let two = dot_rows::<2>(t, &q, &a, 0);
                assert!((two[0] - got[0]).abs() < 1e-3 * (1.0 + got[0].abs()));
                assert!(
                    (two[1] - dot_row_generic(t, &q, a.row(1).0, a.row(1).1, a.row(1).2)).abs()
                        < 1e-3 * (1.0 + two[1].abs())
                );
            }
            for g in got {
                // The activation's 8-bit rounding: ~0.4% of Σ|w·x|.
                let scale: f32 = w
                    .iter()
                    .zip(&x[row * cols..])
                    .map(|(a, b)| (a * b).abs())
                    .sum();
                assert!((g - want).abs() < 0.01 * scale, "{t:?}: {g} vs {want}");
            }
        }
    }
}

/// With an importance matrix the rounding error lands on the columns that matter less: the
/// importance-weighted squared error of every K-quant's rows is well below the plain
/// quantizer's, and a flat importance matrix costs no more than a few percent of plain error.
#[test]
fn importance_weighted_quantization_lowers_the_weighted_error() {
    let n = 256 * 16;
    // Heavy-tailed values; importances spanning four orders of magnitude across the columns.
    let mut s = 12345u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32
    };
    let x: Vec<f32> = (0..n)
        .map(|_| {
            let u = rnd() - 0.5;
            u * u * u * 8.0 + (rnd() - 0.5) * 0.1
        })
        .collect();
    let im: Vec<f32> = (0..n).map(|_| 10f32.powf(rnd() * 4.0 - 2.0)).collect();
    let flat = vec![1.0f32; n];
    let weighted_err = |t: QuantType, q: &[u8], w: &[f32]| {
        let mut y = vec![0.0; n];
        dequantize_row_plain(t, q, &mut y);
        x.iter()
            .zip(&y)
            .zip(w)
            .map(|((a, b), w)| w * (a - b) * (a - b))
            .sum::<f32>()
    };
    for t in [
        QuantType::Q2K,
        QuantType::Q3K,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ] {
        let mut plain = vec![0u8; t.row_bytes(n)];
        quantize_row(t, &x, &mut plain);
        let mut with = vec![0u8; t.row_bytes(n)];
        quantize_row_weighted(t, &x, Some(&im), &mut with);
        let (e0, e1) = (weighted_err(t, &plain, &im), weighted_err(t, &with, &im));
        assert!(
            e1 < 0.8 * e0,
            "{}: weighted error {e1} vs plain {e0}",
            t.name()
        );
        let mut level = vec![0u8; t.row_bytes(n)];
        quantize_row_weighted(t, &x, Some(&flat), &mut level);
        let (f0, f1) = (
            weighted_err(t, &plain, &flat),
            weighted_err(t, &level, &flat),
        );
        assert!(
            f1 < 1.05 * f0,
            "{}: flat importances {f1} vs plain {f0}",
            t.name()
        );
    }
    // Formats without a weighted search quantize as without importances.
    let (mut a, mut b) = (vec![0u8; 34 * 128], vec![0u8; 34 * 128]);
    quantize_row(QuantType::Q8_0, &x, &mut a);
    quantize_row_weighted(QuantType::Q8_0, &x, Some(&im), &mut b);
    assert_eq!(a, b);
}

/// The lattice i-quants' kernels at every tier the CPU has, on random (valid) blocks, equal the
/// dequantized reference given the activations' rounding: every grid index, sign pattern and
/// scale the random bytes pick is decoded alike.
#[test]
fn lattice_dot_matches_reference_on_every_isa() {
    let cols = QK_K * 4;
    let x = rand_vec(cols * 3, 31);
    // Both activation forms: the integer-summing kernels take one scale per super-block.
    for (a, sb) in [
        (QuantizedActivations::new(&x, cols), false),
        (QuantizedActivations::per_super_block(&x, cols), true),
    ] {
        for t in QuantType::LATTICE {
            let q = random_lattice_rows(t, 1, cols, 7 + t.ggml_type() as u64);
            for row in 0..3 {
                let (ad, s, aq) = a.row(row);
                let xq: Vec<f32> = (0..cols).map(|i| ad[i / QK] * aq[i] as f32).collect();
                let want = dot_row_reference(t, &q, &xq);
                let mut got = vec![("plain", dot_row_generic(t, &q, ad, s, aq))];
                #[cfg(target_arch = "x86_64")]
                {
                    let acts = [a.row(row)];
                    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                        got.push(("avx2", unsafe {
                            super::x86_iq::dot_rows_avx2::<1>(t, &q, &acts, sb)[0]
                        }));
                    }
                    if is_x86_feature_detected!("avx512vnni")
                        && is_x86_feature_detected!("avx512vl")
                    {
                        got.push(("vnni", unsafe {
                            super::x86_iq::dot_rows_vnni::<1>(t, &q, &acts, sb)[0]
                        }));
                    }
                    if sb && super::x86_iq_vbmi::available() && super::x86_iq_vbmi::handles(t) {
                        got.push(("vbmi", unsafe {
                            super::x86_iq_vbmi::dot_rows::<1>(t, &q, &acts)[0]
                        }));
                        let three: [_; 3] = std::array::from_fn(|k| a.row(k));
                        got.push(("vbmi batched", unsafe {
                            super::x86_iq_vbmi::dot_rows::<3>(t, &q, &three)[row]
                        }));
                    }
                }
                #[cfg(target_arch = "aarch64")]
                if std::arch::is_aarch64_feature_detected!("dotprod") {
                    let acts = [a.row(row)];
                    got.push(("neon", unsafe {
                        super::neon::dot_rows::<1>(t, &q, &acts)[0]
                    }));
                }
                // Three rows at once (batched decode) give each row's own product.
                let three = dot_rows::<3>(t, &q, &a, 0);
                got.push(("batched", three[row]));
                let scale: f32 = dequantized(t, &q)
                    .iter()
                    .zip(&xq)
                    .map(|(w, x)| (w * x).abs())
                    .sum();
                for (isa, g) in got {
                    assert!(
                        (g - want).abs() <= 1e-5 * scale,
                        "{t:?} {isa} row {row} (per super-block {sb}): {g} vs {want}"
                    );
                }
            }
        }
    }
}

fn dequantized(t: QuantType, q: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0; q.len() / t.block_bytes() * t.block_elems()];
    dequantize_row(t, q, &mut out);
    out
}

/// Blocks of every i-quant type (IQ1_S … IQ4_XS), K-quant and 32-value type are byte-identical
/// to llama.cpp's quantizers on the same rows and importances (tests/fixtures/quant/
/// iq_write.json, scripts/make_iq_write_vectors.py), and decode near their input.
#[test]
fn quantization_with_llama_cpps_searches_is_byte_identical_to_llama_cpp() {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/quant/iq_write.json"
    );
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    let f32s = |k: &str| -> Vec<f32> {
        hex(v[k].as_str().unwrap())
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let (x, im) = (f32s("input"), f32s("imatrix"));
    let cols = v["cols"].as_u64().unwrap() as usize;
    for (key, t, weighted) in [
        ("IQ1_S", QuantType::IQ1S, true),
        ("IQ1_M", QuantType::IQ1M, true),
        ("IQ1_M_plain", QuantType::IQ1M, false),
        ("IQ2_XXS", QuantType::IQ2XXS, true),
        ("IQ2_XS", QuantType::IQ2XS, true),
        ("IQ2_S", QuantType::IQ2S, true),
        ("IQ2_S_plain", QuantType::IQ2S, false),
        ("IQ3_XXS", QuantType::IQ3XXS, true),
        ("IQ3_XXS_plain", QuantType::IQ3XXS, false),
        ("IQ3_S", QuantType::IQ3S, true),
        ("IQ3_S_plain", QuantType::IQ3S, false),
        ("IQ4_NL", QuantType::IQ4NL, true),
        ("IQ4_NL_plain", QuantType::IQ4NL, false),
        ("IQ4_XS", QuantType::IQ4XS, true),
        ("IQ4_XS_plain", QuantType::IQ4XS, false),
        ("Q2_K", QuantType::Q2K, true),
        ("Q2_K_plain", QuantType::Q2K, false),
        ("Q3_K", QuantType::Q3K, true),
        ("Q3_K_plain", QuantType::Q3K, false),
        ("Q4_K", QuantType::Q4K, true),
        ("Q4_K_plain", QuantType::Q4K, false),
        ("Q5_K", QuantType::Q5K, true),
        ("Q5_K_plain", QuantType::Q5K, false),
        ("Q6_K", QuantType::Q6K, true),
        ("Q6_K_plain", QuantType::Q6K, false),
        ("Q4_0", QuantType::Q4_0, true),
        ("Q4_0_plain", QuantType::Q4_0, false),
        ("Q4_1", QuantType::Q4_1, true),
        ("Q4_1_plain", QuantType::Q4_1, false),
        ("Q5_0", QuantType::Q5_0, true),
        ("Q5_0_plain", QuantType::Q5_0, false),
        ("Q5_1", QuantType::Q5_1, true),
        ("Q5_1_plain", QuantType::Q5_1, false),
    ] {
        let want = hex(v[key].as_str().unwrap());
        let rb = t.row_bytes(cols);
        for (r, row) in x.chunks_exact(cols).enumerate() {
            let mut got = vec![0u8; rb];
            quantize_row_weighted(t, row, weighted.then_some(&im[..]), &mut got);
            for (b, (g, w)) in got
                .chunks_exact(t.block_bytes())
                .zip(want[r * rb..(r + 1) * rb].chunks_exact(t.block_bytes()))
                .enumerate()
            {
                // llama.cpp's IQ3_S advances its index and sign pointers only past sub-blocks
                // that are not all zero, so after one its file holds the next sub-blocks' bytes
                // one slot early (decoding them at the wrong values); ours keeps each in place.
                let be = t.block_elems();
                let sub_zero = row[b * be..(b + 1) * be]
                    .chunks_exact(32)
                    .any(|c| c.iter().all(|&v| v == 0.0));
                if t == QuantType::IQ3S && sub_zero {
                    continue;
                }
                assert_eq!(g, w, "{key}: row {r}, block {b}");
            }
            // The plain path is the same as the weighted one without importances.
            if !weighted {
                let mut plain = vec![0u8; rb];
                quantize_row(t, row, &mut plain);
                assert_eq!(plain, got, "{key}: quantize_row");
            }
            // And they decode near the input (1.6-4 bits: a rough bound on relative RMS error).
            let deq = dequantized(t, &got);
            let err: f32 = deq.iter().zip(row).map(|(a, b)| (a - b).powi(2)).sum();
            let norm: f32 = row.iter().map(|v| v * v).sum();
            assert!(err < 0.6 * norm, "{key}: row {r}: error {err} of {norm}");
        }
    }
}
