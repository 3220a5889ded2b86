//! The weights of a checkpoint by their Hugging Face names: memory-mapped safetensors, single-file
//! or sharded (`model.safetensors.index.json`), or a GGUF file whose tensors `gguf_model` maps
//! onto the same names. Weights stay in the mapping (zero copy) unless their format needs
//! converting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deepseek_kernels::{Buffer, Matrix, MatrixData, QuantType};
use memmap2::Mmap;
use safetensors::tensor::SafeTensors;
use safetensors::Dtype;

use crate::LoadError;

/// A stored tensor's element format.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Quant(QuantType),
    /// FP8 e4m3 (DeepSeek-V3's published weights), with block scales beside it.
    F8E4M3,
    Other(String),
}

impl TensorType {
    pub fn name(&self) -> String {
        match self {
            TensorType::F32 => "f32".into(),
            TensorType::F16 => "f16".into(),
            TensorType::BF16 => "bf16".into(),
            TensorType::Quant(q) => q.name().into(),
            TensorType::F8E4M3 => "f8_e4m3".into(),
            TensorType::Other(s) => s.to_lowercase(),
        }
    }
    fn from_safetensors(d: Dtype) -> Self {
        match d {
            Dtype::F32 => TensorType::F32,
            Dtype::F16 => TensorType::F16,
            Dtype::BF16 => TensorType::BF16,
            Dtype::F8_E4M3 => TensorType::F8E4M3,
            other => TensorType::Other(format!("{other:?}")),
        }
    }
}

/// The tensors described by a safetensors file's header (`buf` is the whole file), each
/// checked to lie inside the file with as many bytes as its shape and dtype need. Fuzzed by
/// `fuzz/fuzz_targets/safetensors_header.rs`.
pub fn parse_header(buf: &[u8], path: &Path) -> Result<Vec<(String, TensorInfo)>, LoadError> {
    let err = |msg: String| LoadError::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let (header_len, meta) = SafeTensors::read_metadata(buf)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let data_start = 8usize
        .checked_add(header_len)
        .ok_or_else(|| err("header length overflows".into()))?;
    let mut out = vec![];
    for (name, info) in meta.tensors() {
        let (a, b) = info.data_offsets;
        let end = data_start.checked_add(b);
        if b < a || end.is_none_or(|e| e > buf.len()) {
            return Err(err(format!(
                "tensor `{name}`: data {a}..{b} extends past the end of the file ({} bytes)",
                buf.len()
            )));
        }
        let elements = info
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| err(format!("tensor `{name}`: absurd shape {:?}", info.shape)))?;
        let need = elements
            .checked_mul(info.dtype.bitsize())
            .map(|bits| bits.div_ceil(8));
        if need != Some(b - a) {
            return Err(err(format!(
                "tensor `{name}`: shape {:?} of {:?} needs {need:?} bytes, the header gives {}",
                info.shape,
                info.dtype,
                b - a
            )));
        }
        out.push((
            name,
            TensorInfo {
                shard: 0,
                dtype: TensorType::from_safetensors(info.dtype),
                shape: info.shape.clone(),
                offset: data_start + a,
                len_bytes: b - a,
            },
        ));
    }
    Ok(out)
}

/// An FP8 e4m3 ("fn": no infinities, 0x7f/0xff are NaN) value.
pub fn fp8_e4m3_to_f32(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0xF) as i32;
    let man = (b & 7) as f32;
    if exp == 0xF && b & 7 == 7 {
        return f32::NAN;
    }
    if exp == 0 {
        sign * man / 8.0 * 2f32.powi(-6)
    } else {
        sign * (1.0 + man / 8.0) * 2f32.powi(exp - 7)
    }
}

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub shard: usize,
    pub dtype: TensorType,
    pub shape: Vec<usize>,
    /// Absolute byte offset in the shard file.
    pub offset: usize,
    pub len_bytes: usize,
}

pub struct WeightStore {
    pub dir: PathBuf,
    shards: Vec<(PathBuf, Arc<Mmap>)>,
    tensors: HashMap<String, TensorInfo>,
    /// Weights built at load time (GGUF's split `attn_k_b`/`attn_v_b` rejoined, FP8 dequantized).
    built: HashMap<String, Matrix>,
    /// Set when the weights come from a GGUF file (its metadata holds the tokenizer).
    pub gguf: Option<Arc<crate::gguf::GgufFile>>,
}

