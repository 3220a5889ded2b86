//! GGUF files (versions 2 and 3), as llama.cpp writes them: header, metadata, tensor infos,
//! aligned data section. The file is memory-mapped; tensors stay in the mapping.
//!
//! The parser checks every length against the bytes that remain, so a truncated or corrupt file
//! gives an error naming the file and the field, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::LoadError;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: usize = 32;

/// GGML tensor types we read (ids as in ggml.h).
pub const GGML_F32: u32 = 0;
pub const GGML_F16: u32 = 1;
pub const GGML_BF16: u32 = 30;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            Value::Bool(b) => Some(b as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => self.as_u64().map(|v| v != 0),
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's description. `dims` are in GGML order (fastest-varying first), so a PyTorch
/// `[rows, cols]` weight has `dims == [cols, rows]`.
#[derive(Clone, Debug)]
pub struct GgufTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Absolute byte offset in the file.
    pub offset: usize,
    pub len_bytes: usize,
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub alignment: usize,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<GgufTensor>,
    pub map: Arc<Mmap>,
}

/// Bytes per row of `cols` values of a GGML type, or None for a type we cannot read.
pub fn type_row_bytes(ggml_type: u32, cols: u64) -> Option<u64> {
    match ggml_type {
        GGML_F32 => cols.checked_mul(4),
        GGML_F16 | GGML_BF16 => cols.checked_mul(2),
        t => {
            let q = deepseek_kernels::QuantType::from_ggml_type(t)?;
            let be = q.block_elems() as u64;
            if !cols.is_multiple_of(be) {
                return None;
            }
            (cols / be).checked_mul(q.block_bytes() as u64)
        }
    }
}

