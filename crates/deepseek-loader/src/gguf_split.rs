//! GGUF files published in parts, as llama.cpp's `gguf-split` writes them
//! (`NAME-00001-of-00005.gguf`, …): the first part holds all the metadata and some tensors, the
//! others more tensors; every part carries `split.no` (from 0), `split.count` and
//! `split.tensors.count`. Given the first part, the others are found beside it by name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::gguf::GgufFile;
use crate::LoadError;

/// `split.count`, `split.no` of a part (None for a file in one piece).
fn split_of(g: &GgufFile) -> Result<Option<(usize, usize)>, LoadError> {
    let count = g.get("split.count").and_then(|v| v.as_u64());
    let no = g.get("split.no").and_then(|v| v.as_u64());
    match (count, no) {
        (None, None) => Ok(None),
        (Some(c), Some(n)) if c >= 1 && n < c => Ok(Some((c as usize, n as usize))),
        (Some(1), None) => Ok(None),
        _ => Err(g.err(format!(
            "metadata `split.count` ({count:?}) and `split.no` ({no:?}) do not describe a part"
        ))),
    }
}

/// `(prefix, part, count)` of `NAME-00001-of-00005.gguf`.
pub fn part_name(path: &Path) -> Option<(String, usize, usize)> {
    let name = path.file_name()?.to_str()?.strip_suffix(".gguf")?;
    let (rest, count) = name.rsplit_once("-of-")?;
    let (prefix, part) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(part) || !digits(count) {
        return None;
    }
    Some((prefix.to_string(), part.parse().ok()?, count.parse().ok()?))
}

/// Part `part` (from 1) of `count` of the model written to `path`: `NAME-0000k-of-0000n.gguf`
/// beside it, NAME being `path`'s name without `.gguf`.
pub fn part_path(path: &Path, part: usize, count: usize) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    path.with_file_name(format!("{stem}-{part:05}-of-{count:05}.gguf"))
}

/// The metadata a part carries to say which it is (the first part also carries the model's).
pub fn split_metadata(
    no: usize,
    count: usize,
    tensors: usize,
) -> Vec<(String, crate::gguf::Value)> {
    use crate::gguf::Value;
    vec![
        ("split.no".into(), Value::U16(no as u16)),
        ("split.count".into(), Value::U16(count as u16)),
        ("split.tensors.count".into(), Value::I32(tensors as i32)),
    ]
}

/// Consecutive runs of tensors, each part's bytes (`sizes`) at most `max_bytes` unless one
/// tensor alone is larger (it then has a part of its own), as llama.cpp's `gguf-split
/// --split-max-size` cuts them.
pub fn plan_parts(sizes: &[usize], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut parts = vec![];
    let (mut start, mut bytes) = (0, 0);
    for (i, &s) in sizes.iter().enumerate() {
        if i > start && bytes + s > max_bytes {
            parts.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += s;
    }
    if start < sizes.len() || parts.is_empty() {
        parts.push(start..sizes.len());
    }
    parts
}

/// The first part when `files` are exactly the parts of one split model (the same NAME and
/// count); None otherwise.
pub fn first_of_one_split(files: &[PathBuf]) -> Option<PathBuf> {
    let mut model = None;
    let mut first = None;
    for p in files {
        let (prefix, k, count) = part_name(p)?;
        match &model {
            None => model = Some((prefix, count)),
            Some(m) if *m != (prefix, count) => return None,
            Some(_) => {}
        }
        if k == 1 {
            first = Some(p.clone());
        }
    }
    first
}

/// Every part of the model `first` begins, `first` included, in order; `[first]` for a file in
/// one piece. Errors name a missing part, a part that is not the one its name says, or a
/// `first` that is not the first part.
pub fn open_parts(first: Arc<GgufFile>) -> Result<Vec<Arc<GgufFile>>, LoadError> {
    let Some((count, no)) = split_of(&first)? else {
        return Ok(vec![first]);
    };
    let name = part_name(&first.path);
    if no != 0 {
        let hint = match &name {
            Some((prefix, _, n)) => format!(": pass the first part, {prefix}-00001-of-{n:05}.gguf"),
            None => String::new(),
        };
        return Err(first.err(format!("is part {} of {count}{hint}", no + 1)));
    }
    if count == 1 {
        return Ok(vec![first]);
    }
    let Some((prefix, _, _)) = name else {
        return Err(first.err(format!(
            "is the first of {count} parts, but its name is not NAME-00001-of-{count:05}.gguf, \
             so the other parts cannot be found"
        )));
    };
    let dir = first.path.parent().unwrap_or(Path::new("."));
    let mut parts = vec![first.clone()];
    for k in 2..=count {
        let path: PathBuf = dir.join(format!("{prefix}-{k:05}-of-{count:05}.gguf"));
        if !path.exists() {
            return Err(LoadError::Parse {
                path: path.clone(),
                msg: format!("part {k} of {count} of {} is missing", first.path.display()),
            });
        }
        let part = GgufFile::open(&path)?;
        match split_of(&part)? {
            Some((c, n)) if c == count && n == k - 1 => {}
            other => {
                return Err(part.err(format!(
                    "should be part {k} of {count} (split.no {}), but its metadata says {}",
                    k - 1,
                    match other {
                        Some((c, n)) => format!("part {} of {c}", n + 1),
                        None => "it is not a part".into(),
                    }
                )))
            }
        }
        parts.push(Arc::new(part));
    }
    let total: usize = parts.iter().map(|p| p.tensors.len()).sum();
    if let Some(want) = first.get("split.tensors.count").and_then(|v| v.as_u64()) {
        if want as usize != total {
            return Err(first.err(format!(
                "metadata `split.tensors.count` is {want}, but the {count} parts hold {total} tensors"
            )));
        }
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::{first_of_one_split, part_name, part_path, plan_parts};
    use std::path::{Path, PathBuf};

    #[test]
    fn part_names_parse() {
        assert_eq!(
            part_name(Path::new("/m/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf")),
            Some(("DeepSeek-R1-UD-IQ1_S".into(), 1, 3))
        );
        assert_eq!(part_name(Path::new("model.gguf")), None);
        assert_eq!(part_name(Path::new("x-1-of-3.gguf")), None);
        let p = |s: &str| PathBuf::from(s);
        let parts = [p("m-00002-of-00002.gguf"), p("m-00001-of-00002.gguf")];
        assert_eq!(first_of_one_split(&parts), Some(p("m-00001-of-00002.gguf")));
        assert_eq!(first_of_one_split(&[p("a.gguf"), p("b.gguf")]), None);
        let mixed = [p("m-00001-of-00002.gguf"), p("n-00002-of-00002.gguf")];
        assert_eq!(first_of_one_split(&mixed), None);
        assert_eq!(
            part_path(Path::new("/o/m-q4.gguf"), 2, 3),
            p("/o/m-q4-00002-of-00003.gguf")
        );
        assert_eq!(
            part_name(&part_path(Path::new("x.gguf"), 1, 12)),
            Some(("x".into(), 1, 12))
        );
    }

    #[test]
    fn parts_keep_under_the_limit_and_every_tensor_somewhere() {
        assert_eq!(plan_parts(&[4, 4, 4, 4], 8), vec![0..2, 2..4]);
        assert_eq!(plan_parts(&[4, 4, 4], 9), vec![0..2, 2..3]);
        // A tensor larger than the limit gets a part of its own.
        assert_eq!(plan_parts(&[2, 20, 2], 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(plan_parts(&[1, 2], 100), vec![0..2]);
        assert_eq!(plan_parts(&[], 100), vec![0..0]);
    }
}