impl WeightStore {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`,
    /// or failing both every `*.safetensors` file in `dir`.
    pub fn open(dir: &Path) -> Result<Self, LoadError> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| LoadError::Io {
                path: index.clone(),
                source: e,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| LoadError::Parse {
                    path: index.clone(),
                    msg: format!("invalid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LoadError::Parse {
                    path: index.clone(),
                    msg: "missing object `weight_map`".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.exists() {
            vec![single]
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| LoadError::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            v.sort();
            if v.is_empty() {
                return Err(LoadError::Parse {
                    path: dir.to_path_buf(),
                    msg:
                        "no model.safetensors, model.safetensors.index.json or *.safetensors found"
                            .into(),
                });
            }
            v
        };
        let mut store = WeightStore::empty(dir);
        for path in files {
            store.add_shard(path)?;
        }
        Ok(store)
    }

    pub(crate) fn empty(dir: &Path) -> Self {
        WeightStore {
            dir: dir.to_path_buf(),
            shards: vec![],
            tensors: HashMap::new(),
            built: HashMap::new(),
            gguf: None,
        }
    }

    /// Adds a mapping; returns its shard index.
    pub(crate) fn add_map(&mut self, path: PathBuf, map: Arc<Mmap>) -> usize {
        self.shards.push((path, map));
        self.shards.len() - 1
    }

    pub(crate) fn insert(&mut self, name: String, info: TensorInfo) {
        self.tensors.insert(name, info);
    }

    pub(crate) fn insert_built(&mut self, name: String, m: Matrix) {
        self.built.insert(name, m);
    }

    fn add_shard(&mut self, path: PathBuf) -> Result<(), LoadError> {
        let file = std::fs::File::open(&path).map_err(|e| LoadError::Io {
            path: path.clone(),
            source: e,
        })?;
        // SAFETY: the file is opened read-only; like every mmap-based loader we assume it is not
        // truncated while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::Io {
            path: path.clone(),
            source: e,
        })?;
        let shard = self.shards.len();
        for (name, mut info) in parse_header(&map, &path)? {
            info.shard = shard;
            self.tensors.insert(name, info);
        }
        self.shards.push((path, Arc::new(map)));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.built.contains_key(name)
    }

    pub fn info(&self, name: &str) -> Result<&TensorInfo, LoadError> {
        self.tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                name: name.to_string(),
                dir: self.dir.clone(),
            })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// What tells these weights from any others, cheaply: SHA-256 over every tensor's name,
    /// type and shape and the first and last KiB of its bytes (any fine-tune or merge changes
    /// those), without reading whole files. The disk cache keys its blocks by it.
    pub fn fingerprint(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        let mut h = Sha256::new();
        // Read from the files, not through the mappings: a page touched through a mapping
        // stays resident in this process (with the 64 KiB Linux maps around each fault), and
        // for a GGUF file's thousands of expert slices that was ~450 MB of RSS kept to the end.
        let files: Vec<Option<std::fs::File>> = self
            .shards
            .iter()
            .map(|(path, _)| std::fs::File::open(path).ok())
            .collect();
        let mut buf = vec![0u8; 1024];
        for name in names {
            let t = &self.tensors[name];
            h.update(name.as_bytes());
            h.update(format!("{:?}{:?}{}", t.dtype, t.shape, t.len_bytes).as_bytes());
            let map = &self.shards[t.shard].1;
            if t.offset + t.len_bytes > map.len() {
                continue;
            }
            let k = t.len_bytes.min(1024);
            for at in [t.offset, t.offset + t.len_bytes - k] {
                let bytes = &mut buf[..k];
                match &files[t.shard] {
                    Some(f) if read_at(f, bytes, at) => {}
                    _ => bytes.copy_from_slice(&map[at..at + k]),
                }
                h.update(&*bytes);
            }
        }
        h.finalize().into()
    }

    /// Total bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.tensors.values().map(|t| t.len_bytes).sum()
    }

    fn check_shape(&self, name: &str, expected: &[usize]) -> Result<&TensorInfo, LoadError> {
        let info = self.info(name)?;
        if info.shape != expected {
            return Err(LoadError::Shape {
                name: name.to_string(),
                expected: expected.to_vec(),
                found: info.shape.clone(),
            });
        }
        Ok(info)
    }

    /// A `[rows, cols]` weight, memory-mapped in its stored format, or repacked once for the
    /// kernels where they have a faster layout for it ([`Matrix::repacked`]).
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, LoadError> {
        Ok(self.matrix_as_stored(name, rows, cols)?.repacked())
    }

    /// A `[rows, cols]` weight exactly as stored (no repacking).
    pub fn matrix_as_stored(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, LoadError> {
        if let Some(m) = self.built.get(name) {
            if (m.rows, m.cols) != (rows, cols) {
                return Err(LoadError::Shape {
                    name: name.to_string(),
                    expected: vec![rows, cols],
                    found: vec![m.rows, m.cols],
                });
            }
            return Ok(m.clone());
        }
        let info = self.check_shape(name, &[rows, cols])?;
        self.matrix_any_shape(name, info, rows, cols)
    }

    /// A vector (norm weights, biases) converted to f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, LoadError> {
        if self.built.contains_key(name) {
            return Ok(self.matrix(name, 1, len)?.to_f32());
        }
        let info = self.check_shape(name, &[len])?;
        Ok(self.matrix_any_shape(name, info, 1, len)?.to_f32())
    }

    fn matrix_any_shape(
        &self,
        name: &str,
        info: &TensorInfo,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, LoadError> {
        let map = self.shards[info.shard].1.clone();
        let n = rows * cols;
        let data = match &info.dtype {
            TensorType::F32 => MatrixData::F32(Buffer::from_map(map, info.offset, n)),
            TensorType::BF16 => MatrixData::BF16(Buffer::from_map(map, info.offset, n)),
            TensorType::F16 => MatrixData::F16(Buffer::from_map(map, info.offset, n)),
            TensorType::Quant(q) => MatrixData::Quant {
                ty: *q,
                data: Buffer::from_map(map, info.offset, rows * q.row_bytes(cols)),
            },
            TensorType::F8E4M3 => return self.fp8_matrix(name, info, rows, cols),
            other => {
                return Err(LoadError::Dtype {
                    name: name.to_string(),
                    dtype: other.name(),
                })
            }
        };
        Ok(Matrix { rows, cols, data })
    }

    /// DeepSeek-V3's FP8 weights: e4m3 values with one f32 `weight_scale_inv` per 128×128
    /// block (`w = fp8 · scale_inv`), dequantized to bf16 at load.
    fn fp8_matrix(
        &self,
        name: &str,
        info: &TensorInfo,
        rows: usize,
        cols: usize,
    ) -> Result<Matrix, LoadError> {
        const BLOCK: usize = 128;
        let scale_name = format!("{name}_scale_inv");
        let (br, bc) = (rows.div_ceil(BLOCK), cols.div_ceil(BLOCK));
        let scale_info = self.check_shape(&scale_name, &[br, bc])?;
        let scales = match scale_info.dtype {
            TensorType::F32 | TensorType::BF16 | TensorType::F16 => self
                .matrix_any_shape(&scale_name, scale_info, br, bc)?
                .to_f32(),
            ref other => {
                return Err(LoadError::Dtype {
                    name: scale_name,
                    dtype: other.name(),
                })
            }
        };
        let map = &self.shards[info.shard].1;
        let bytes = &map[info.offset..info.offset + rows * cols];
        let lut: Vec<f32> = (0..=255u8).map(fp8_e4m3_to_f32).collect();
        let mut out = vec![0u16; rows * cols];
        for (r, (o, w)) in out.chunks_mut(cols).zip(bytes.chunks(cols)).enumerate() {
            let srow = &scales[(r / BLOCK) * bc..(r / BLOCK + 1) * bc];
            for (c, (o, &b)) in o.iter_mut().zip(w).enumerate() {
                *o = half::bf16::from_f32(lut[b as usize] * srow[c / BLOCK]).to_bits();
            }
        }
        Ok(Matrix {
            rows,
            cols,
            data: MatrixData::BF16(out.into()),
        })
    }

    /// The dtype most weights are stored in (for `info`).
    /// The bytes of each stored type, most first, and the bits per weight of them all: what a
    /// file's mix of types (a quantization "recipe") comes to.
    pub fn dtype_mix(&self) -> (Vec<(String, usize)>, f64) {
        let mut by: HashMap<String, usize> = HashMap::new();
        let mut values = 0usize;
        for t in self.tensors.values() {
            *by.entry(t.dtype.name()).or_default() += t.len_bytes;
            values += t.shape.iter().product::<usize>();
        }
        let mut mix: Vec<(String, usize)> = by.into_iter().collect();
        mix.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let bits = 8.0 * self.total_bytes() as f64 / values.max(1) as f64;
        (mix, bits)
    }

    pub fn main_dtype(&self) -> String {
        let mut by: HashMap<String, usize> = HashMap::new();
        for t in self.tensors.values() {
            *by.entry(t.dtype.name()).or_default() += t.len_bytes;
        }
        by.into_iter()
            .max_by_key(|(_, b)| *b)
            .map(|(d, _)| d)
            .unwrap_or_default()
    }
}

/// Fills `buf` from `f` at byte `at`; false where that fails (the caller reads the mapping).
#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], at: usize) -> bool {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at as u64).is_ok()
}

#[cfg(not(unix))]
fn read_at(_: &std::fs::File, _: &mut [u8], _: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_safetensors_headers_are_named_errors() {
        let p = Path::new("bad.safetensors");
        let msg = |b: &[u8]| parse_header(b, p).unwrap_err().to_string();
        assert!(msg(b"").contains("not a valid safetensors"));
        assert!(msg(&u64::MAX.to_le_bytes()).contains("not a valid safetensors"));
        let file = |header: &str, data: usize| {
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend(header.as_bytes());
            b.extend(vec![0u8; data]);
            b
        };
        let h = r#"{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#;
        assert!(parse_header(&file(h, 16), p).is_ok());
        let m = msg(&file(h, 8));
        assert!(m.starts_with("bad.safetensors: "), "{m}");
        // Every truncation is an error, never a panic.
        let full = file(h, 16);
        for n in 0..full.len() {
            assert!(parse_header(&full[..n], p).is_err());
        }
    }

    #[test]
    fn fp8_e4m3_values() {
        assert_eq!(fp8_e4m3_to_f32(0x38), 1.0);
        assert_eq!(fp8_e4m3_to_f32(0xB8), -1.0);
        assert_eq!(fp8_e4m3_to_f32(0x7E), 448.0);
        assert_eq!(fp8_e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(fp8_e4m3_to_f32(0x00), 0.0);
        assert!(fp8_e4m3_to_f32(0x7F).is_nan());
        assert_eq!(fp8_e4m3_to_f32(0x3C), 1.5);
    }

    /// A 130×260 FP8 weight (blocks that do not divide it) with its scales, in a safetensors
    /// file as DeepSeek-V3 ships them, loads as value × the scale of its 128×128 block.
    #[test]
    fn fp8_weights_with_block_scales_load_dequantized() {
        use safetensors::tensor::TensorView;
        let (rows, cols) = (130, 260);
        let w: Vec<u8> = (0..rows * cols).map(|i| (i % 120) as u8).collect();
        let scales: Vec<f32> = (0..2 * 3).map(|i| 0.5 + i as f32).collect();
        let sb: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = vec![
            (
                "w.weight",
                TensorView::new(Dtype::F8_E4M3, vec![rows, cols], &w).unwrap(),
            ),
            (
                "w.weight_scale_inv",
                TensorView::new(Dtype::F32, vec![2, 3], &sb).unwrap(),
            ),
        ];
        let dir = std::env::temp_dir().join(format!("fp8-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        safetensors::serialize_to_file(tensors, None, &dir.join("model.safetensors")).unwrap();
        let store = WeightStore::open(&dir).unwrap();
        let m = store.matrix("w.weight", rows, cols).unwrap();
        let got = m.to_f32();
        for r in [0, 127, 128, 129] {
            for c in [0, 127, 128, 255, 256, 259] {
                let want = fp8_e4m3_to_f32(w[r * cols + c]) * scales[(r / 128) * 3 + c / 128];
                let want = half::bf16::from_f32(want).to_f32();
                assert_eq!(got[r * cols + c], want, "({r}, {c})");
            }
        }
        std::fs::remove_dir_all(dir).ok();
    }
}
