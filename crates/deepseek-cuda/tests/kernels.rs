//! Every CUDA kernel and its launch code against a plain reference, on each place kernels can run
//! here: the CPU emulation (wherever g++ builds it; `DEEPSEEK_REQUIRE_EMULATION=1`, as
//! scripts/test.sh sets, turns its absence into a failure) and the GPU (where one opens; a
//! visible SKIPPED line elsewhere).

use deepseek_cuda::emulate::Emulator;
use deepseek_cuda::gpu::Gpu;
use deepseek_cuda::launch::{download, upload};
use deepseek_cuda::ops::{
    self, AttentionShape, Dtype, PagedCache, RopeSlice, RouterRule, TopkMethod,
};
use deepseek_cuda::Launch;
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The places to run on, each with its name.
fn places() -> Vec<(&'static str, Box<dyn Launch>)> {
    let mut v: Vec<(&'static str, Box<dyn Launch>)> = Vec::new();
    match Emulator::new() {
        Ok(e) => v.push(("emulation", Box::new(e))),
        Err(e) if std::env::var("DEEPSEEK_REQUIRE_EMULATION").as_deref() == Ok("1") => {
            panic!("DEEPSEEK_REQUIRE_EMULATION=1 but the CPU emulation is unavailable: {e}")
        }
        Err(e) => eprintln!("SKIPPED: the CUDA kernels in CPU emulation: {e}"),
    }
    match Gpu::open(0) {
        Ok(g) => v.push(("gpu", Box::new(g))),
        Err(e) if std::env::var("DEEPSEEK_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("DEEPSEEK_REQUIRE_GPU=1 but no GPU opened: {e}")
        }
        Err(e) => eprintln!("SKIPPED: the CUDA kernels on a GPU: {e}"),
    }
    v
}

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: [{i}] = {g}, reference {w}"
        );
    }
}

