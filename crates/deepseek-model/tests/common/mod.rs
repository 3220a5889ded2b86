//! What the parity tests share: where the repository and the fixtures are, the reference
//! tensors, and comparing logits.
#![allow(dead_code)] // each test file uses its part

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

/// The repository: where the tests were built, or `DEEPSEEK_REPO` (a test binary carried to a
/// GPU machine runs in another checkout).
pub fn workspace() -> PathBuf {
    std::env::var_os("DEEPSEEK_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .canonicalize()
        .unwrap()
}

pub fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    let own = workspace().join("tests/fixtures");
    let shared = std::env::var_os("DEEPSEEK_SHARED_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/fixtures"));
    for root in [own, shared] {
        if let Ok(rd) = std::fs::read_dir(&root) {
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("reference.safetensors").exists())
                .collect();
            v.sort();
            dirs.extend(v);
        }
    }
    dirs
}

pub struct Reference {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Reference {
    pub fn load(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::I32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                safetensors::Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                    .collect(),
                d => panic!("unexpected dtype {d:?} for {name}"),
            };
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Reference { tensors }
    }
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(|(_, d)| d.as_slice())
    }
    pub fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name)
            .unwrap_or_else(|| panic!("{name} missing"))
            .iter()
            .map(|&v| v as u32)
            .collect()
    }
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}
