//! GGUF files in parts (`NAME-00001-of-00003.gguf`, as llama.cpp's gguf-split writes them): the
//! first part loads them all, to the same logits as the file in one piece; a folder of parts
//! loads through its first; a missing, misnamed or mismatched part is an error naming it.

use std::path::{Path, PathBuf};

use deepseek_loader::gguf::{GgufFile, Value};
use deepseek_loader::gguf_writer::{write_gguf, TensorSpec};
use deepseek_model::{CacheDtype, LogitsFor, Model, PrefillPath, SeqStep};

fn smollm2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Writes `src` as `count` parts in `dir`, tensors dealt out in order.
fn split(src: &Path, dir: &Path, count: usize) -> Vec<PathBuf> {
    let g = GgufFile::open(src).unwrap();
    let per = g.tensors.len().div_ceil(count);
    let keys = |no: usize| {
        vec![
            ("split.no".to_string(), Value::U16(no as u16)),
            ("split.count".to_string(), Value::U16(count as u16)),
            (
                "split.tensors.count".to_string(),
                Value::I32(g.tensors.len() as i32),
            ),
        ]
    };
    let mut paths = vec![];
    for (no, chunk) in g.tensors.chunks(per).enumerate() {
        let mut meta = keys(no);
        if no == 0 {
            meta.extend(g.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let specs: Vec<TensorSpec> = chunk
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ggml_type: t.ggml_type,
            })
            .collect();
        let path = dir.join(format!("smol-{:05}-of-{count:05}.gguf", no + 1));
        write_gguf(&path, &meta, &specs, |i, w| {
            let t = &chunk[i];
            w.write_all(&g.map[t.offset..t.offset + t.len_bytes])
                .map_err(|e| deepseek_loader::LoadError::Io {
                    path: path.clone(),
                    source: e,
                })
        })
        .unwrap();
        paths.push(path);
    }
    paths
}

fn logits(model: &Path) -> Vec<f32> {
    let m = Model::load(model, &mut |_, _| {}).unwrap();
    let ids = [1u32, 504, 3575, 282, 4649, 314];
    let mut pool = m.new_cache_pool(16, CacheDtype::F32);
    let mut cache = Default::default();
    m.forward(
        &mut pool,
        &mut [SeqStep {
            tokens: &ids,
            cache: &mut cache,
        }],
        LogitsFor::AllTokens,
        PrefillPath::Auto,
        None,
    )
    .unwrap()
}

fn load_err(path: &Path) -> String {
    match deepseek_loader::open_checkpoint(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_model_in_parts_loads_from_its_first_part() {
    let src = smollm2();
    assert!(
        src.exists(),
        "{} is missing: run scripts/fetch_smollm2.py",
        src.display()
    );
    let dir = std::env::temp_dir().join(format!("deepseek-split-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let parts = split(&src, &dir, 3);
    let whole = logits(&src);
    assert_eq!(
        logits(&parts[0]),
        whole,
        "the parts' logits differ from the whole file's"
    );
    // A folder holding only the parts: its first part.
    assert_eq!(logits(&dir), whole);

    // Not the first part: the error says which to pass.
    let e = load_err(&parts[1]);
    assert!(
        e.contains("part 2 of 3") && e.contains("smol-00001-of-00003.gguf"),
        "{e}"
    );
    // A part that is another part under a wrong name.
    let third = std::fs::read(&parts[2]).unwrap();
    std::fs::copy(&parts[1], &parts[2]).unwrap();
    let e = load_err(&parts[0]);
    assert!(
        e.contains("smol-00003-of-00003.gguf") && e.contains("should be part 3 of 3"),
        "{e}"
    );
    // A missing part.
    std::fs::remove_file(&parts[2]).unwrap();
    let e = load_err(&parts[0]);
    assert!(
        e.contains("smol-00003-of-00003.gguf") && e.contains("missing"),
        "{e}"
    );
    std::fs::write(&parts[2], third).unwrap();
    assert_eq!(logits(&parts[0]), whole);
    let _ = std::fs::remove_dir_all(&dir);
}