#[test]
fn rms_norm_matches_the_cpu_kernel_on_whole_and_strided_rows() {
    let mut rng = StdRng::seed_from_u64(1);
    for (name, l) in places() {
        let l = l.as_ref();
        for (rows, cols, stride) in [(3, 7, 7), (2, 300, 300), (4, 64, 96)] {
            let x = rand_vec(&mut rng, rows * stride);
            let w = rand_vec(&mut rng, cols);
            let (xb, wb) = (upload(l, &x).unwrap(), upload(l, &w).unwrap());
            let ob = l.alloc(rows * cols * 4).unwrap();
            ops::rms_norm(
                l,
                xb.ptr(),
                wb.ptr(),
                ob.ptr(),
                rows,
                cols,
                stride,
                cols,
                1e-6,
            )
            .unwrap();
            let got: Vec<f32> = download(l, &ob, rows * cols).unwrap();
            let mut want = vec![0.0; rows * cols];
            for r in 0..rows {
                deepseek_kernels::ops::rms_norm(
                    &x[r * stride..r * stride + cols],
                    &w,
                    1e-6,
                    &mut want[r * cols..(r + 1) * cols],
                );
            }
            close(
                &format!("{name} rms_norm {rows}x{cols}/{stride}"),
                &got,
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn elementwise_kernels_match_plain_loops() {
    let mut rng = StdRng::seed_from_u64(2);
    for (name, l) in places() {
        let l = l.as_ref();
        // add
        let (a, b) = (rand_vec(&mut rng, 1000), rand_vec(&mut rng, 1000));
        let (ab, bb) = (upload(l, &a).unwrap(), upload(l, &b).unwrap());
        ops::add(l, ab.ptr(), bb.ptr(), 1000).unwrap();
        let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        close(
            &format!("{name} add"),
            &download(l, &ab, 1000).unwrap(),
            &want,
            0.0,
        );
        // silu_mul over [gate | up] rows
        let (rows, cols) = (3, 50);
        let gu = rand_vec(&mut rng, rows * 2 * cols);
        let gub = upload(l, &gu).unwrap();
        let ob = l.alloc(rows * cols * 4).unwrap();
        ops::silu_mul(l, gub.ptr(), ob.ptr(), cols, rows).unwrap();
        let want: Vec<f32> = (0..rows * cols)
            .map(|k| {
                let (r, i) = (k / cols, k % cols);
                deepseek_kernels::ops::silu(gu[r * 2 * cols + i]) * gu[r * 2 * cols + cols + i]
            })
            .collect();
        close(
            &format!("{name} silu_mul"),
            &download(l, &ob, rows * cols).unwrap(),
            &want,
            1e-5,
        );
        // embedding rows, f32 and bf16
        let (vocab, cols) = (10, 33);
        let table = rand_vec(&mut rng, vocab * cols);
        let table16: Vec<u16> = table.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let ids = [3i32, 0, 9, 3];
        let idb = upload(l, &ids).unwrap();
        for (dtype, tb) in [
            (Dtype::F32, upload(l, &table).unwrap()),
            (Dtype::Bf16, upload(l, &table16).unwrap()),
        ] {
            let ob = l.alloc(ids.len() * cols * 4).unwrap();
            ops::embed_rows(l, tb.ptr(), dtype, idb.ptr(), ob.ptr(), ids.len(), cols).unwrap();
            let want: Vec<f32> = ids
                .iter()
                .flat_map(|&i| table[i as usize * cols..(i as usize + 1) * cols].to_vec())
                .map(|v| match dtype {
                    Dtype::F32 => v,
                    Dtype::Bf16 => bf16::from_f32(v).to_f32(),
                })
                .collect();
            let got = download(l, &ob, ids.len() * cols).unwrap();
            close(&format!("{name} embed {dtype:?}"), &got, &want, 0.0);
        }
        // a slice of every row, strided
        let (rows, src_stride, dst_stride, cols) = (5, 12, 9, 4);
        let src = rand_vec(&mut rng, rows * src_stride);
        let dst0 = rand_vec(&mut rng, rows * dst_stride);
        let (sb, db) = (upload(l, &src).unwrap(), upload(l, &dst0).unwrap());
        ops::copy_rows(
            l,
            sb.at::<f32>(8),
            db.at::<f32>(5),
            rows,
            cols,
            src_stride,
            dst_stride,
        )
        .unwrap();
        let mut want = dst0.clone();
        for r in 0..rows {
            want[r * dst_stride + 5..r * dst_stride + 9]
                .copy_from_slice(&src[r * src_stride + 8..r * src_stride + 12]);
        }
        close(
            &format!("{name} copy_rows"),
            &download(l, &db, want.len()).unwrap(),
            &want,
            0.0,
        );
        // f32 -> bf16, ties and specials included
        let mut x = rand_vec(&mut rng, 300);
        x.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            1e-40,
            f32::from_bits(0x3f80_8000), // a tie: rounds to even
            f32::from_bits(0x3f81_8000),
            f32::MAX,
        ]);
        let xb = upload(l, &x).unwrap();
        let ob = l.alloc(x.len() * 2).unwrap();
        ops::f32_to_bf16(l, xb.ptr(), ob.ptr(), x.len()).unwrap();
        let got: Vec<u16> = download(l, &ob, x.len()).unwrap();
        let want: Vec<u16> = x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        assert_eq!(got, want, "{name} f32_to_bf16");
    }
}

#[test]
fn rope_matches_the_cpu_kernel_in_both_pairings() {
    let mut rng = StdRng::seed_from_u64(3);
    for (name, l) in places() {
        let l = l.as_ref();
        let (tokens, heads, head_stride, offset, dim, max_pos) = (3, 2, 40, 8, 32, 20);
        let half = dim / 2;
        let table = rand_vec(&mut rng, 2 * max_pos * half);
        let positions = [0i32, 7, 19];
        for interleaved in [true, false] {
            let x = rand_vec(&mut rng, tokens * heads * head_stride);
            let (xb, tb, pb) = (
                upload(l, &x).unwrap(),
                upload(l, &table).unwrap(),
                upload(l, &positions).unwrap(),
            );
            let s = RopeSlice {
                heads,
                token_stride: heads * head_stride,
                head_stride,
                offset,
                dim,
                interleaved,
            };
            ops::rope(l, xb.ptr(), tb.ptr(), max_pos, pb.ptr(), tokens, s).unwrap();
            let mut want = x.clone();
            for (t, &pos) in positions.iter().enumerate() {
                let p = pos as usize;
                let cos = &table[p * half..(p + 1) * half];
                let sin = &table[max_pos * half + p * half..max_pos * half + (p + 1) * half];
                for h in 0..heads {
                    let o = t * heads * head_stride + h * head_stride + offset;
                    let style = if interleaved {
                        deepseek_kernels::ops::RopeStyle::Interleaved
                    } else {
                        deepseek_kernels::ops::RopeStyle::Half
                    };
                    deepseek_kernels::ops::rope(&mut want[o..o + dim], cos, sin, style);
                }
            }
            let got = download(l, &xb, x.len()).unwrap();
            close(
                &format!("{name} rope interleaved={interleaved}"),
                &got,
                &want,
                1e-6,
            );
        }
    }
}

/// The router's rule written plainly (as `deepseek_model::router::Router::route_one`).
fn route_reference(logits: &[f32], bias: Option<&[f32]>, r: &RouterRule) -> (Vec<i32>, Vec<f32>) {
    let top = |v: &[f32], k: usize| {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        idx.sort_by(|&a, &b| v[b].partial_cmp(&v[a]).unwrap().then(a.cmp(&b)));
        idx.truncate(k);
        idx
    };
    let scores: Vec<f32> = if r.sigmoid {
        logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect()
    } else {
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = logits.iter().map(|&x| (x - m).exp()).collect();
        let s: f32 = e.iter().sum();
        e.iter().map(|v| v / s).collect()
    };
    let mut choice: Vec<f32> = match (bias, r.method) {
        (Some(b), TopkMethod::NoauxTc) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        _ => scores.clone(),
    };
    if r.method != TopkMethod::Greedy && r.n_group > 1 {
        let g = r.n_experts / r.n_group;
        let gs: Vec<f32> = choice
            .chunks(g)
            .map(|c| match r.method {
                TopkMethod::NoauxTc => top(c, 2.min(g)).iter().map(|&i| c[i]).sum(),
                _ => c.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            })
            .collect();
        let keep = top(&gs, r.topk_group);
        for (gi, c) in choice.chunks_mut(g).enumerate() {
            if !keep.contains(&gi) {
                c.fill(f32::NEG_INFINITY);
            }
        }
    }
    let ids = top(&choice, r.top_k);
    let mut w: Vec<f32> = ids.iter().map(|&i| scores[i]).collect();
    if r.normalize {
        let d: f32 = w.iter().sum::<f32>() + 1e-20;
        w.iter_mut().for_each(|v| *v /= d);
    }
    if r.scale {
        w.iter_mut().for_each(|v| *v *= r.scaling);
    }
    (ids.iter().map(|&i| i as i32).collect(), w)
}

#[test]
fn router_chooses_the_experts_and_weights_of_the_reference_rule() {
    let mut rng = StdRng::seed_from_u64(4);
    let v2_lite = RouterRule {
        n_experts: 64,
        top_k: 6,
        n_group: 1,
        topk_group: 1,
        sigmoid: false,
        method: TopkMethod::Greedy,
        normalize: false,
        scale: true,
        scaling: 1.0,
    };
    let v2 = RouterRule {
        n_experts: 160,
        n_group: 8,
        topk_group: 3,
        method: TopkMethod::GroupLimitedGreedy,
        scaling: 16.0,
        ..v2_lite
    };
    let v3 = RouterRule {
        n_experts: 256,
        top_k: 8,
        n_group: 8,
        topk_group: 4,
        sigmoid: true,
        method: TopkMethod::NoauxTc,
        normalize: true,
        scale: true,
        scaling: 2.5,
    };
    for (name, l) in places() {
        let l = l.as_ref();
        for r in [v2_lite, v2, v3] {
            let tokens = 70; // two blocks of 64 threads, the second partly idle
            let logits = rand_vec(&mut rng, tokens * r.n_experts);
            let bias: Vec<f32> = (0..r.n_experts)
                .map(|_| rng.random_range(-0.3..0.3))
                .collect();
            let lb = upload(l, &logits).unwrap();
            let bb = upload(l, &bias).unwrap();
            let (ib, wb) = (
                l.alloc(tokens * r.top_k * 4).unwrap(),
                l.alloc(tokens * r.top_k * 4).unwrap(),
            );
            let with_bias = r.method == TopkMethod::NoauxTc;
            let bptr = if with_bias { bb.ptr() } else { 0 };
            ops::route_topk(l, lb.ptr(), bptr, ib.ptr(), wb.ptr(), tokens, &r).unwrap();
            let ids: Vec<i32> = download(l, &ib, tokens * r.top_k).unwrap();
            let w: Vec<f32> = download(l, &wb, tokens * r.top_k).unwrap();
            for t in 0..tokens {
                let lt = &logits[t * r.n_experts..(t + 1) * r.n_experts];
                let (want_ids, want_w) = route_reference(lt, with_bias.then_some(&bias[..]), &r);
                let k = t * r.top_k..(t + 1) * r.top_k;
                assert_eq!(
                    ids[k.clone()],
                    want_ids[..],
                    "{name} {:?} token {t}",
                    r.method
                );
                close(&format!("{name} router weights"), &w[k], &want_w, 1e-5);
            }
        }
    }
}

#[test]
fn expert_gemv_reads_each_slots_expert_and_input() {
    let mut rng = StdRng::seed_from_u64(5);
    for (name, l) in places() {
        let l = l.as_ref();
        // bf16 with cols 264: the 8-wide loads plus a tail; bf16 with cols 70: not 16-byte
        // aligned, scalar only; f32.
        for (dtype, cols) in [(Dtype::Bf16, 264), (Dtype::Bf16, 70), (Dtype::F32, 70)] {
            let (experts, rows, tokens, top_k) = (3, 37, 2, 2);
            let w: Vec<f32> = rand_vec(&mut rng, experts * rows * cols);
            let w16: Vec<u16> = w.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
            let (wb, wq) = match dtype {
                Dtype::Bf16 => (
                    upload(l, &w16).unwrap(),
                    w16.iter().map(|&b| bf16::from_bits(b).to_f32()).collect(),
                ),
                Dtype::F32 => (upload(l, &w).unwrap(), w.clone()),
            };
            let ids = [2i32, 0, 1, 2];
            let x_tok = rand_vec(&mut rng, tokens * cols);
            let x_slot = rand_vec(&mut rng, tokens * top_k * cols);
            let ib = upload(l, &ids).unwrap();
            let what = format!("{name} moe_gemv {dtype:?} cols={cols}");
            for per_slot in [false, true] {
                let x = if per_slot { &x_slot } else { &x_tok };
                let xb = upload(l, x).unwrap();
                let ob = l.alloc(tokens * top_k * rows * 4).unwrap();
                let slots = tokens * top_k;
                ops::moe_gemv(
                    l,
                    wb.ptr(),
                    dtype,
                    xb.ptr(),
                    ib.ptr(),
                    ob.ptr(),
                    slots,
                    rows,
                    cols,
                    top_k,
                    per_slot,
                )
                .unwrap();
                let got: Vec<f32> = download(l, &ob, slots * rows).unwrap();
                let mut want = vec![0.0f32; slots * rows];
                for s in 0..slots {
                    let e = ids[s] as usize;
                    let xs = if per_slot {
                        &x[s * cols..(s + 1) * cols]
                    } else {
                        &x[(s / top_k) * cols..(s / top_k + 1) * cols]
                    };
                    for r in 0..rows {
                        let row = &wq[(e * rows + r) * cols..(e * rows + r + 1) * cols];
                        want[s * rows + r] = row
                            .iter()
                            .zip(xs)
                            .map(|(a, b)| (*a as f64) * (*b as f64))
                            .sum::<f64>() as f32;
                    }
                }
                close(&format!("{what} per_slot={per_slot}"), &got, &want, 1e-4);
            }
            // ids = null: a dense GEMV over expert 0.
            let xb = upload(l, &x_tok).unwrap();
            let ob = l.alloc(tokens * rows * 4).unwrap();
            ops::moe_gemv(
                l,
                wb.ptr(),
                dtype,
                xb.ptr(),
                0,
                ob.ptr(),
                tokens,
                rows,
                cols,
                1,
                false,
            )
            .unwrap();
            let got: Vec<f32> = download(l, &ob, tokens * rows).unwrap();
            let want: Vec<f32> = (0..tokens * rows)
                .map(|k| {
                    let (t, r) = (k / rows, k % rows);
                    wq[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&x_tok[t * cols..(t + 1) * cols])
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum::<f64>() as f32
                })
                .collect();
            close(&format!("{what} dense"), &got, &want, 1e-4);
        }
        // combine, overwriting and accumulating
        let (tokens, top_k, cols) = (3, 4, 20);
        let y = rand_vec(&mut rng, tokens * top_k * cols);
        let wts = rand_vec(&mut rng, tokens * top_k);
        let base = rand_vec(&mut rng, tokens * cols);
        for accumulate in [false, true] {
            let (yb, wb, ob) = (
                upload(l, &y).unwrap(),
                upload(l, &wts).unwrap(),
                upload(l, &base).unwrap(),
            );
            ops::moe_combine(
                l,
                yb.ptr(),
                wb.ptr(),
                ob.ptr(),
                cols,
                tokens,
                top_k,
                accumulate,
            )
            .unwrap();
            let want: Vec<f32> = (0..tokens * cols)
                .map(|i| {
                    let (t, c) = (i / cols, i % cols);
                    let mut acc = if accumulate { base[i] } else { 0.0 };
                    for k in 0..top_k {
                        acc += wts[t * top_k + k] * y[(t * top_k + k) * cols + c];
                    }
                    acc
                })
                .collect();
            close(
                &format!("{name} moe_combine accumulate={accumulate}"),
                &download(l, &ob, tokens * cols).unwrap(),
                &want,
                1e-6,
            );
        }
    }
}

#[test]
fn argmax_takes_the_first_of_equal_largest_values() {
    let mut rng = StdRng::seed_from_u64(6);
    for (name, l) in places() {
        let l = l.as_ref();
        let cols = 1000;
        let mut x = rand_vec(&mut rng, 4 * cols);
        x[700] = 9.0; // row 0: a single maximum
        x[cols + 5] = 9.0; // row 1: equal maxima, the first wins
        x[cols + 600] = 9.0;
        x[cols + 900] = 9.0;
        x[2 * cols..3 * cols].fill(f32::NEG_INFINITY); // row 2: all -inf: index 0
        x[3 * cols + 999] = 9.0; // row 3: the last value
        let (xb, ob) = (upload(l, &x).unwrap(), l.alloc(16).unwrap());
        ops::argmax_rows(l, xb.ptr(), ob.ptr(), 4, cols).unwrap();
        let got: Vec<i32> = download(l, &ob, 4).unwrap();
        assert_eq!(got, [700, 5, 0, 999], "{name} argmax");
    }
}

/// Attention over a paged cache whose blocks are scattered through the pool, against plain
/// softmax attention read off the same rows, for several split lengths; then appended rows land
/// in exactly their slots.
fn check_paged_attention(what: &str, shape: AttentionShape, row_w: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (block_tokens, layers, layer) = (16, 3, 1);
    let heads = shape.heads();
    // Two sequences; four query tokens: sequence 0 decoding one token at 70 rows, sequence 1
    // verifying three at 1, 16 and 17 rows.
    let tables: [Vec<i32>; 2] = [vec![5, 0, 3, 7, 8], vec![2, 6]];
    let max_blocks = 5;
    let token_seq = [0i32, 1, 1, 1];
    let ctx_lens = [70i32, 1, 16, 17];
    let max_ctx = 70;
    let n_blocks = 9;
    let cache_host = rand_vec(&mut rng, n_blocks * layers * block_tokens * row_w);
    let q = rand_vec(&mut rng, token_seq.len() * heads * shape.key_len);
    let mut flat_tables = vec![0i32; 2 * max_blocks];
    for (s, t) in tables.iter().enumerate() {
        flat_tables[s * max_blocks..s * max_blocks + t.len()].copy_from_slice(t);
    }
    let row = |seq: usize, p: usize| {
        let b = tables[seq][p / block_tokens] as usize;
        let o = ((b * layers + layer) * block_tokens + p % block_tokens) * row_w;
        &cache_host[o..o + row_w]
    };
    let (kl, vl) = (shape.key_len, shape.value_len);
    let mut want = vec![0.0f32; token_seq.len() * heads * vl];
    for (t, (&seq, &n)) in token_seq.iter().zip(&ctx_lens).enumerate() {
        for h in 0..heads {
            let j = h / shape.group;
            let (ko, vo) = (
                shape.key_offset + j * shape.kv_stride,
                shape.value_offset + j * shape.kv_stride,
            );
            let qh = &q[(t * heads + h) * kl..(t * heads + h + 1) * kl];
            let s: Vec<f64> = (0..n as usize)
                .map(|p| {
                    row(seq as usize, p)[ko..ko + kl]
                        .iter()
                        .zip(qh)
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum::<f64>()
                        * shape.scale as f64
                })
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for c in 0..vl {
                let v: f64 = (0..n as usize)
                    .map(|p| e[p] * row(seq as usize, p)[vo + c] as f64)
                    .sum();
                want[(t * heads + h) * vl + c] = (v / z) as f32;
            }
        }
    }
    for (name, l) in places() {
        let l = l.as_ref();
        let cache = l.alloc(cache_host.len() * 4).unwrap();
        l.upload_bytes(cache.ptr(), deepseek_cuda::launch::as_bytes(&cache_host))
            .unwrap();
        let pc = PagedCache {
            ptr: cache.ptr(),
            row_w,
            block_tokens,
            layers,
        };
        let (qb, tb) = (upload(l, &q).unwrap(), upload(l, &flat_tables).unwrap());
        let (sb, cb) = (
            upload(l, &token_seq).unwrap(),
            upload(l, &ctx_lens).unwrap(),
        );
        for split_len in [8, 24, 64, 512] {
            let a = AttentionShape { split_len, ..shape };
            let ws = l
                .alloc(a.workspace_len(token_seq.len(), max_ctx) * 4)
                .unwrap();
            let ob = l.alloc(want.len() * 4).unwrap();
            ops::paged_attention(
                l,
                &a,
                qb.ptr(),
                &pc,
                layer,
                tb.ptr(),
                max_blocks,
                sb.ptr(),
                cb.ptr(),
                token_seq.len(),
                max_ctx,
                ws.ptr(),
                ob.ptr(),
            )
            .unwrap();
            let got: Vec<f32> = download(l, &ob, want.len()).unwrap();
            close(
                &format!("{name} {what} split {split_len}"),
                &got,
                &want,
                2e-5,
            );
        }
        // Appending rows writes exactly their slots of this layer.
        let new_rows = rand_vec(&mut rng, 2 * row_w);
        let slots = [7 * block_tokens as i32 + 3, 2 * block_tokens as i32];
        let (rb, slb) = (upload(l, &new_rows).unwrap(), upload(l, &slots).unwrap());
        ops::cache_append(l, rb.ptr(), &pc, layer, slb.ptr(), 2).unwrap();
        let got: Vec<f32> = download(l, &cache, cache_host.len()).unwrap();
        let mut expect = cache_host.clone();
        for (i, &s) in slots.iter().enumerate() {
            let (b, p) = (s as usize / block_tokens, s as usize % block_tokens);
            let o = ((b * layers + layer) * block_tokens + p) * row_w;
            expect[o..o + row_w].copy_from_slice(&new_rows[i * row_w..(i + 1) * row_w]);
        }
        assert_eq!(got, expect, "{name} {what}: cache_append");
    }
}

#[test]
fn absorbed_mla_on_a_paged_cache_matches_plain_attention_for_every_split() {
    // 12 heads (a partly empty second group of 8), latent 64, RoPE key 32.
    check_paged_attention("mla", AttentionShape::mla(12, 64, 32, 0.37), 96, 7);
}

#[test]
fn llama_gqa_on_a_paged_cache_matches_plain_attention_for_every_split() {
    // Rows [K | V] of 2 KV heads of 16 (values narrower than a warp), 3 query heads each.
    check_paged_attention("llama gqa", AttentionShape::llama(2, 3, 16, 0.25), 64, 9);
    // Multi-head: 3 KV heads of 40, one query head each.
    check_paged_attention("llama mha", AttentionShape::llama(3, 1, 40, 0.15), 240, 10);
}

#[test]
fn split_length_fills_the_gpu_and_stays_a_multiple_of_eight() {
    // Batch 1, 16 heads (2 groups), 32K context, 264 blocks wanted: 132 splits of 256 rows.
    let mla = |heads| AttentionShape::mla(heads, 512, 64, 1.0);
    assert_eq!(mla(16).split_len(1, 32768, 264), 256);
    // A short context is one split of at least 64 rows.
    assert_eq!(mla(16).split_len(1, 10, 264), 64);
    // Many tokens already fill the GPU: one split.
    assert_eq!(mla(128).split_len(64, 1000, 264), 1000);
    for ctx in [1, 7, 100, 4097] {
        assert_eq!(mla(16).split_len(2, ctx, 264) % 8, 0);
    }
}

#[test]
fn gemm_computes_linear_layers_and_strided_per_head_products() {
    use deepseek_cuda::launch::Gemm;
    let mut rng = StdRng::seed_from_u64(8);
    let round = |v: &[f32]| -> (Vec<u16>, Vec<f32>) {
        let b: Vec<u16> = v.iter().map(|&x| bf16::from_f32(x).to_bits()).collect();
        let f = b.iter().map(|&x| bf16::from_bits(x).to_f32()).collect();
        (b, f)
    };
    for (name, l) in places() {
        let l = l.as_ref();
        // A linear layer, f32 and bf16, overwriting and accumulating.
        let (m, n, k) = (5, 7, 33);
        let (a, w) = (rand_vec(&mut rng, m * k), rand_vec(&mut rng, n * k));
        let c0 = rand_vec(&mut rng, m * n);
        for dtype in [Dtype::F32, Dtype::Bf16] {
            for accumulate in [false, true] {
                let (ab, wb, af, wf) = match dtype {
                    Dtype::F32 => (
                        upload(l, &a).unwrap(),
                        upload(l, &w).unwrap(),
                        a.clone(),
                        w.clone(),
                    ),
                    Dtype::Bf16 => {
                        let ((a16, af), (w16, wf)) = (round(&a), round(&w));
                        (upload(l, &a16).unwrap(), upload(l, &w16).unwrap(), af, wf)
                    }
                };
                let cb = upload(l, &c0).unwrap();
                let g = Gemm {
                    accumulate,
                    ..Gemm::linear(m, n, k, dtype)
                };
                l.gemm(&g, ab.ptr(), wb.ptr(), cb.ptr()).unwrap();
                let want: Vec<f32> = (0..m * n)
                    .map(|ij| {
                        let (i, j) = (ij / n, ij % n);
                        let dot: f64 = (0..k)
                            .map(|kk| af[i * k + kk] as f64 * wf[j * k + kk] as f64)
                            .sum();
                        dot as f32 + if accumulate { c0[ij] } else { 0.0 }
                    })
                    .collect();
                let got = download(l, &cb, m * n).unwrap();
                close(
                    &format!("{name} gemm {dtype:?} accumulate={accumulate}"),
                    &got,
                    &want,
                    1e-5,
                );
            }
        }
        // MLA's absorbed query: per head h, C[t, h, :] = A[t, h, :nope] · W_UK[h] (W_UK[h] stored
        // [nope][lora], not transposed), A and C interleaved by head.
        let (t, heads, nope, lora, a_row) = (3, 4, 6, 10, 4 * 9);
        let a = rand_vec(&mut rng, t * a_row); // [t][h][nope + 3]: the nope part first
        let w = rand_vec(&mut rng, heads * nope * lora);
        let (ab, wb) = (upload(l, &a).unwrap(), upload(l, &w).unwrap());
        let cb = l.alloc(t * heads * lora * 4).unwrap();
        let g = Gemm {
            m: t,
            n: lora,
            k: nope,
            dtype: Dtype::F32,
            b_transposed: false,
            lda: a_row,
            ldb: lora,
            ldc: heads * lora,
            batch: heads,
            stride_a: 9,
            stride_b: nope * lora,
            stride_c: lora,
            accumulate: false,
        };
        l.gemm(&g, ab.ptr(), wb.ptr(), cb.ptr()).unwrap();
        let mut want = vec![0.0f32; t * heads * lora];
        for ti in 0..t {
            for h in 0..heads {
                for c in 0..lora {
                    want[(ti * heads + h) * lora + c] = (0..nope)
                        .map(|i| {
                            a[ti * a_row + h * 9 + i] as f64 * w[(h * nope + i) * lora + c] as f64
                        })
                        .sum::<f64>()
                        as f32;
                }
            }
        }
        close(
            &format!("{name} batched gemm"),
            &download(l, &cb, want.len()).unwrap(),
            &want,
            1e-5,
        );
    }
}
