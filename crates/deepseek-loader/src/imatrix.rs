//! Importance matrices as llama.cpp writes and reads them: per weight matrix (by its GGUF
//! name), the sum over input rows of each input column's square and the number of rows, one
//! row of sums per expert for stacked experts. Two file formats: GGUF (`NAME.in_sum2`
//! `[cols, experts]` and `NAME.counts` `[1, experts]` tensors, `imatrix.*` metadata; what
//! `llama-imatrix` writes by default) and the legacy `.dat` (per entry: name, calls, values =
//! mean square × calls).

use std::collections::BTreeMap;
use std::path::Path;

use crate::gguf::{GgufFile, Value, GGML_F32};
use crate::gguf_writer::{write_gguf, TensorSpec};
use crate::LoadError;

/// The name under which an importance matrix collects the per-head inputs of one half of an
/// MLA `kv_b_proj` (named `kv_b_proj`) as llama.cpp splits it: `half` "k_b" takes each head's
/// `q_nope` (the input of `attn_k_b`), "v_b" each head's attention-weighted latent (the input
/// of `attn_v_b`); heads side by side in one row, as llama-imatrix stacks them.
pub fn kv_b_half_name(kv_b_proj: &str, half: &str) -> String {
    format!("{kv_b_proj}#{half}")
}

/// One matrix's statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// `[experts, cols]`: Σ x² per input column (one row for a plain matrix).
    pub sums: Vec<f32>,
    /// `[experts]`: input rows seen.
    pub counts: Vec<f32>,
}

impl Entry {
    pub fn cols(&self) -> usize {
        self.sums.len() / self.counts.len().max(1)
    }

