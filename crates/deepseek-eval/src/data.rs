//! The evaluation sets, as `scripts/fetch_eval_data.py` writes them to `assets/eval/`, each
//! checked against its recorded sha256 before use.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::EvalError;

pub const MMLU_FILE: (&str, &str) = (
    "mmlu.jsonl",
    "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
);
pub const GSM8K_FILE: (&str, &str) = (
    "gsm8k.jsonl",
    "752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac",
);
pub const HUMANEVAL_FILE: (&str, &str) = (
    "humaneval.jsonl",
    "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2",
);

/// Reads `dir/name`, checking its checksum (None skips the check: test data).
pub fn read_checked(
    dir: &Path,
    (name, sha): (&str, &str),
    check: bool,
) -> Result<String, EvalError> {
    let path: PathBuf = dir.join(name);
    let bytes = std::fs::read(&path).map_err(|e| EvalError::Data {
        path: path.clone(),
        msg: format!("{e} (fetch the evaluation data with `python3 scripts/fetch_eval_data.py`)"),
    })?;
    if check {
        let got = format!("{:x}", Sha256::digest(&bytes));
        if got != sha {
            return Err(EvalError::Data {
                path,
                msg: format!("sha256 is {got}, expected {sha}: the file changed (delete it and run scripts/fetch_eval_data.py)"),
            });
        }
    }
    String::from_utf8(bytes).map_err(|e| EvalError::Data {
        path,
        msg: format!("not UTF-8: {e}"),
    })
}

/// Parses JSON lines into `T`, naming the line of a bad row.
pub fn jsonl<T: for<'de> Deserialize<'de>>(text: &str, path: &str) -> Result<Vec<T>, EvalError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| EvalError::Data {
                path: PathBuf::from(path),
                msg: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

#[derive(Deserialize, Debug, Clone)]
pub struct MmluRow {
    pub question: String,
    pub answer_a: String,
    pub answer_b: String,
    pub answer_c: String,
    pub answer_d: String,
    pub correct_answer: String,
    pub topic: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct Gsm8kRow {
    pub question: String,
    pub answer: String,
}

#[derive(Deserialize, Debug, Clone)]
pub struct HumanEvalRow {
    pub task_id: String,
    pub prompt: String,
    pub test: String,
    pub entry_point: String,
    #[serde(default)]
    pub canonical_solution: String,
}
