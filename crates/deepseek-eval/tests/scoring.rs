//! The scoring logic, checked with a scripted stand-in model whose answers are known: all
//! right, all wrong, and each formatting case of the answers; plus resuming an interrupted run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use deepseek_eval::{
    gsm8k, humaneval, run, sandbox, Benchmark, ChoiceRequest, EvalError, EvalModel, GenRequest,
    Options, Partial,
};
use serde_json::json;

/// Answers by looking the question up: `choices` maps a context's last question to the index
/// to favour; `texts` maps a prompt suffix to the text to generate.
#[derive(Default)]
struct Scripted {
    choices: Vec<(String, usize)>,
    texts: Vec<(String, String)>,
    calls: usize,
    fail_after: Option<usize>,
}

impl EvalModel for Scripted {
    fn loglikelihoods(&mut self, reqs: &[ChoiceRequest]) -> Result<Vec<Vec<f64>>, EvalError> {
        self.calls += 1;
        if self.fail_after.is_some_and(|n| self.calls > n) {
            return Err(EvalError::Engine("interrupted".into()));
        }
        Ok(reqs
            .iter()
            .map(|r| {
                assert_eq!(r.continuations, [" A", " B", " C", " D"]);
                let last = r.context.rsplit("\n\n").next().unwrap();
                let pick = self
                    .choices
                    .iter()
                    .find(|(q, _)| last.starts_with(q.as_str()))
                    .map(|&(_, i)| i)
                    .unwrap_or_else(|| panic!("unscripted question: {last}"));
                (0..4)
                    .map(|i| if i == pick { -0.5 } else { -3.0 })
                    .collect()
            })
            .collect())
    }

    fn generate(&mut self, reqs: &[GenRequest]) -> Result<Vec<String>, EvalError> {
        self.calls += 1;
        Ok(reqs
            .iter()
            .map(|r| {
                self.texts
                    .iter()
                    .find(|(k, _)| r.prompt.ends_with(k.as_str()))
                    .map(|(_, t)| t.clone())
                    .unwrap_or_default()
            })
            .collect())
    }
}

