//! Model ids (`ORG/NAME[@REVISION]`) resolved offline in the Hugging Face cache, laid out as
//! `huggingface_hub` writes it:
//!
//! ```text
//! $HF_HUB_CACHE (else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub)
//!   models--ORG--NAME/
//!     refs/main              the commit hash `main` points at (a file, one line)
//!     snapshots/<commit>/    the files of that revision: symlinks into ../../blobs/
//!     blobs/<hash>
//! ```
//!
//! Nothing is downloaded: a model that is not in the cache is an error saying where it looked
//! and how to download it.

use std::path::{Path, PathBuf};

/// A model id as users write it: `deepseek-ai/DeepSeek-V2-Lite-Chat`, optionally `@REVISION`
/// (a branch, a tag or a commit hash).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelId {
    pub org: String,
    pub name: String,
    pub revision: Option<String>,
}

fn id_part(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ModelId {
    /// `Some` for text shaped like a Hub id (`ORG/NAME[@REV]`: one slash, the Hub's characters,
    /// not a path such as `./x`, `/x` or `~/x`).
    pub fn parse(s: &str) -> Option<ModelId> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains("..") => (r, Some(rev.to_string())),
            Some(_) => return None,
            None => (s, None),
        };
        let (org, name) = repo.split_once('/')?;
        (id_part(org) && id_part(name)).then(|| ModelId {
            org: org.into(),
            name: name.into(),
            revision,
        })
    }

    /// The repository's folder name in the cache.
    pub fn folder(&self) -> String {
        format!("models--{}--{}", self.org, self.name)
    }
}

impl std::fmt::Display for ModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.org, self.name)?;
        if let Some(r) = &self.revision {
            write!(f, "@{r}")?;
        }
        Ok(())
    }
}

/// The hub cache folder, from the environment as `huggingface_hub` reads it.
pub fn hub_cache_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let set = |k: &str| env(k).filter(|v| !v.is_empty());
    if let Some(d) = set("HF_HUB_CACHE").or_else(|| set("HUGGINGFACE_HUB_CACHE")) {
        return Some(PathBuf::from(d));
    }
    if let Some(h) = set("HF_HOME") {
        return Some(Path::new(&h).join("hub"));
    }
    if let Some(x) = set("XDG_CACHE_HOME") {
        return Some(Path::new(&x).join("huggingface/hub"));
    }
    set("HOME").map(|h| Path::new(&h).join(".cache/huggingface/hub"))
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// The snapshot folder of `id` in the cache at `cache`: the model's files (or, for a GGUF-only
/// repository with one `.gguf` file, that file).
pub fn resolve(id: &ModelId, cache: &Path) -> Result<PathBuf, String> {
    let repo = cache.join(id.folder());
    let download = format!(
        "download it with `huggingface-cli download {}/{}{}` (or `hf download`), or pass a folder or .gguf path",
        id.org,
        id.name,
        id.revision
            .as_deref()
            .map(|r| format!(" --revision {r}"))
            .unwrap_or_default()
    );
    if !repo.is_dir() {
        return Err(format!(
            "model `{id}` is not a path here, and the Hugging Face cache {} has no {}; {download}",
            cache.display(),
            id.folder()
        ));
    }
    let rev = id.revision.as_deref().unwrap_or("main");
    let commit = match std::fs::read_to_string(repo.join("refs").join(rev)) {
        Ok(c) => c.trim().to_string(),
        Err(_) if is_commit_hash(rev) => rev.to_string(),
        Err(_) => {
            let refs = list(&repo.join("refs"));
            return Err(format!(
                "model `{id}`: {} has no revision `{rev}` (refs there: {}); {download}",
                repo.display(),
                if refs.is_empty() {
                    "none".into()
                } else {
                    refs.join(", ")
                }
            ));
        }
    };
    let snap = repo.join("snapshots").join(&commit);
    if !snap.is_dir() {
        return Err(format!(
            "model `{id}`: revision `{rev}` is commit {commit}, but {} is missing (an interrupted download?); {download}",
            snap.display()
        ));
    }
    if snap.join("config.json").exists() {
        return Ok(snap);
    }
    let ggufs: Vec<String> = list(&snap)
        .into_iter()
        .filter(|f| f.ends_with(".gguf"))
        .collect();
    let paths: Vec<PathBuf> = ggufs.iter().map(|f| snap.join(f)).collect();
    // The parts of one split model: its first part.
    if let Some(first) = crate::gguf_split::first_of_one_split(&paths) {
        return Ok(first);
    }
    match ggufs.as_slice() {
        [one] => Ok(snap.join(one)),
        // Neither: the folder still serves what it has (a tokenizer alone, say); loading
        // weights from it fails naming the missing config.json.
        [] => Ok(snap),
        many => Err(format!(
            "model `{id}` has {} GGUF files ({}); pass one as --model {}/FILE",
            many.len(),
            many.join(", "),
            snap.display()
        )),
    }
}

/// File names in a folder, sorted (empty when it cannot be read).
fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_told_from_paths() {
        let id = ModelId::parse("deepseek-ai/DeepSeek-V2-Lite-Chat").unwrap();
        assert_eq!(id.folder(), "models--deepseek-ai--DeepSeek-V2-Lite-Chat");
        assert_eq!(id.revision, None);
        let id = ModelId::parse("org/name.v2@refs-pr-1").unwrap();
        assert_eq!(id.revision.as_deref(), Some("refs-pr-1"));
        assert_eq!(id.to_string(), "org/name.v2@refs-pr-1");
        for path in [
            "models/deepseek-coder-nano/x",
            "./org/name",
            "/abs/path",
            "~/x/y",
            "model.gguf",
            "../x",
            "org/",
            "/name",
            "org/name@",
            "org/name@../../etc",
            "org name/x",
        ] {
            assert_eq!(ModelId::parse(path), None, "{path}");
        }
    }

    #[test]
    fn the_cache_folder_follows_huggingface_hub() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d = |pairs| hub_cache_dir(&env(pairs));
        assert_eq!(
            d(&[("HOME", "/h")]),
            Some("/h/.cache/huggingface/hub".into())
        );
        assert_eq!(
            d(&[("HOME", "/h"), ("XDG_CACHE_HOME", "/x")]),
            Some("/x/huggingface/hub".into())
        );
        assert_eq!(
            d(&[("HOME", "/h"), ("HF_HOME", "/hf")]),
            Some("/hf/hub".into())
        );
        assert_eq!(
            d(&[("HF_HOME", "/hf"), ("HF_HUB_CACHE", "/c")]),
            Some("/c".into())
        );
        assert_eq!(d(&[("HF_HUB_CACHE", "")]), None);
    }
}