pub fn type_name(ggml_type: u32) -> String {
    match ggml_type {
        GGML_F32 => "F32".into(),
        GGML_F16 => "F16".into(),
        GGML_BF16 => "BF16".into(),
        t => match deepseek_kernels::QuantType::from_ggml_type(t) {
            Some(q) => q.name().to_uppercase(),
            None => format!("type {t}"),
        },
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str, msg: impl std::fmt::Display) -> LoadError {
        LoadError::Parse {
            path: self.path.to_path_buf(),
            msg: format!("{what}: {msg} (at byte {})", self.pos),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], LoadError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(
                what,
                format!(
                    "file is truncated: needs {n} more bytes, {} remain",
                    self.buf.len() - self.pos
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, LoadError> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64, LoadError> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    /// A count that must fit in the remaining bytes at `min_each` bytes per item.
    fn count(&mut self, what: &str, min_each: usize) -> Result<usize, LoadError> {
        let n = self.u64(what)?;
        let remaining = (self.buf.len() - self.pos) as u64;
        if n > remaining / min_each.max(1) as u64 {
            return Err(self.err(
                what,
                format!("count {n} is impossible: only {remaining} bytes remain"),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String, LoadError> {
        let n = self.count(what, 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(what, "string is not valid UTF-8"))
    }
    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, LoadError> {
        Ok(match ty {
            0 => Value::U8(self.take(1, what)?[0]),
            1 => Value::I8(self.take(1, what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(self.take(2, what)?.try_into().unwrap())),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(self.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(self.u32(what)?)),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.err(what, "arrays nested too deeply"));
                }
                let elem = self.u32(what)?;
                let min_each = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => return Err(self.err(what, format!("unknown array element type {t}"))),
                };
                let n = self.count(what, min_each)?;
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(self.value(elem, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            t => return Err(self.err(what, format!("unknown metadata value type {t}"))),
        })
    }
}

/// Largest dimension or element count we accept (guards the arithmetic, not a real limit).
const MAX_ELEMENTS: u64 = 1 << 40;

/// What [`parse`] reads: version, alignment, metadata, tensor infos.
pub type Parsed = (u32, usize, BTreeMap<String, Value>, Vec<GgufTensor>);

/// Parses the header, metadata and tensor infos of `buf` (the whole file).
pub fn parse(buf: &[u8], path: &Path) -> Result<Parsed, LoadError> {
    let mut c = Cursor { buf, pos: 0, path };
    let magic = c.take(4, "magic")?;
    if magic != GGUF_MAGIC {
        return Err(c.err(
            "magic",
            format!("not a GGUF file (starts with {magic:02x?})"),
        ));
    }
    let version = c.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(c.err(
            "version",
            format!("GGUF version {version} is not supported (2 and 3 are)"),
        ));
    }
    let n_tensors = c.count("tensor count", 24)?;
    let n_kv = c.count("metadata count", 12)?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&format!("metadata key {i}"))?;
        let ty = c.u32(&format!("type of `{key}`"))?;
        let v = c.value(ty, &format!("metadata `{key}`"), 0)?;
        metadata.insert(key, v);
    }
    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a as usize,
            _ => return Err(c.err("general.alignment", format!("{v:?} is not a power of two"))),
        },
    };
    let mut infos = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&format!("tensor {i} name"))?;
        let n_dims = c.u32(&format!("tensor `{name}` dimension count"))?;
        if n_dims == 0 || n_dims > 4 {
            return Err(c.err(
                &format!("tensor `{name}`"),
                format!("{n_dims} dimensions (1 to 4 allowed)"),
            ));
        }
        let mut dims = vec![];
        for _ in 0..n_dims {
            let d = c.u64(&format!("tensor `{name}` dimensions"))?;
            if d == 0 || d > MAX_ELEMENTS {
                return Err(c.err(&format!("tensor `{name}`"), format!("absurd dimension {d}")));
            }
            dims.push(d);
        }
        let ggml_type = c.u32(&format!("tensor `{name}` type"))?;
        let rel = c.u64(&format!("tensor `{name}` offset"))?;
        infos.push((name, dims, ggml_type, rel));
    }
    let data_start = c.pos.next_multiple_of(alignment);
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ggml_type, rel) in infos {
        let err = |msg: String| LoadError::Parse {
            path: path.to_path_buf(),
            msg: format!("tensor `{name}`: {msg}"),
        };
        let elements = dims
            .iter()
            .try_fold(1u64, |a, &d| {
                a.checked_mul(d).filter(|&x| x <= MAX_ELEMENTS)
            })
            .ok_or_else(|| err(format!("absurd shape {dims:?}")))?;
        let rows = elements / dims[0];
        let row_bytes = type_row_bytes(ggml_type, dims[0]).ok_or_else(|| {
            err(format!(
                "unsupported tensor type {} for a row of {} values",
                type_name(ggml_type),
                dims[0]
            ))
        })?;
        let len = rows
            .checked_mul(row_bytes)
            .ok_or_else(|| err("size overflows".into()))?;
        let start = (data_start as u64)
            .checked_add(rel)
            .ok_or_else(|| err("offset overflows".into()))?;
        if start
            .checked_add(len)
            .is_none_or(|end| end > buf.len() as u64)
        {
            return Err(err(format!(
                "data ({len} bytes at offset {start}) extends past the end of the file ({} bytes)",
                buf.len()
            )));
        }
        tensors.push(GgufTensor {
            name,
            dims,
            ggml_type,
            offset: start as usize,
            len_bytes: len as usize,
        });
    }
    Ok((version, alignment, metadata, tensors))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, LoadError> {
        let file = std::fs::File::open(path).map_err(|e| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // SAFETY: read-only mapping; like every mmap-based loader we assume the file is not
        // truncated while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let (version, alignment, metadata, tensors) = parse(&map, path)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version,
            alignment,
            metadata,
            tensors,
            map: Arc::new(map),
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Result<&str, LoadError> {
        self.get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| self.err("metadata `general.architecture` is missing"))
    }

    pub fn err(&self, msg: impl Into<String>) -> LoadError {
        LoadError::Parse {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(n_tensors.to_le_bytes());
        b.extend(n_kv.to_le_bytes());
        b
    }

    fn string(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }

    /// A valid file with one 2×32 f32 tensor and one metadata string.
    fn valid() -> Vec<u8> {
        file(GGML_F32, 32)
    }

    fn file(ty: u32, dim0: u64) -> Vec<u8> {
        let mut b = header(3, 1, 1);
        string(&mut b, "general.architecture");
        b.extend(8u32.to_le_bytes());
        string(&mut b, "llama");
        string(&mut b, "w");
        b.extend(2u32.to_le_bytes());
        b.extend(dim0.to_le_bytes());
        b.extend(2u64.to_le_bytes());
        b.extend(ty.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.resize(b.len().next_multiple_of(32), 0);
        b.extend(std::iter::repeat_n(0u8, 2 * 32 * 4));
        b
    }

    fn parse_err(b: &[u8]) -> String {
        match parse(b, Path::new("bad.gguf")) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_a_valid_file() {
        let b = valid();
        let (v, align, meta, tensors) = parse(&b, Path::new("ok.gguf")).unwrap();
        assert_eq!((v, align), (3, 32));
        assert_eq!(meta["general.architecture"].as_str(), Some("llama"));
        assert_eq!(tensors[0].dims, vec![32, 2]);
        assert_eq!(tensors[0].len_bytes, 256);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let b = valid();
        for n in 0..b.len() - 1 {
            let e = parse_err(&b[..n]);
            assert!(e.starts_with("bad.gguf: "), "{e}");
        }
    }

    #[test]
    fn bad_files_are_named_errors() {
        assert!(parse_err(b"GGML\x03\0\0\0").contains("not a GGUF file"));
        assert!(parse_err(&header(1, 0, 0)).contains("version 1"));
        // A count that cannot fit in the file.
        assert!(parse_err(&header(3, u64::MAX, 0)).contains("impossible"));
        assert!(parse_err(&file(99, 32)).contains("unsupported tensor type"));
        // A row that is not a whole number of blocks.
        assert!(parse_err(&file(8, 33)).contains("unsupported tensor type Q8_0"));
        // Data past the end.
        let mut b = valid();
        b.truncate(b.len() - 4);
        assert!(parse_err(&b).contains("past the end"));
        // An absurd dimension.
        assert!(parse_err(&file(GGML_F32, u64::MAX)).contains("absurd dimension"));
    }
}
