//! Writes GGUF version 3 files: metadata, tensor infos, then each tensor's data streamed in
//! order (a caller fills one tensor at a time, so a large model never sits in memory twice).

use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use crate::gguf::{type_row_bytes, Value, DEFAULT_ALIGNMENT};
use crate::LoadError;

/// One tensor to write: GGML dims (fastest first) and type.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
}

impl TensorSpec {
    pub fn len_bytes(&self) -> usize {
        let rows: u64 = self.dims[1..].iter().product();
        (rows * type_row_bytes(self.ggml_type, self.dims[0]).expect("writable type")) as usize
    }
}

fn put_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(w: &mut impl Write, v: &Value) -> std::io::Result<()> {
    match v {
        Value::U8(x) => w.write_all(&[*x]),
        Value::I8(x) => w.write_all(&[*x as u8]),
        Value::U16(x) => w.write_all(&x.to_le_bytes()),
        Value::I16(x) => w.write_all(&x.to_le_bytes()),
        Value::U32(x) => w.write_all(&x.to_le_bytes()),
        Value::I32(x) => w.write_all(&x.to_le_bytes()),
        Value::F32(x) => w.write_all(&x.to_le_bytes()),
        Value::Bool(x) => w.write_all(&[*x as u8]),
        Value::String(s) => put_string(w, s),
        Value::U64(x) => w.write_all(&x.to_le_bytes()),
        Value::I64(x) => w.write_all(&x.to_le_bytes()),
        Value::F64(x) => w.write_all(&x.to_le_bytes()),
        Value::Array(a) => {
            let elem = a.first().map(value_type).unwrap_or(4);
            w.write_all(&elem.to_le_bytes())?;
            w.write_all(&(a.len() as u64).to_le_bytes())?;
            for x in a {
                put_value(w, x)?;
            }
            Ok(())
        }
    }
}

/// Writes `path`. `fill(i, out)` must write exactly `tensors[i].len_bytes()` bytes.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[TensorSpec],
    mut fill: impl FnMut(usize, &mut dyn Write) -> Result<(), LoadError>,
) -> Result<(), LoadError> {
    let io = |e: std::io::Error| LoadError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let align = DEFAULT_ALIGNMENT;
    w.write_all(b"GGUF").map_err(io)?;
    w.write_all(&3u32.to_le_bytes()).map_err(io)?;
    w.write_all(&(tensors.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(&(metadata.len() as u64).to_le_bytes())
        .map_err(io)?;
    for (k, v) in metadata {
        put_string(&mut w, k).map_err(io)?;
        w.write_all(&value_type(v).to_le_bytes()).map_err(io)?;
        put_value(&mut w, v).map_err(io)?;
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut w, &t.name).map_err(io)?;
        w.write_all(&(t.dims.len() as u32).to_le_bytes())
            .map_err(io)?;
        for d in &t.dims {
            w.write_all(&d.to_le_bytes()).map_err(io)?;
        }
        w.write_all(&t.ggml_type.to_le_bytes()).map_err(io)?;
        w.write_all(&offset.to_le_bytes()).map_err(io)?;
        offset = (offset + t.len_bytes() as u64).next_multiple_of(align as u64);
    }
    let pad = |w: &mut BufWriter<std::fs::File>| -> std::io::Result<()> {
        let pos = w.stream_position()? as usize;
        w.write_all(&vec![0u8; pos.next_multiple_of(align) - pos])
    };
    pad(&mut w).map_err(io)?;
    for (i, t) in tensors.iter().enumerate() {
        let before = w.stream_position().map_err(io)?;
        fill(i, &mut w)?;
        let written = w.stream_position().map_err(io)? - before;
        if written != t.len_bytes() as u64 {
            return Err(LoadError::Parse {
                path: path.to_path_buf(),
                msg: format!(
                    "tensor `{}`: wrote {written} bytes, expected {}",
                    t.name,
                    t.len_bytes()
                ),
            });
        }
        pad(&mut w).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufFile, GGML_F32};

    #[test]
    fn written_files_read_back() {
        let dir = std::env::temp_dir().join(format!("gguf-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::I32(3), Value::I32(-1)]),
            ),
            ("x.f".to_string(), Value::F32(0.5)),
        ];
        let tensors = vec![
            TensorSpec {
                name: "a".into(),
                dims: vec![3, 2],
                ggml_type: GGML_F32,
            },
            TensorSpec {
                name: "b".into(),
                dims: vec![5],
                ggml_type: GGML_F32,
            },
        ];
        write_gguf(&path, &meta, &tensors, |i, w| {
            let n = if i == 0 { 6 } else { 5 };
            for k in 0..n {
                w.write_all(&((i * 10 + k) as f32).to_le_bytes()).unwrap();
            }
            Ok(())
        })
        .unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get("x.list").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(g.get("x.f"), Some(&Value::F32(0.5)));
        let b = &g.tensors[1];
        assert_eq!(b.offset % 32, 0);
        let v = f32::from_le_bytes(g.map[b.offset + 4..b.offset + 8].try_into().unwrap());
        assert_eq!(v, 11.0);
        std::fs::remove_dir_all(dir).ok();
    }
}
