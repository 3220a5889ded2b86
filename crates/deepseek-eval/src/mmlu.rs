//! MMLU, as lm-evaluation-harness scores it: K-shot prompts ("The following are multiple choice
//! questions (with answers) about {subject}.", each question with "A. …" to "D. …" and
//! "Answer:"), the answer chosen by the highest log-likelihood of " A", " B", " C", " D";
//! accuracy per subject, micro (over questions) and macro (over subjects) averages.
//!
//! The packaged test set has no dev split, so the K shots of a subject are its first K questions
//! in file order, and they are kept out of the scored set (so K shots score 14,042 − 57·K
//! questions).

use crate::data::MmluRow;
use crate::model::ChoiceRequest;

pub const LETTERS: [&str; 4] = ["A", "B", "C", "D"];

/// Test rows, without the stray CSV header rows (any row whose answer is not A–D).
pub fn clean(rows: Vec<MmluRow>) -> (Vec<MmluRow>, usize) {
    let before = rows.len();
    let rows: Vec<MmluRow> = rows
        .into_iter()
        .filter(|r| LETTERS.contains(&r.correct_answer.as_str()))
        .collect();
    let dropped = before - rows.len();
    (rows, dropped)
}

fn format_question(r: &MmluRow) -> String {
    format!(
        "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:",
        r.question.trim(),
        r.answer_a,
        r.answer_b,
        r.answer_c,
        r.answer_d
    )
}

/// One scored question: its subject, its prompt, and the index of the right letter.
pub struct Item {
    pub id: String,
    pub subject: String,
    pub request: ChoiceRequest,
    pub answer: usize,
}

/// Builds the scored items: per subject, the first `shots` rows become the examples.
pub fn items(rows: &[MmluRow], shots: usize) -> Vec<Item> {
    let mut subjects: Vec<&str> = vec![];
    for r in rows {
        if !subjects.contains(&r.topic.as_str()) {
            subjects.push(&r.topic);
        }
    }
    let mut out = vec![];
    for subject in subjects {
        let of: Vec<(usize, &MmluRow)> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.topic == subject)
            .collect();
        let mut prefix = format!(
            "The following are multiple choice questions (with answers) about {subject}.\n\n"
        );
        for (_, r) in of.iter().take(shots) {
            prefix.push_str(&format!("{} {}\n\n", format_question(r), r.correct_answer));
        }
        for (i, r) in of.iter().skip(shots) {
            out.push(Item {
                id: format!("{subject}/{i}"),
                subject: subject.to_string(),
                request: ChoiceRequest {
                    context: format!("{prefix}{}", format_question(r)),
                    continuations: LETTERS.iter().map(|l| format!(" {l}")).collect(),
                },
                answer: LETTERS
                    .iter()
                    .position(|l| *l == r.correct_answer)
                    .unwrap_or(0),
            });
        }
    }
    out
}

/// The chosen letter: the highest log-likelihood (the first on ties, as argmax does).
pub fn choose(loglikelihoods: &[f64]) -> usize {
    let mut best = 0;
    for (i, &l) in loglikelihoods.iter().enumerate() {
        if l > loglikelihoods[best] {
            best = i;
        }
    }
    best
}

/// Round-robin over subjects, so `--limit N` samples N subjects before a second question of
/// any; then grouped back by subject (shared prefixes stay together).
pub fn limited(items: Vec<Item>, limit: Option<usize>) -> Vec<Item> {
    let Some(limit) = limit else {
        return items;
    };
    let mut subjects: Vec<String> = vec![];
    for it in &items {
        if !subjects.contains(&it.subject) {
            subjects.push(it.subject.clone());
        }
    }
    let mut queues: Vec<std::collections::VecDeque<Item>> =
        subjects.iter().map(|_| Default::default()).collect();
    for it in items {
        let s = subjects.iter().position(|x| *x == it.subject).unwrap_or(0);
        queues[s].push_back(it);
    }
    let mut picked: Vec<Vec<Item>> = subjects.iter().map(|_| vec![]).collect();
    let mut n = 0;
    'outer: loop {
        let mut any = false;
        for (s, q) in queues.iter_mut().enumerate() {
            if n == limit {
                break 'outer;
            }
            if let Some(it) = q.pop_front() {
                picked[s].push(it);
                n += 1;
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    picked.into_iter().flatten().collect()
}
