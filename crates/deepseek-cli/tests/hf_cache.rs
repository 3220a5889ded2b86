//! `--model ORG/NAME[@REVISION]` resolved in a Hugging Face cache tree made by hand as
//! `huggingface_hub` lays it out (refs, snapshots of symlinks into blobs), with every command.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OLD: &str = "fedcba9876543210fedcba9876543210fedcba98";

/// A cache with `test-org/coder-nano` (main and tag v1 at COMMIT; OLD a snapshot without refs
/// holding only the tokenizer) and `test-org/nano-GGUF` (one .gguf file).
fn make_cache(root: &Path) {
    let nano = workspace().join("models/deepseek-coder-nano");
    let repo = root.join("hub/models--test-org--coder-nano");
    for d in ["blobs", "refs", "snapshots"] {
        std::fs::create_dir_all(repo.join(d)).unwrap();
    }
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::write(repo.join("refs/v1"), format!("{COMMIT}\n")).unwrap();
    for (commit, files) in [
        (
            COMMIT,
            &[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
                "generation_config.json",
            ][..],
        ),
        (OLD, &["tokenizer.json", "tokenizer_config.json"][..]),
    ] {
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            // Blobs are named by their hash; any unique name serves here.
            let blob = repo.join("blobs").join(format!("{commit}-{f}"));
            if !blob.exists() {
                std::fs::copy(nano.join(f), &blob).unwrap();
            }
            std::os::unix::fs::symlink(format!("../../blobs/{commit}-{f}"), snap.join(f)).unwrap();
        }
    }
    let g = root.join("hub/models--test-org--nano-GGUF");
    std::fs::create_dir_all(g.join("refs")).unwrap();
    std::fs::create_dir_all(g.join("snapshots").join(COMMIT)).unwrap();
    std::fs::write(g.join("refs/main"), COMMIT).unwrap();
    let out = deepseek(
        root,
        &[
            "quantize",
            "--model",
            "test-org/coder-nano",
            "--type",
            "q8_0",
            "--out",
            g.join("snapshots")
                .join(COMMIT)
                .join("nano-q8_0.gguf")
                .to_str()
                .unwrap(),
        ],
    );
    assert!(out.status.success(), "quantize by id: {}", stderr(&out));
}

fn deepseek(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deepseek"))
        .args(args)
        .env("HF_HUB_CACHE", root.join("hub"))
        .env_remove("DEEPSEEK_MODEL")
        .current_dir(root)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn model_ids_load_from_the_cache_with_every_command() {
    let root = std::env::temp_dir().join(format!("deepseek-hf-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    make_cache(&root);
    let id = "test-org/coder-nano";
    let ok = |args: &[&str]| {
        let o = deepseek(&root, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        o
    };

    // The reference: the same commands on the bundled folder.
    let nano = workspace().join("models/deepseek-coder-nano");
    let gen = |m: &str| {
        stdout(&ok(&[
            "generate",
            "--model",
            m,
            "-p",
            "def add(a, b):",
            "-n",
            "8",
            "--json",
        ]))
    };
    let reference = gen(nano.to_str().unwrap());
    let by_id: serde_json::Value = serde_json::from_str(&gen(id)).unwrap();
    let want: serde_json::Value = serde_json::from_str(&reference).unwrap();
    assert_eq!(by_id["token_ids"], want["token_ids"]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&gen(&format!("{id}@v1"))).unwrap()["token_ids"],
        want["token_ids"]
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&gen(&format!("{id}@{COMMIT}"))).unwrap()
            ["token_ids"],
        want["token_ids"]
    );

    let info = stdout(&ok(&["info", "--model", id, "--json"]));
    assert!(
        info.contains("\"num_hidden_layers\"") || info.contains("layers"),
        "{info}"
    );
    assert_eq!(
        stdout(&ok(&["tokenize", "--model", id, "def f():"])),
        stdout(&ok(&[
            "tokenize",
            "--model",
            nano.to_str().unwrap(),
            "def f():"
        ]))
    );
    // The tokenizer-only snapshot by commit hash.
    ok(&["tokenize", "--model", &format!("{id}@{OLD}"), "x"]);
    let msgs = root.join("msgs.json");
    std::fs::write(&msgs, r#"[{"role":"user","content":"Hi"}]"#).unwrap();
    ok(&[
        "template",
        "--model",
        id,
        "--messages",
        msgs.to_str().unwrap(),
    ]);
    let logits = root.join("logits.safetensors");
    ok(&[
        "forward",
        "--model",
        id,
        "--token-ids",
        "0,5,7",
        "--out",
        logits.to_str().unwrap(),
    ]);
    ok(&["bench", "--model", id, "-p", "8", "-n", "2", "-r", "1"]);
    let mut chat = Command::new(env!("CARGO_BIN_EXE_deepseek"))
        .args(["chat", "--model", id, "-n", "4"])
        .env("HF_HUB_CACHE", root.join("hub"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    chat.stdin
        .take()
        .unwrap()
        .write_all(b"Write a function\n/exit\n")
        .unwrap();
    let out = chat.wait_with_output().unwrap();
    assert!(out.status.success(), "chat: {}", stderr(&out));
    // DEEPSEEK_MODEL takes an id too.
    let o = Command::new(env!("CARGO_BIN_EXE_deepseek"))
        .args(["tokenize", "x"])
        .env("HF_HUB_CACHE", root.join("hub"))
        .env("DEEPSEEK_MODEL", id)
        .output()
        .unwrap();
    assert!(o.status.success(), "DEEPSEEK_MODEL: {}", stderr(&o));
    // A GGUF-only repository: its one .gguf file.
    let g = ok(&[
        "generate",
        "--model",
        "test-org/nano-GGUF",
        "-p",
        "def",
        "-n",
        "2",
    ]);
    assert!(!stdout(&g).is_empty());

    // serve: reports the repository's name, answers /health.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut server = Command::new(env!("CARGO_BIN_EXE_deepseek"))
        .args(["serve", "--model", id, "--port", &port.to_string()])
        .env("HF_HUB_CACHE", root.join("hub"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let models = loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            break r;
        }
        assert!(Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    };
    server.kill().unwrap();
    let _ = server.wait();
    assert!(models.contains("\"id\":\"coder-nano\""), "{models}");

    // What is not there: one line saying where it looked and how to download it.
    for (model, needles) in [
        (
            "test-org/absent",
            &[
                "models--test-org--absent",
                "huggingface-cli download test-org/absent",
            ][..],
        ),
        (
            "test-org/coder-nano@nope",
            &["no revision `nope`", "main, v1"][..],
        ),
        (
            "test-org/nano-GGUF@v9",
            &["no revision `v9`", "refs there: main"][..],
        ),
    ] {
        let o = deepseek(&root, &["info", "--model", model]);
        assert_eq!(o.status.code(), Some(2), "{model}: {}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.trim().lines().count(), 1, "{model}: {e}");
        for n in needles {
            assert!(e.contains(n), "{model}: {n:?} not in {e}");
        }
    }
    // A local folder of the same shape wins over the cache.
    std::fs::create_dir_all(root.join("test-org")).unwrap();
    std::os::unix::fs::symlink(&nano, root.join("test-org/absent")).unwrap();
    ok(&["info", "--model", "test-org/absent"]);
    let _ = std::fs::remove_dir_all(&root);
}
