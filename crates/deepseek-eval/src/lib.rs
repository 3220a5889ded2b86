//! The benchmarks DeepSeek reports, run on our engine: MMLU (5-shot, log-likelihood of the
//! answer letter), GSM8K (8-shot chain of thought, greedy), HumanEval (pass@k in a sandbox).
//!
//! A benchmark is a list of items scored in batches through an [`EvalModel`]; each scored item
//! is appended to a partial-results file at once, so an interrupted run resumes where it
//! stopped. The [`Report`] has the score, the per-group scores and, for DeepSeek's own models,
//! the published figure.

pub mod data;
pub mod gsm8k;
pub mod humaneval;
pub mod mmlu;
pub mod model;
pub mod sandbox;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use model::{ChoiceRequest, EngineModel, EvalModel, GenRequest};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    #[error("engine: {0}")]
    Engine(String),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {msg}")]
    Io { path: PathBuf, msg: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Benchmark {
    Mmlu,
    Gsm8k,
    HumanEval,
}

impl Benchmark {
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Mmlu => "mmlu",
            Benchmark::Gsm8k => "gsm8k",
            Benchmark::HumanEval => "humaneval",
        }
    }
    pub fn default_shots(self) -> usize {
        match self {
            Benchmark::Mmlu => 5,
            Benchmark::Gsm8k => 8,
            Benchmark::HumanEval => 0,
        }
    }
}

pub struct Options {
    /// Where the data files are (`assets/eval`).
    pub data_dir: PathBuf,
    /// Check the files' checksums (off only for test data).
    pub check_data: bool,
    /// Score at most this many items (MMLU: spread over subjects, one each first).
    pub limit: Option<usize>,
    pub shots: Option<usize>,
    /// Items sent to the engine together.
    pub batch: usize,
    /// HumanEval samples per problem.
    pub samples: usize,
    pub sandbox: sandbox::Limits,
}

/// One scored item, as stored in the partial-results file.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ItemRecord {
    pub id: String,
    pub group: String,
    /// 1 right, 0 wrong (HumanEval: passed samples / samples).
    pub score: f64,
    #[serde(default)]
    pub passed: usize,
    #[serde(default)]
    pub samples: usize,
    pub detail: Value,
}

/// The partial-results file: a header line naming the run, then one line per scored item.
pub struct Partial {
    path: Option<PathBuf>,
    done: HashMap<String, ItemRecord>,
    file: Option<std::fs::File>,
}

impl Partial {
    /// No file (tests).
    pub fn in_memory() -> Self {
        Partial {
            path: None,
            done: HashMap::new(),
            file: None,
        }
    }