    /// Expert `e`'s mean square per column of a matrix `cols` wide (the quantizer's
    /// weights); None when it saw no rows or the shapes disagree. (The legacy format keeps one
    /// count for all experts.)
    pub fn mean_squares(&self, e: usize, cols: usize) -> Option<Vec<f32>> {
        if cols == 0 || !self.sums.len().is_multiple_of(cols) || e >= self.sums.len() / cols {
            return None;
        }
        let experts = self.sums.len() / cols;
        let n = match self.counts.len() == experts {
            true => self.counts[e],
            false => *self.counts.first()?,
        };
        (n > 0.0).then(|| {
            self.sums[e * cols..(e + 1) * cols]
                .iter()
                .map(|s| s / n)
                .collect()
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    pub entries: BTreeMap<String, Entry>,
    /// The texts it was computed on.
    pub datasets: Vec<String>,
    /// Chunks of `chunk_size` tokens evaluated.
    pub chunk_count: u32,
    pub chunk_size: u32,
}

fn parse_err(path: &Path, msg: impl Into<String>) -> LoadError {
    LoadError::Parse {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

impl Imatrix {
    /// Reads either format (GGUF by its magic, else legacy `.dat`).
    pub fn read(path: &Path) -> Result<Self, LoadError> {
        let io = |e: std::io::Error| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut magic = [0u8; 4];
        let is_gguf = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(io)?;
            f.read(&mut magic).map_err(io)? == 4 && &magic == b"GGUF"
        };
        // A GGUF file is memory-mapped by its reader; only the legacy format is read whole.
        match is_gguf {
            true => Self::read_gguf(path),
            false => Self::read_dat(path, &std::fs::read(path).map_err(io)?),
        }
    }

    fn read_gguf(path: &Path) -> Result<Self, LoadError> {
        let g = GgufFile::open(path)?;
        // A tensor's dims and f32 values, if the file has it.
        type Floats = Option<(Vec<u64>, Vec<f32>)>;
        let floats = |name: &str| -> Result<Floats, LoadError> {
            let Some(t) = g.tensors.iter().find(|t| t.name == name) else {
                return Ok(None);
            };
            if t.ggml_type != GGML_F32 {
                return Err(g.err(format!("tensor `{name}` is not f32")));
            }
            let data = &g.map[t.offset..t.offset + t.len_bytes];
            let v = data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Ok(Some((t.dims.clone(), v)))
        };
        let mut m = Imatrix {
            datasets: g
                .get("imatrix.datasets")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            chunk_count: g
                .get("imatrix.chunk_count")
                .and_then(|v| v.as_u64())
                .unwrap_or(0) as u32,
            chunk_size: g
                .get("imatrix.chunk_size")
                .and_then(|v| v.as_u64())
                .unwrap_or(0) as u32,
            ..Default::default()
        };
        for t in &g.tensors {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let (dims, sums) = floats(&t.name)?.expect("listed");
            let counts = floats(&format!("{name}.counts"))?
                .ok_or_else(|| g.err(format!("`{name}.in_sum2` has no `{name}.counts`")))?
                .1;
            let experts = dims.get(1).copied().unwrap_or(1) as usize;
            if counts.len() != experts || sums.len() != experts * dims[0] as usize {
                return Err(g.err(format!(
                    "`{name}`: {} sums and {} counts do not make {experts} rows",
                    sums.len(),
                    counts.len()
                )));
            }
            m.entries.insert(name.to_string(), Entry { sums, counts });
        }
        Ok(m)
    }

    fn read_dat(path: &Path, b: &[u8]) -> Result<Self, LoadError> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], LoadError> {
            let s = b.get(at..at + n).ok_or_else(|| {
                parse_err(path, format!("truncated at byte {at}: not an imatrix file"))
            })?;
            at += n;
            Ok(s)
        };
        let i32_at = |s: &[u8]| i32::from_le_bytes(s.try_into().unwrap());
        let n = i32_at(take(4)?);
        if n < 0 || n as usize > b.len() / 12 {
            return Err(parse_err(path, format!("{n} entries: not an imatrix file")));
        }
        let mut m = Imatrix::default();
        for _ in 0..n {
            let len = i32_at(take(4)?);
            if len <= 0 || len as usize > 4096 {
                return Err(parse_err(path, format!("an entry name of {len} bytes")));
            }
            let name = String::from_utf8_lossy(take(len as usize)?).into_owned();
            let ncall = i32_at(take(4)?).max(1) as f32;
            let nval = i32_at(take(4)?);
            if nval < 0 || nval as usize * 4 > b.len() {
                return Err(parse_err(path, format!("`{name}`: {nval} values")));
            }
            let sums: Vec<f32> = take(nval as usize * 4)?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            // Stored as mean × calls: one count of `calls` makes the same means.
            m.entries.insert(
                name,
                Entry {
                    sums,
                    counts: vec![ncall],
                },
            );
        }
        if let Ok(last) = take(4) {
            m.chunk_count = i32_at(last).max(0) as u32;
            if let Ok(len) = take(4) {
                let len = i32_at(len).max(0) as usize;
                if let Ok(s) = take(len) {
                    m.datasets.push(String::from_utf8_lossy(s).into_owned());
                }
            }
        }
        // Stacked experts share one count in this format: split the row evenly.
        Ok(m)
    }

    /// Writes the GGUF format (names sorted, as llama.cpp writes them).
    pub fn write_gguf(&self, path: &Path) -> Result<(), LoadError> {
        let meta = vec![
            ("general.type".to_string(), Value::String("imatrix".into())),
            (
                "imatrix.datasets".to_string(),
                Value::Array(
                    self.datasets
                        .iter()
                        .map(|d| Value::String(d.clone()))
                        .collect(),
                ),
            ),
            (
                "imatrix.chunk_count".to_string(),
                Value::U32(self.chunk_count),
            ),
            (
                "imatrix.chunk_size".to_string(),
                Value::U32(self.chunk_size),
            ),
        ];
        let mut tensors = vec![];
        let mut data: Vec<&[f32]> = vec![];
        for (name, e) in &self.entries {
            let experts = e.counts.len() as u64;
            tensors.push(TensorSpec {
                name: format!("{name}.in_sum2"),
                dims: vec![e.cols() as u64, experts],
                ggml_type: GGML_F32,
            });
            data.push(&e.sums);
            tensors.push(TensorSpec {
                name: format!("{name}.counts"),
                dims: vec![1, experts],
                ggml_type: GGML_F32,
            });
            data.push(&e.counts);
        }
        write_gguf(path, &meta, &tensors, |i, out| {
            for v in data[i] {
                out.write_all(&v.to_le_bytes()).map_err(|e| LoadError::Io {
                    path: path.to_path_buf(),
                    source: e,
                })?;
            }
            Ok(())
        })
    }

    /// Writes the legacy `.dat` format: per entry the mean squares × calls, calls being
    /// the chunks its rows fill (at least one); entries with no rows at all are left out, and
    /// an expert that saw none gets ones, as llama.cpp does.
    pub fn write_dat(&self, path: &Path) -> Result<(), LoadError> {
        let io = |e: std::io::Error| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let mut out = Vec::new();
        let chunk = self.chunk_size.max(1) as f32;
        let kept: Vec<(&String, &Entry)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.counts.iter().any(|&c| c > 0.0))
            .collect();
        out.extend((kept.len() as i32).to_le_bytes());
        for (name, e) in kept {
            out.extend((name.len() as i32).to_le_bytes());
            out.extend(name.as_bytes());
            let most = e.counts.iter().cloned().fold(0.0, f32::max);
            let ncall = ((most / chunk).ceil() as i32).max(1);
            out.extend(ncall.to_le_bytes());
            out.extend((e.sums.len() as i32).to_le_bytes());
            let c = e.cols();
            for (i, &s) in e.sums.iter().enumerate() {
                let count = e.counts[i / c];
                let v = if count > 0.0 { s / count } else { 1.0 };
                out.extend((v * ncall as f32).to_le_bytes());
            }
        }
        out.extend((self.chunk_count as i32).to_le_bytes());
        let dataset = self.datasets.last().cloned().unwrap_or_default();
        out.extend((dataset.len() as i32).to_le_bytes());
        out.extend(dataset.as_bytes());
        std::fs::write(path, out).map_err(io)
    }

    /// Writes `path` in the format its name asks for: `.dat` legacy, anything else GGUF.
    pub fn write(&self, path: &Path) -> Result<(), LoadError> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("dat") => self.write_dat(path),
            _ => self.write_gguf(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Imatrix {
        let mut m = Imatrix {
            datasets: vec!["text.txt".into()],
            chunk_count: 3,
            chunk_size: 4,
            ..Default::default()
        };
        m.entries.insert(
            "blk.0.attn_q.weight".into(),
            Entry {
                sums: vec![4.0, 8.0, 12.0],
                counts: vec![4.0],
            },
        );
        m.entries.insert(
            "blk.1.ffn_up_exps.weight".into(),
            Entry {
                sums: vec![2.0, 2.0, 0.0, 0.0, 9.0, 3.0],
                counts: vec![2.0, 0.0, 3.0],
            },
        );
        m
    }

    #[test]
    fn both_formats_round_trip_the_mean_squares() {
        let dir = std::env::temp_dir().join(format!("imatrix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let m = sample();
        let g = dir.join("m.gguf");
        m.write(&g).unwrap();
        assert_eq!(Imatrix::read(&g).unwrap(), m);
        let d = dir.join("m.dat");
        m.write(&d).unwrap();
        let back = Imatrix::read(&d).unwrap();
        assert_eq!(
            (back.chunk_count, back.datasets.clone()),
            (3, m.datasets.clone())
        );
        let q = &back.entries["blk.0.attn_q.weight"];
        assert_eq!(q.mean_squares(0, 3).unwrap(), vec![1.0, 2.0, 3.0]);
        assert_eq!(
            m.entries["blk.0.attn_q.weight"].mean_squares(0, 3),
            q.mean_squares(0, 3)
        );
        // One count for all experts in this format; the expert with no rows reads as ones.
        let up = &back.entries["blk.1.ffn_up_exps.weight"];
        let mean = |e| up.mean_squares(e, 2).unwrap();
        assert_eq!((mean(1), mean(2)), (vec![1.0, 1.0], vec![3.0, 1.0]));
        assert_eq!(
            m.entries["blk.1.ffn_up_exps.weight"].mean_squares(1, 2),
            None
        );
        assert_eq!(up.mean_squares(3, 2), None);
        for bad in [&b"\x05\x00\x00\x00"[..], b"", b"\xff\xff\xff\x7f"] {
            std::fs::write(dir.join("bad.dat"), bad).unwrap();
            assert!(Imatrix::read(&dir.join("bad.dat")).is_err());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
