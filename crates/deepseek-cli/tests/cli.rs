//! The `deepseek` binary as users and scripts call it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn deepseek(args: &[&str]) -> Output {
    deepseek_env(args, &[])
}

/// `deepseek` with extra environment variables.
fn deepseek_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deepseek"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(workspace())
        .output()
        .unwrap()
}

fn fixture(name: &str) -> String {
    workspace()
        .join("tests/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn read_f32(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = match t.dtype() {
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        safetensors::Dtype::I32 => t
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
            .collect(),
        d => panic!("{d:?}"),
    };
    (t.shape().to_vec(), v)
}

fn assert_usage_error(out: &Output, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit code; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "must not panic: {err}");
}

#[test]
fn forward_writes_reference_logits_in_both_modes() {
    let dir = fixture("v3_noaux");
    let reference = Path::new(&dir).join("reference.safetensors");
    let (_, prompt) = read_f32(&reference, "prompt.1");
    let (_, want) = read_f32(&reference, "logits.1");
    let ids = prompt
        .iter()
        .map(|v| (*v as u32).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let tmp = std::env::temp_dir().join(format!("deepseek-cli-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for mode in ["prefill", "decode"] {
        let out_file = tmp.join(format!("{mode}.safetensors"));
        let out = deepseek(&[
            "forward",
            "--model",
            &dir,
            "--token-ids",
            &ids,
            "--out",
            out_file.to_str().unwrap(),
            "--mode",
            mode,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (shape, got) = read_f32(&out_file, "logits");
        assert_eq!(shape, vec![prompt.len(), 512]);
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-3, "{mode}: max |Δlogit| {d}");
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn generate_json_gives_the_reference_greedy_tokens() {
    let dir = fixture("v2_lite_vdim");
    let reference = Path::new(&dir).join("reference.safetensors");
    let (_, prompt) = read_f32(&reference, "prompt.2");
    let (_, want) = read_f32(&reference, "generated.2");
    let ids = prompt
        .iter()
        .map(|v| (*v as u32).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = deepseek(&[
        "generate",
        "--model",
        &dir,
        "--token-ids",
        &ids,
        "-n",
        &want.len().to_string(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<f32> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as f32)
        .collect();
    // The fixture's config has eos_token_id 1; the reference generated without stopping.
    let stop = want.iter().position(|&t| t == 1.0).unwrap_or(want.len());
    assert_eq!(got, want[..stop].to_vec());
}

#[test]
fn info_json_reports_the_latent_cache_size() {
    let out = deepseek(&["info", "--model", &fixture("v2_lite_vdim"), "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // (kv_lora_rank 32 + rope 8) f32 values × 3 layers.
    assert_eq!(v["kv_bytes_per_token"], 40 * 3 * 4);
    assert_eq!(v["family"], "deepseek_v2");
    assert!(v["active_parameters"].as_u64().unwrap() < v["total_parameters"].as_u64().unwrap());
    // An f32 checkpoint: 32 bits per weight, all of its bytes f32.
    assert_eq!(v["bits_per_weight"], 32.0);
    assert_eq!(v["dtype_bytes"].as_object().unwrap().len(), 1);
    // The global --cache-type reaches the model, before or after the command.
    for args in [
        &["--cache-type", "bf16", "info"][..],
        &["info", "--cache-type", "bf16"][..],
    ] {
        let mut a = args.to_vec();
        let fx = fixture("v2_lite_vdim");
        a.extend(["--model", &fx, "--json"]);
        let out = deepseek(&a);
        assert!(out.status.success(), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["kv_bytes_per_token"], 40 * 3 * 2, "{args:?}");
    }
}

#[test]
fn bad_input_is_one_line_and_exit_code_2() {
    assert_usage_error(
        &deepseek(&["info", "--model", "/no/such/folder"]),
        "/no/such/folder",
    );
    assert_usage_error(
        &deepseek(&[
            "generate",
            "--model",
            &fixture("v2_lite_vdim"),
            "--token-ids",
            "0,99999",
        ]),
        "99999",
    );
    assert_usage_error(
        &deepseek(&[
            "generate",
            "--model",
            &fixture("v2_lite_vdim"),
            "--token-ids",
            "0,x",
        ]),
        "`x`",
    );
    assert_usage_error(&deepseek(&["info", "--no-such-option"]), "--no-such-option");
    assert_usage_error(
        &deepseek(&[
            "generate",
            "--model",
            &fixture("v2_lite_vdim"),
            "--token-ids",
            "0",
            "--temperature=-1",
        ]),
        "--temperature",
    );
    let tmp = std::env::temp_dir().join(format!("deepseek-bad-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("config.json"), "{ not json").unwrap();
    assert_usage_error(
        &deepseek(&["info", "--model", tmp.to_str().unwrap()]),
        "config.json",
    );
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    assert_usage_error(
        &deepseek(&["info", "--model", tmp.to_str().unwrap()]),
        "model_type",
    );
    let msgs = tmp.join("m.json");
    std::fs::write(&msgs, "[{oops").unwrap();
    let tok = workspace().join("assets/tokenizers/deepseek-v3");
    assert_usage_error(
        &deepseek(&[
            "template",
            "--model",
            tok.to_str().unwrap(),
            "--messages",
            msgs.to_str().unwrap(),
        ]),
        "invalid JSON",
    );
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn missing_tensor_names_the_tensor() {
    // Copy a fixture's config with more layers than its weights hold.
    let tmp = std::env::temp_dir().join(format!("deepseek-missing-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let src = Path::new(&fixture("v2_lite_vdim")).to_path_buf();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = 4.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("model.safetensors"), tmp.join("model.safetensors")).unwrap();
    assert_usage_error(
        &deepseek(&["info", "--model", tmp.to_str().unwrap()]),
        "model.layers.3.",
    );
    cfg["num_hidden_layers"] = 3.into();
    cfg["kv_lora_rank"] = 48.into();
    std::fs::write(tmp.join("config.json"), cfg.to_string()).unwrap();
    assert_usage_error(
        &deepseek(&["info", "--model", tmp.to_str().unwrap()]),
        "expected [",
    );
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn tokenize_and_template_need_only_tokenizer_files() {
    let tok = workspace().join("assets/tokenizers/deepseek-v3");
    let out = deepseek(&[
        "tokenize",
        "--model",
        tok.to_str().unwrap(),
        "--json",
        "Hello world",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ids"][0], 0, "BOS first");
    let tmp = std::env::temp_dir().join(format!("deepseek-msgs-{}.json", std::process::id()));
    std::fs::write(
        &tmp,
        r#"[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]"#,
    )
    .unwrap();
    let out = deepseek(&[
        "template",
        "--model",
        tok.to_str().unwrap(),
        "--messages",
        tmp.to_str().unwrap(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>"
    );
    let out = deepseek(&[
        "template",
        "--model",
        tok.to_str().unwrap(),
        "--messages",
        tmp.to_str().unwrap(),
        "--no-generation-prompt",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi"
    );
    std::fs::remove_file(&tmp).ok();
}

#[test]
fn chat_reads_turns_from_stdin_and_default_model_is_bundled() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_deepseek"))
        .args(["chat", "-n", "8"])
        .current_dir(workspace())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Write a function\n/reset\nAnother one\n/exit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two answers, one line each at least.
    assert!(String::from_utf8_lossy(&out.stdout).lines().count() >= 2);
}

#[test]
fn bench_json_has_the_fields_scripts_rely_on() {
    let out = deepseek(&[
        "bench",
        "--model",
        &fixture("v2_lite_vdim"),
        "-p",
        "8",
        "-n",
        "4",
        "--depth",
        "70",
        "-r",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in [
        "prefill_tok_s",
        "decode_tok_s",
        "decode_gb_s",
        "bandwidth_gb_s",
        "kv_bytes_per_token",
    ] {
        assert!(
            v[k].as_f64().is_some_and(|x| x > 0.0),
            "{k} missing or zero in {v}"
        );
    }
    assert_eq!(v["kv_bytes_per_token"], 40 * 3 * 4);
    // The peak RSS is this tiny model's, not the bandwidth probe's 1 GiB buffer freed before it.
    if cfg!(target_os = "linux") {
        let rss = v["peak_rss_bytes"]
            .as_u64()
            .expect("peak_rss_bytes on Linux");
        assert!(rss < 512 << 20, "peak RSS {rss} counts the probe's buffer");
    }
}

/// Every fixture family (V2 with v_head_dim ≠ nope, V2 group routing, V3 bias-corrected routing,
/// Llama GQA) written as an f32 GGUF file by `quantize` and read back gives the reference logits:
/// the metadata, the tensor names, the k_b/v_b split and llama's Q/K permutation all round-trip.
#[test]
fn quantize_round_trips_every_family_through_gguf() {
    let tmp = std::env::temp_dir().join(format!("deepseek-quant-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for name in [
        "v2_lite_vdim",
        "v2_group_bf16",
        "v3_noaux",
        "v3_mtp",
        "llm67b_gqa_bf16",
    ] {
        let dir = fixture(name);
        let gguf = tmp.join(format!("{name}.gguf"));
        let out = deepseek(&[
            "quantize",
            "-m",
            &dir,
            "-t",
            "f32",
            "-o",
            gguf.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reference = Path::new(&dir).join("reference.safetensors");
        let (_, prompt) = read_f32(&reference, "prompt.1");
        let (_, want) = read_f32(&reference, "logits.1");
        let ids = prompt
            .iter()
            .map(|v| (*v as u32).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let logits = tmp.join(format!("{name}.safetensors"));
        let out = deepseek(&[
            "forward",
            "-m",
            gguf.to_str().unwrap(),
            "--token-ids",
            &ids,
            "--out",
            logits.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (_, got) = read_f32(&logits, "logits");
        assert_eq!(got.len(), want.len(), "{name}");
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(d < 1e-3, "{name} via GGUF: max |Δlogit| {d}");
        if name == "v3_mtp" {
            // The multi-token-prediction module travels too (blk.2.nextn.*): the same drafts.
            let drafted = |m: &str| {
                let out = deepseek(&[
                    "generate",
                    "-m",
                    m,
                    "--token-ids",
                    &ids,
                    "-n",
                    "24",
                    "--draft",
                    "mtp",
                    "--draft-tokens",
                    "2",
                    "--json",
                ]);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                (
                    v["token_ids"].clone(),
                    v["draft_proposed"].clone(),
                    v["draft_accepted"].clone(),
                )
            };
            assert_eq!(
                drafted(gguf.to_str().unwrap()),
                drafted(&dir),
                "{name}: MTP via GGUF"
            );
        }
    }
    // The bundled model at q8_0: a quarter of the bytes, the same greedy text.
    let gguf = tmp.join("nano-q8_0.gguf");
    let out = deepseek(&["quantize", "-t", "q8_0", "-o", gguf.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gen = |m: Option<&str>| {
        let mut args = vec!["generate", "--prompt", "import os\n", "-n", "16", "--json"];
        if let Some(m) = m {
            args.extend(["-m", m]);
        }
        let out = deepseek(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["token_ids"].clone()
    };
    assert_eq!(gen(Some(gguf.to_str().unwrap())), gen(None));
    // In parts of at most 3 MB (llama.cpp's gguf-split layout): the first part loads them all.
    let split = tmp.join("nano-split.gguf");
    let out = deepseek(&[
        "quantize",
        "-t",
        "q8_0",
        "--split-max-size",
        "3M",
        "-o",
        split.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("nano-split-"))
        .collect();
    assert!(parts.len() >= 3, "{parts:?}");
    let first = tmp.join(format!("nano-split-00001-of-{:05}.gguf", parts.len()));
    assert_eq!(gen(Some(first.to_str().unwrap())), gen(None));
    let bad = deepseek(&[
        "quantize",
        "-t",
        "q8_0",
        "--split-max-size",
        "lots",
        "-o",
        "x.gguf",
    ]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a size"));
    std::fs::remove_dir_all(&tmp).ok();
}

/// Each benchmark end to end on the bundled model with `--limit 3` (the data come from
/// `scripts/fetch_eval_data.py`, which scripts/test.sh runs first), then resumed from its
/// partial results without asking the model again.
#[test]
fn eval_runs_each_benchmark_end_to_end_and_resumes() {
    if !workspace().join("assets/eval/mmlu.jsonl").exists() {
        panic!(
            "assets/eval is missing: run python3 scripts/fetch_eval_data.py (scripts/test.sh does)"
        );
    }
    let dir = std::env::temp_dir().join(format!("deepseek-eval-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for bench in ["mmlu", "gsm8k", "humaneval"] {
        let out = dir.join(format!("{bench}.json"));
        let _ = std::fs::remove_file(&out);
        let _ = std::fs::remove_file(dir.join(format!("{bench}.json.partial.jsonl")));
        let o = out.to_string_lossy().into_owned();
        let r = deepseek(&["eval", bench, "--limit", "3", "--out", &o]);
        assert!(
            r.status.success(),
            "{bench}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        let table = String::from_utf8_lossy(&r.stdout).into_owned();
        assert!(table.contains("ours %"), "{bench}: {table}");
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(v["items"], 3, "{bench}: {v}");
        assert!((0.0..=1.0).contains(&v["score"].as_f64().unwrap()));
        let partial =
            std::fs::read_to_string(dir.join(format!("{bench}.json.partial.jsonl"))).unwrap();
        assert_eq!(partial.lines().count(), 4, "{bench}: header + 3 items");
        // Run again: everything comes from the partial file, same score.
        let r = deepseek(&["eval", bench, "--limit", "3", "--out", &o]);
        assert!(r.status.success());
        assert!(String::from_utf8_lossy(&r.stderr).contains("resuming: 3 items"));
        let again: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(again["score"], v["score"]);
    }
    // Another run's partial file is refused with a message naming it.
    let o = dir.join("mmlu.json").to_string_lossy().into_owned();
    let r = deepseek(&["eval", "mmlu", "--limit", "4", "--out", &o]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("partial results of another run"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_suffix_fills_the_middle_of_the_bundled_model() {
    // --suffix builds DeepSeek-Coder's FIM prompt: the same tokens as writing it out by hand.
    let (prefix, suffix) = (
        "def add(a, b):\n    ",
        "\n\n\ndef sub(a, b):\n    return a - b\n",
    );
    let by_flag = deepseek(&[
        "generate", "--prompt", prefix, "--suffix", suffix, "-n", "12", "--json",
    ]);
    assert!(
        by_flag.status.success(),
        "{}",
        String::from_utf8_lossy(&by_flag.stderr)
    );
    let written = format!("<｜fim▁begin｜>{prefix}<｜fim▁hole｜>{suffix}<｜fim▁end｜>");
    let by_hand = deepseek(&["generate", "--prompt", &written, "-n", "12", "--json"]);
    assert!(by_hand.status.success());
    let ids = |o: &Output| {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (v["token_ids"].clone(), v["prompt_tokens"].clone())
    };
    assert_eq!(ids(&by_flag), ids(&by_hand));
    // A model without FIM tokens is a one-line error naming the flag.
    let out = deepseek(&[
        "generate",
        "--model",
        &fixture("llm67b_gqa_bf16"),
        "--prompt",
        "a",
        "--suffix",
        "b",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--suffix") || err.contains("tokenizer"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Prefill over repacked quantized weights goes through AMX where the CPU has it (weights
/// dequantized to bf16, activations rounded to bf16) instead of the VNNI kernels (8-bit
/// activations). On the bundled model at q4_k (Q4_K, Q5_0 and Q8_0 rows) over a 47-token prompt,
/// both are held against the unquantized model's logits: the AMX path may not be less accurate,
/// in the largest logit error or in how many greedy tokens it keeps. Where AMX is missing both
/// runs take the VNNI kernels and agree trivially.
#[test]
fn quantized_prefill_on_amx_is_as_accurate_as_the_vnni_kernels() {
    let tmp = std::env::temp_dir().join(format!("deepseek-amx-q-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let gguf = tmp.join("nano-q4_k.gguf");
    let out = deepseek(&["quantize", "-t", "q4_k", "-o", gguf.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = "def read_config(path):\n    with open(path) as f:\n        data = json.load(f)\n    if 'name' not in data:\n        raise KeyError('name')\n    return data\n";
    let out = deepseek(&["tokenize", text]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        ids.split(',').count() >= 32,
        "prompt too short for the AMX path: {ids}"
    );
    let logits = |model: Option<&str>, min_tokens: &str, name: &str| {
        let file = tmp.join(name);
        let mut args = vec![
            "forward",
            "--token-ids",
            &ids,
            "--out",
            file.to_str().unwrap(),
        ];
        if let Some(m) = model {
            args.extend(["-m", m]);
        }
        let out = deepseek_env(&args, &[("DEEPSEEK_AMX_GROUPED_MIN_TOKENS", min_tokens)]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_f32(&file, "logits")
    };
    let (shape, reference) = logits(None, "16", "ref.safetensors");
    let (_, amx) = logits(gguf.to_str(), "16", "amx.safetensors");
    let (_, vnni) = logits(gguf.to_str(), "1000000", "vnni.safetensors");
    let vocab = shape[1];
    let max_err = |a: &[f32]| {
        a.iter()
            .zip(&reference)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let (e_amx, e_vnni) = (max_err(&amx), max_err(&vnni));
    let spread = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("max |Δlogit| vs unquantized: AMX {e_amx}, VNNI {e_vnni} (logits within ±{spread})");
    assert!(
        e_amx <= 1.25 * e_vnni + 1e-3 * spread,
        "AMX {e_amx} vs VNNI {e_vnni}"
    );
    let argmax = |row: &[f32]| {
        row.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    // Greedy tokens that agree with the unquantized model's (near-ties may go either way).
    let agree = |a: &[f32]| {
        a.chunks(vocab)
            .zip(reference.chunks(vocab))
            .filter(|(x, y)| argmax(x) == argmax(y))
            .count()
    };
    let (g_amx, g_vnni, n) = (agree(&amx), agree(&vnni), shape[0]);
    eprintln!("greedy tokens as unquantized: AMX {g_amx}/{n}, VNNI {g_vnni}/{n}");
    assert!(
        g_amx + 2 >= g_vnni && g_amx * 10 >= n * 8,
        "AMX {g_amx}, VNNI {g_vnni} of {n}"
    );
    std::fs::remove_dir_all(&tmp).ok();
}

/// The lower-bit K-quants llama.cpp writes (Q5_K with its Q5_1 fallback rows, IQ4_XS with
/// IQ4_NL ones, Q3_K and Q2_K with Q4_0 ones), written by `quantize` and run both ways: prefill (on AVX2, dequantized
/// panels through the f32 GEMM) and token-by-token decode (integer dot products with 8-bit
/// activations). Both stay near the unquantized model, closer with more bits, and nearer to
/// each other than to it (the two paths differ only in the activations' rounding).
#[test]
fn low_bit_k_quants_prefill_and_decode_agree() {
    let tmp = std::env::temp_dir().join(format!("deepseek-lowbit-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let ids = "1,400,401,402,1000,1500,2000,2500,3000,3500,4000,300,301,302,303,304,305,306,307,308,309,310,311,312";
    let logits = |model: Option<&str>, mode: &str, name: &str| {
        let file = tmp.join(name);
        let mut args = vec![
            "forward",
            "--token-ids",
            ids,
            "--mode",
            mode,
            "--out",
            file.to_str().unwrap(),
        ];
        if let Some(m) = model {
            args.extend(["-m", m]);
        }
        let out = deepseek(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        read_f32(&file, "logits").1
    };
    let reference = logits(None, "prefill", "ref.safetensors");
    let mean_abs = |a: &[f32], b: &[f32]| {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    };
    let spread = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let mut errors = vec![];
    for ty in ["q5_k", "iq4_xs", "q3_k", "q2_k"] {
        let gguf = tmp.join(format!("nano-{ty}.gguf"));
        let out = deepseek(&["quantize", "-t", ty, "-o", gguf.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let prefill = logits(gguf.to_str(), "prefill", &format!("{ty}-p.safetensors"));
        let decode = logits(gguf.to_str(), "decode", &format!("{ty}-d.safetensors"));
        let (e_p, e_d, between) = (
            mean_abs(&prefill, &reference),
            mean_abs(&decode, &reference),
            mean_abs(&prefill, &decode),
        );
        eprintln!("{ty}: mean |Δlogit| prefill {e_p}, decode {e_d}, between {between} (logits within ±{spread})");
        assert!(
            e_p < 0.2 * spread && e_d < 0.2 * spread,
            "{ty}: {e_p} {e_d}"
        );
        assert!(
            between < 0.5 * e_p.min(e_d),
            "{ty}: paths differ by {between}"
        );
        errors.push(e_p);
    }
    assert!(errors.windows(2).all(|w| w[0] < w[1]), "{errors:?}");
    std::fs::remove_dir_all(&tmp).ok();
}

/// `imatrix` over a text, in both of llama.cpp's formats, then `quantize --imatrix` with each:
/// the files load back, cover the bundled model's matrices (its MTP module's too), and the
/// weighted Q4_K file generates. A file for another model is refused, naming the entry.
#[test]
fn imatrix_files_feed_quantize() {
    let tmp = std::env::temp_dir().join(format!("deepseek-imatrix-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let text = tmp.join("text.py");
    let mut src = String::new();
    for f in [
        "scripts/train_nano.py",
        "scripts/make_fixtures.py",
        "scripts/test_server.py",
    ] {
        src.push_str(&std::fs::read_to_string(workspace().join(f)).unwrap());
    }
    std::fs::write(&text, src).unwrap();
    for name in ["im.gguf", "im.dat"] {
        let im = tmp.join(name);
        let out = deepseek(&[
            "imatrix",
            "--text",
            text.to_str().unwrap(),
            "--chunk",
            "256",
            "--chunks",
            "6",
            "-o",
            im.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            // 37 matrices and the MTP module's 10, plus attn_k_b/attn_v_b per layer.
            said.contains("57 matrices, 6 chunks of 256 tokens"),
            "{said}"
        );
        let q = tmp.join(format!("{name}.q4_k.gguf"));
        let out = deepseek(&[
            "quantize",
            "-t",
            "q4_k",
            "--imatrix",
            im.to_str().unwrap(),
            "-o",
            q.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("57 matrices"));
        let out = deepseek(&[
            "generate",
            "-m",
            q.to_str().unwrap(),
            "--prompt",
            "def f(x):",
            "-n",
            "8",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // IQ2_XXS with the importance matrix: llama.cpp's mix, and the file generates; without
    // one it is refused, saying what to do.
    let iq2 = tmp.join("iq2.gguf");
    let im = tmp.join("im.gguf");
    let (im, iq2) = (im.to_str().unwrap(), iq2.to_str().unwrap());
    let out = deepseek(&["quantize", "-t", "iq2_xxs", "--imatrix", im, "-o", iq2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("iq2_xxs mix"), "{err}");
    let out = deepseek(&["generate", "-m", iq2, "--prompt", "def f(x):", "-n", "8"]);
    assert!(out.status.success());
    let out = deepseek(&["quantize", "-t", "iq2_xxs", "-o", iq2]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && err.contains("--imatrix"),
        "{err}"
    );
    // Another model's matrices (SmolLM2's are 576 wide, the nano model's 256): refused, naming
    // the entry.
    let smollm2 = workspace().join("assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let other = tmp.join("other.gguf");
    let out = deepseek(&[
        "imatrix",
        "-m",
        smollm2.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--chunk",
        "64",
        "--chunks",
        "1",
        "-o",
        other.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let x = tmp.join("x.gguf");
    let out = deepseek(&[
        "quantize",
        "-t",
        "q4_k",
        "--imatrix",
        other.to_str().unwrap(),
        "-o",
        x.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("blk.0.attn_q.weight"),
        "{err}"
    );
    // Not an importance matrix at all.
    let bad = deepseek(&[
        "quantize",
        "-t",
        "q4_k",
        "--imatrix",
        text.to_str().unwrap(),
        "-o",
        x.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("text.py"));
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn info_ranks_shows_each_ranks_experts_and_refuses_more_ranks_than_experts() {
    // The bundled model: 8 routed experts, 2 a token, 1 shared expert (rank 0's): rank 0
    // takes a quarter of them, so both ranks run 1.5 experts' worth a token.
    let out = deepseek(&["info", "--ranks", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "rank 0: 2 routed experts (0-1)",
        "rank 1: 6 routed experts (2-7)",
        "rank 0 also holds everything else",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let out = deepseek(&["info", "--ranks", "3"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rank 0: no routed experts"));
    let out = deepseek(&["--expert-placement", "round-robin", "info", "--ranks", "3"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rank 1: 3 routed experts (1,4,7)"));
    let out = deepseek(&["info", "--ranks", "9"]);
    assert_usage_error(&out, "9 ranks for 8 routed experts");
}

/// Without the `mpi` feature (the default build) the flag says how to get it; commands that
/// run no model refuse it in any build.
#[test]
fn expert_parallel_without_mpi_says_how_to_build_it() {
    if cfg!(feature = "mpi") {
        return;
    }
    let out = deepseek(&["--expert-parallel", "generate", "--prompt", "x"]);
    assert_usage_error(&out, "built without MPI");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features mpi"));
}

#[test]
fn device_flag_runs_bench_on_the_gpu_path_and_says_what_is_missing() {
    // The GPU path's code on the kernels' CPU emulation: real numbers, no GPU needed.
    let out = deepseek(&[
        "--device", "emulated", "bench", "-p", "4", "-n", "2", "-r", "1", "--batch", "2", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in ["prefill_tok_s", "decode_tok_s", "batch_decode_tok_s"] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    // Other commands stay on the CPU, saying so.
    let out = deepseek(&["--device", "cuda", "generate", "--prompt", "x", "-n", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only `bench` runs on the GPU path"), "{err}");
    // Without a driver: one line naming what is missing, exit 2.
    if deepseek_cuda::gpu::missing_library().is_some() {
        let out = deepseek(&["--device", "cuda:1", "bench", "-p", "4", "-n", "1"]);
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("error: --device cuda:1: ") && err.contains(".so"),
            "{err}"
        );
    }
    let out = deepseek(&["--device", "tpu", "bench"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cuda:N"));
}