    /// Opens `path`, resuming what it holds when its header equals `header`.
    pub fn open(path: &Path, header: &Value) -> Result<Self, EvalError> {
        let io = |e: std::io::Error| EvalError::Io {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let mut done = HashMap::new();
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(io)?;
            let mut lines = text.lines();
            let head: Value = lines
                .next()
                .and_then(|l| serde_json::from_str(l).ok())
                .unwrap_or(Value::Null);
            if head != *header {
                return Err(EvalError::Input(format!(
                    "{}: holds partial results of another run ({head}); this run is {header}. Delete the file or choose another --out",
                    path.display()
                )));
            }
            for l in lines {
                // A line cut short by an interruption is simply redone.
                if let Ok(r) = serde_json::from_str::<ItemRecord>(l) {
                    done.insert(r.id.clone(), r);
                }
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        if done.is_empty() {
            file.set_len(0).map_err(io)?;
            writeln!(file, "{header}").map_err(io)?;
        }
        Ok(Partial {
            path: Some(path.to_path_buf()),
            done,
            file: Some(file),
        })
    }

    pub fn resumed(&self) -> usize {
        self.done.len()
    }

    fn get(&self, id: &str) -> Option<&ItemRecord> {
        self.done.get(id)
    }

    fn record(&mut self, r: ItemRecord) -> Result<(), EvalError> {
        if let (Some(f), Some(p)) = (self.file.as_mut(), &self.path) {
            let line = serde_json::to_string(&r).unwrap_or_default();
            writeln!(f, "{line}")
                .and_then(|_| f.flush())
                .map_err(|e| EvalError::Io {
                    path: p.clone(),
                    msg: e.to_string(),
                })?;
        }
        self.done.insert(r.id.clone(), r);
        Ok(())
    }
}

/// Figures DeepSeek published, matched on the model's folder or file name.
/// (name fragment, benchmark, score in %, source)
const PUBLISHED: &[(&str, Benchmark, f64, &str)] = &[
    (
        "deepseek-v2-lite",
        Benchmark::Mmlu,
        58.3,
        "DeepSeek-V2-Lite model card (base)",
    ),
    (
        "deepseek-v2-lite",
        Benchmark::Gsm8k,
        41.1,
        "DeepSeek-V2-Lite model card (base)",
    ),
    (
        "deepseek-v2-lite",
        Benchmark::HumanEval,
        29.9,
        "DeepSeek-V2-Lite model card (base)",
    ),
    (
        "deepseek-coder-v2-lite",
        Benchmark::HumanEval,
        81.1,
        "DeepSeek-Coder-V2 paper (Lite-Instruct)",
    ),
    (
        "deepseek-coder-v2",
        Benchmark::HumanEval,
        90.2,
        "DeepSeek-Coder-V2 paper (Instruct)",
    ),
    (
        "deepseek-v2",
        Benchmark::Mmlu,
        78.5,
        "DeepSeek-V2 paper (base)",
    ),
    (
        "deepseek-llm-67b",
        Benchmark::Mmlu,
        73.8,
        "DeepSeek LLM model card (as quoted in the evaluation issue)",
    ),
    (
        "deepseek-llm-67b",
        Benchmark::Gsm8k,
        82.6,
        "DeepSeek LLM model card (as quoted in the evaluation issue)",
    ),
];

pub fn published(model_name: &str, b: Benchmark) -> Option<(f64, &'static str)> {
    let n = model_name.to_lowercase();
    PUBLISHED
        .iter()
        .find(|(frag, bench, _, _)| *bench == b && n.contains(frag))
        .map(|&(_, _, v, s)| (v, s))
}

#[derive(Debug, Clone)]
pub struct Report {
    pub benchmark: Benchmark,
    pub model: String,
    pub shots: usize,
    /// Headline metric name and value (a fraction).
    pub metric: String,
    pub score: f64,
    pub items: usize,
    /// Per subject / group: (name, items, score).
    pub groups: Vec<(String, usize, f64)>,
    /// Other metrics (macro/micro averages, pass@k).
    pub metrics: BTreeMap<String, f64>,
    pub published: Option<(f64, &'static str)>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        json!({
            "benchmark": self.benchmark.name(),
            "model": self.model,
            "shots": self.shots,
            "metric": self.metric,
            "score": self.score,
            "items": self.items,
            "metrics": self.metrics,
            "groups": self.groups.iter().map(|(g, n, s)| json!({"name": g, "items": n, "score": s})).collect::<Vec<_>>(),
            "published": self.published.map(|(v, s)| json!({"score_percent": v, "source": s})),
            "notes": self.notes,
        })
    }

    /// The results table, with the published figure beside ours when there is one.
    pub fn table(&self) -> String {
        let mut t = String::new();
        if self.groups.len() > 1 {
            t.push_str(&format!(
                "{:<44} {:>6} {:>8}\n",
                "subject", "items", "acc %"
            ));
            for (g, n, s) in &self.groups {
                t.push_str(&format!("{g:<44} {n:>6} {:>8.1}\n", s * 100.0));
            }
            t.push('\n');
        }
        t.push_str(&format!(
            "{:<12} {:<28} {:>6} {:>10} {:>11}\n",
            "benchmark", "metric", "items", "ours %", "published %"
        ));
        let pubd = self
            .published
            .map(|(v, _)| format!("{v:.1}"))
            .unwrap_or_else(|| "-".into());
        t.push_str(&format!(
            "{:<12} {:<28} {:>6} {:>10.1} {:>11}\n",
            self.benchmark.name(),
            self.metric,
            self.items,
            self.score * 100.0,
            pubd
        ));
        for (k, v) in &self.metrics {
            if *k != self.metric {
                t.push_str(&format!(
                    "{:<12} {:<28} {:>6} {:>10.1} {:>11}\n",
                    "",
                    k,
                    self.items,
                    v * 100.0,
                    "-"
                ));
            }
        }
        if let Some((_, src)) = self.published {
            t.push_str(&format!("published: {src}\n"));
        }
        for n in &self.notes {
            t.push_str(&format!("note: {n}\n"));
        }
        t
    }
}