/// A scratch folder under the system's temp dir, removed when the test ends.
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("deepseek-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

fn opts(dir: &Path) -> Options {
    Options {
        data_dir: dir.to_path_buf(),
        check_data: false,
        limit: None,
        shots: None,
        batch: 2,
        samples: 1,
        sandbox: sandbox::Limits::default(),
    }
}

fn mmlu_rows() -> Vec<serde_json::Value> {
    let mut rows = vec![];
    // Subject "alpha": 2 shots + 3 scored; subject "beta": 2 shots + 1 scored; a stray header.
    for (topic, n) in [("alpha", 5), ("beta", 3)] {
        for i in 0..n {
            let letter = ["A", "B", "C", "D"][i % 4];
            rows.push(
                json!({"question": format!("{topic} q{i}?"), "answer_a": "one", "answer_b": "two",
                "answer_c": "three", "answer_d": "four", "correct_answer": letter, "topic": topic}),
            );
        }
    }
    rows.insert(3, json!({"question": "question", "answer_a": "answer_a", "answer_b": "answer_b",
        "answer_c": "answer_c", "answer_d": "answer_d", "correct_answer": "answer", "topic": "alpha"}));
    rows
}

/// (question, index of the correct choice) for every MMLU row but the CSV header rows.
fn right_answers() -> Vec<(String, usize)> {
    mmlu_rows()
        .iter()
        .filter(|r| r["correct_answer"] != "answer")
        .map(|r| {
            let i = ["A", "B", "C", "D"]
                .iter()
                .position(|l| r["correct_answer"] == *l)
                .unwrap();
            (r["question"].as_str().unwrap().to_string(), i)
        })
        .collect()
}

fn write_jsonl(dir: &Path, name: &str, rows: &[serde_json::Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn mmlu_all_right_all_wrong_and_averages() {
    let dir = tmpdir("mmlu");
    write_jsonl(&dir, "mmlu.jsonl", &mmlu_rows());
    let right = right_answers();
    let mut o = opts(&dir);
    o.shots = Some(2);

    let mut m = Scripted {
        choices: right.clone(),
        ..Default::default()
    };
    let r = run(
        Benchmark::Mmlu,
        &mut m,
        "x",
        &o,
        &mut Partial::in_memory(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        r.items, 4,
        "2 shots per subject are not scored; the header row is dropped"
    );
    assert_eq!(r.score, 1.0);

    let wrong: Vec<(String, usize)> = right
        .iter()
        .map(|(q, i)| (q.clone(), (i + 1) % 4))
        .collect();
    let mut m = Scripted {
        choices: wrong,
        ..Default::default()
    };
    let r = run(
        Benchmark::Mmlu,
        &mut m,
        "x",
        &o,
        &mut Partial::in_memory(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.score, 0.0);

    // alpha: q2 right, q3 wrong, q4 right (2/3); beta: q2 wrong (0/1).
    let mut mixed = right.clone();
    for (q, i) in mixed.iter_mut() {
        if q == "alpha q3?" || q == "beta q2?" {
            *i = (*i + 1) % 4;
        }
    }
    let mut m = Scripted {
        choices: mixed,
        ..Default::default()
    };
    let r = run(
        Benchmark::Mmlu,
        &mut m,
        "x",
        &o,
        &mut Partial::in_memory(),
        &mut |_, _| {},
    )
    .unwrap();
    assert!((r.metrics["acc (micro)"] - 0.5).abs() < 1e-12);
    assert!((r.metrics["acc (macro over subjects)"] - (2.0 / 3.0 + 0.0) / 2.0).abs() < 1e-12);
    assert_eq!(
        r.groups,
        vec![("alpha".into(), 3, 2.0 / 3.0), ("beta".into(), 1, 0.0)]
    );
}

#[test]
fn mmlu_prompt_is_lm_evaluation_harness_format() {
    let rows: Vec<deepseek_eval::data::MmluRow> =
        serde_json::from_value(serde_json::Value::Array(mmlu_rows())).unwrap();
    let (rows, dropped) = deepseek_eval::mmlu::clean(rows);
    assert_eq!(dropped, 1);
    let items = deepseek_eval::mmlu::items(&rows, 1);
    assert_eq!(
        items[0].request.context,
        "The following are multiple choice questions (with answers) about alpha.\n\n\
         alpha q0?\nA. one\nB. two\nC. three\nD. four\nAnswer: A\n\n\
         alpha q1?\nA. one\nB. two\nC. three\nD. four\nAnswer:"
    );
    // --limit spreads over subjects first.
    let limited = deepseek_eval::mmlu::limited(items, Some(2));
    let subjects: Vec<&str> = limited.iter().map(|i| i.subject.as_str()).collect();
    assert_eq!(subjects, ["alpha", "beta"]);
}

#[test]
fn gsm8k_answer_formats() {
    for (out, gold, ok) in [
        (
            "16 - 3 - 4 = 9. 9 * 2 = 18. The answer is 18.",
            "#### 18",
            true,
        ),
        ("The answer is 1,234.", "#### 1234", true),
        ("So she pays $5. The answer is $5.", "#### 5", true),
        (
            "It costs 7.50 dollars. The answer is 7.50",
            "#### 7.5",
            true,
        ),
        (
            "The temperature drops to -3 degrees. The answer is -3.",
            "#### -3",
            true,
        ),
        ("First 3 + 4 = 7, then 7 * 2 = 14", "#### 14", true), // no "The answer is": last number
        ("The answer is 12. Then 5 more.", "#### 12", true),   // the stated answer wins
        ("The answer is 17.", "#### 18", false),
        ("I do not know.", "#### 3", false),
    ] {
        assert_eq!(gsm8k::is_correct(out, gold), ok, "{out:?} vs {gold:?}");
    }
    let p = gsm8k::prompt("How many?", 8);
    assert!(p.starts_with("Question: There are 15 trees"));
    assert!(p.ends_with("\n\nQuestion: How many?\nAnswer:"));
    assert_eq!(p.matches("The answer is").count(), 8);
}

#[test]
fn gsm8k_end_to_end_scripted() {
    let dir = tmpdir("gsm8k");
    write_jsonl(
        &dir,
        "gsm8k.jsonl",
        &[
            json!({"question": "What is 2+2?", "answer": "2+2=4\n#### 4"}),
            json!({"question": "What is 3*3?", "answer": "3*3=9\n#### 9"}),
            json!({"question": "What is 10-1?", "answer": "#### 9"}),
        ],
    );
    let mut m = Scripted {
        texts: vec![
            (
                "What is 2+2?\nAnswer:".into(),
                " 2 + 2 = 4. The answer is 4.".into(),
            ),
            ("What is 3*3?\nAnswer:".into(), " The answer is 6.".into()),
            ("What is 10-1?\nAnswer:".into(), " 10 - 1 = 9".into()),
        ],
        ..Default::default()
    };
    let r = run(
        Benchmark::Gsm8k,
        &mut m,
        "x",
        &opts(&dir),
        &mut Partial::in_memory(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.items, 3);
    assert!((r.score - 2.0 / 3.0).abs() < 1e-12);
}

#[test]
fn humaneval_runs_tests_in_the_sandbox_and_estimates_pass_at_k() {
    let dir = tmpdir("humaneval");
    let prompt = "def add(a, b):\n    \"\"\"Sum.\"\"\"\n";
    write_jsonl(
        &dir,
        "humaneval.jsonl",
        &[
            json!({"task_id": "T/0", "prompt": prompt, "entry_point": "add",
               "test": "def check(f):\n    assert f(2, 3) == 5\n", "canonical_solution": "    return a + b\n"}),
            json!({"task_id": "T/1", "prompt": "def neg(a):\n", "entry_point": "neg",
               "test": "def check(f):\n    assert f(2) == -2\n", "canonical_solution": "    return -a\n"}),
        ],
    );
    let mut m = Scripted {
        texts: vec![
            (prompt.into(), "    return a + b\n".into()),
            ("def neg(a):\n".into(), "    return a\n".into()),
        ],
        ..Default::default()
    };
    let r = run(
        Benchmark::HumanEval,
        &mut m,
        "x",
        &opts(&dir),
        &mut Partial::in_memory(),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(r.items, 2);
    assert_eq!(r.score, 0.5);
    assert_eq!(r.metrics.keys().collect::<Vec<_>>(), ["pass@1"]);

    // The unbiased estimator: n = 10, c = 3.
    assert!((humaneval::pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
    let exact = 1.0 - (7.0 * 6.0 * 5.0 * 4.0 * 3.0) / (10.0 * 9.0 * 8.0 * 7.0 * 6.0);
    assert!((humaneval::pass_at_k(10, 3, 5) - exact).abs() < 1e-12);
    assert_eq!(humaneval::pass_at_k(10, 0, 5), 0.0);
    assert_eq!(humaneval::pass_at_k(10, 6, 5), 1.0);
    assert_eq!(humaneval::ks(20), vec![1, 10]);
}

#[test]
fn an_interrupted_run_resumes_where_it_stopped() {
    let dir = tmpdir("resume");
    write_jsonl(&dir, "mmlu.jsonl", &mmlu_rows());
    let right = right_answers();
    let mut o = opts(&dir);
    o.shots = Some(2);
    o.batch = 1;
    let partial_path = dir.join("out.partial.jsonl");
    let header = json!({"run": 1});
    // Fails on its third batch: two items are saved.
    let mut m = Scripted {
        choices: right.clone(),
        fail_after: Some(2),
        ..Default::default()
    };
    let mut p = Partial::open(&partial_path, &header).unwrap();
    assert!(run(Benchmark::Mmlu, &mut m, "x", &o, &mut p, &mut |_, _| {}).is_err());
    drop(p);
    let mut p = Partial::open(&partial_path, &header).unwrap();
    assert_eq!(p.resumed(), 2);
    let mut m = Scripted {
        choices: right,
        ..Default::default()
    };
    let r = run(Benchmark::Mmlu, &mut m, "x", &o, &mut p, &mut |_, _| {}).unwrap();
    assert_eq!(m.calls, 2, "only the two unscored items are asked again");
    assert_eq!((r.items, r.score), (4, 1.0));
    // A different run refuses the file.
    assert!(Partial::open(&partial_path, &json!({"run": 2})).is_err());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for l in std::fs::read_to_string(&partial_path)
        .unwrap()
        .lines()
        .skip(1)
    {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        *counts
            .entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert!(
        counts.values().all(|&c| c == 1),
        "an item was scored twice: {counts:?}"
    );
}