/// Runs `bench` on `model`, skipping items `partial` already holds.
pub fn run(
    bench: Benchmark,
    model: &mut dyn EvalModel,
    model_name: &str,
    opts: &Options,
    partial: &mut Partial,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, EvalError> {
    let shots = opts.shots.unwrap_or(bench.default_shots());
    let batch = opts.batch.max(1);
    let mut notes = vec![];
    let records: Vec<ItemRecord> = match bench {
        Benchmark::Mmlu => {
            let text = data::read_checked(&opts.data_dir, data::MMLU_FILE, opts.check_data)?;
            let rows: Vec<data::MmluRow> = data::jsonl(&text, data::MMLU_FILE.0)?;
            let (rows, dropped) = mmlu::clean(rows);
            if dropped > 0 {
                notes.push(format!(
                    "{dropped} rows without an A-D answer (CSV headers) dropped"
                ));
            }
            notes.push(format!(
                "the {shots} shots of each subject are its first {shots} questions, not scored"
            ));
            let items = mmlu::limited(mmlu::items(&rows, shots), opts.limit);
            let total = items.len();
            let mut out = vec![];
            let todo: Vec<&mmlu::Item> = items
                .iter()
                .filter(|it| {
                    if let Some(r) = partial.get(&it.id) {
                        out.push(r.clone());
                        false
                    } else {
                        true
                    }
                })
                .collect();
            progress(out.len(), total);
            for chunk in todo.chunks(batch) {
                let reqs: Vec<ChoiceRequest> = chunk.iter().map(|it| it.request.clone()).collect();
                let lls = model.loglikelihoods(&reqs)?;
                for (it, ll) in chunk.iter().zip(lls) {
                    let pred = mmlu::choose(&ll);
                    let r = ItemRecord {
                        id: it.id.clone(),
                        group: it.subject.clone(),
                        score: (pred == it.answer) as u8 as f64,
                        passed: 0,
                        samples: 0,
                        detail: json!({"pred": mmlu::LETTERS[pred], "answer": mmlu::LETTERS[it.answer], "loglikelihoods": ll}),
                    };
                    partial.record(r.clone())?;
                    out.push(r);
                }
                progress(out.len(), total);
            }
            out
        }
        Benchmark::Gsm8k => {
            if shots > gsm8k::EXAMPLES.len() {
                return Err(EvalError::Input(format!(
                    "--shots {shots}: GSM8K has {} worked examples",
                    gsm8k::EXAMPLES.len()
                )));
            }
            let text = data::read_checked(&opts.data_dir, data::GSM8K_FILE, opts.check_data)?;
            let rows: Vec<data::Gsm8kRow> = data::jsonl(&text, data::GSM8K_FILE.0)?;
            let n = opts.limit.unwrap_or(rows.len()).min(rows.len());
            let items: Vec<(String, &data::Gsm8kRow)> = rows[..n]
                .iter()
                .enumerate()
                .map(|(i, r)| (format!("gsm8k/{i}"), r))
                .collect();
            generate_items(
                model,
                &items,
                batch,
                partial,
                progress,
                |(_, row)| gsm8k::request(row, shots),
                |(id, row), text| {
                    let ok = gsm8k::is_correct(text, &row.answer);
                    ItemRecord {
                        id: id.clone(),
                        group: "gsm8k".into(),
                        score: ok as u8 as f64,
                        passed: 0,
                        samples: 0,
                        detail: json!({"extracted": gsm8k::extract(text), "gold": gsm8k::gold(&row.answer), "output": text}),
                    }
                },
            )?
        }
        Benchmark::HumanEval => {
            let text = data::read_checked(&opts.data_dir, data::HUMANEVAL_FILE, opts.check_data)?;
            let rows: Vec<data::HumanEvalRow> = data::jsonl(&text, data::HUMANEVAL_FILE.0)?;
            let n = opts.limit.unwrap_or(rows.len()).min(rows.len());
            let samples = opts.samples.max(1);
            let total = n;
            let mut out = vec![];
            let todo: Vec<&data::HumanEvalRow> = rows[..n]
                .iter()
                .filter(|r| {
                    if let Some(rec) = partial.get(&r.task_id) {
                        out.push(rec.clone());
                        false
                    } else {
                        true
                    }
                })
                .collect();
            progress(out.len(), total);
            // Several problems per batch, all samples of a problem together.
            let per = (batch / samples).max(1);
            for chunk in todo.chunks(per) {
                let reqs: Vec<GenRequest> = chunk
                    .iter()
                    .flat_map(|r| (0..samples).map(move |s| humaneval::request(r, s, samples)))
                    .collect();
                let texts = model.generate(&reqs)?;
                for (k, row) in chunk.iter().enumerate() {
                    let mut statuses = vec![];
                    let mut passed = 0;
                    for text in &texts[k * samples..(k + 1) * samples] {
                        let o = sandbox::run_python(&humaneval::program(row, text), &opts.sandbox)
                            .map_err(|e| {
                                EvalError::Engine(format!("sandbox: cannot run python3: {e}"))
                            })?;
                        passed += o.passed() as usize;
                        statuses.push(json!({"completion": text, "result": o.describe()}));
                    }
                    let r = ItemRecord {
                        id: row.task_id.clone(),
                        group: "humaneval".into(),
                        score: passed as f64 / samples as f64,
                        passed,
                        samples,
                        detail: json!({"samples": statuses}),
                    };
                    partial.record(r.clone())?;
                    out.push(r);
                }
                progress(out.len(), total);
            }
            out
        }
    };
    Ok(summarize(
        bench,
        model_name,
        shots,
        records,
        notes,
        opts.samples.max(1),
    ))
}

/// Generation items in batches: `request` builds each prompt, `score` reads each output.
fn generate_items<T>(
    model: &mut dyn EvalModel,
    items: &[(String, T)],
    batch: usize,
    partial: &mut Partial,
    progress: &mut dyn FnMut(usize, usize),
    request: impl Fn(&(String, T)) -> GenRequest,
    score: impl Fn(&(String, T), &str) -> ItemRecord,
) -> Result<Vec<ItemRecord>, EvalError> {
    let mut out = vec![];
    let todo: Vec<&(String, T)> = items
        .iter()
        .filter(|it| {
            if let Some(r) = partial.get(&it.0) {
                out.push(r.clone());
                false
            } else {
                true
            }
        })
        .collect();
    progress(out.len(), items.len());
    for chunk in todo.chunks(batch) {
        let reqs: Vec<GenRequest> = chunk.iter().map(|it| request(it)).collect();
        let texts = model.generate(&reqs)?;
        for (it, text) in chunk.iter().zip(texts) {
            let r = score(it, &text);
            partial.record(r.clone())?;
            out.push(r);
        }
        progress(out.len(), items.len());
    }
    Ok(out)
}

fn summarize(
    bench: Benchmark,
    model: &str,
    shots: usize,
    records: Vec<ItemRecord>,
    notes: Vec<String>,
    samples: usize,
) -> Report {
    let n = records.len();
    let mut groups: Vec<(String, usize, f64)> = vec![];
    for r in &records {
        match groups.iter_mut().find(|g| g.0 == r.group) {
            Some(g) => {
                g.1 += 1;
                g.2 += r.score;
            }
            None => groups.push((r.group.clone(), 1, r.score)),
        }
    }
    for g in &mut groups {
        g.2 /= g.1 as f64;
    }
    let micro = if n == 0 {
        0.0
    } else {
        records.iter().map(|r| r.score).sum::<f64>() / n as f64
    };
    let mut metrics = BTreeMap::new();
    let (metric, score) = match bench {
        Benchmark::Mmlu => {
            let macro_avg = if groups.is_empty() {
                0.0
            } else {
                groups.iter().map(|g| g.2).sum::<f64>() / groups.len() as f64
            };
            metrics.insert("acc (micro)".to_string(), micro);
            metrics.insert("acc (macro over subjects)".to_string(), macro_avg);
            ("acc (micro)".to_string(), micro)
        }
        Benchmark::Gsm8k => {
            metrics.insert("exact match".to_string(), micro);
            ("exact match".to_string(), micro)
        }
        Benchmark::HumanEval => {
            for k in humaneval::ks(samples) {
                let v = if n == 0 {
                    0.0
                } else {
                    records
                        .iter()
                        .map(|r| humaneval::pass_at_k(r.samples.max(1), r.passed, k))
                        .sum::<f64>()
                        / n as f64
                };
                metrics.insert(format!("pass@{k}"), v);
            }
            (
                "pass@1".to_string(),
                metrics.get("pass@1").copied().unwrap_or(0.0),
            )
        }
    };
    if bench != Benchmark::Mmlu {
        groups.clear();
    }
    Report {
        benchmark: bench,
        model: model.to_string(),
        shots,
        metric,
        score,
        items: n,
        groups,
        metrics,
        published: published(model, bench),
        notes,
    }
}
