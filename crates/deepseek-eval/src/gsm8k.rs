//! GSM8K with 8-shot chain-of-thought prompts: the eight worked examples of Wei et al. (2022),
//! "Chain-of-Thought Prompting Elicits Reasoning in Large Language Models" (the standard few-shot
//! set, also lm-evaluation-harness's `gsm8k_cot`), written as "Question: …\nAnswer: … The answer
//! is N.". Greedy generation until the next "Question:"; the answer is the number after "The
//! answer is", else the last number in the text, compared with the number after `####`.

use crate::data::Gsm8kRow;
use crate::model::GenRequest;

pub const EXAMPLES: [(&str, &str); 8] = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been 21 - 15 = 6. The answer is 6."),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5."),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, they had 74 - 35 = 39. The answer is 39."),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. The answer is 8."),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. The answer is 9."),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29."),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33."),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
];

pub const STOP: [&str; 3] = ["Question:", "</s>", "<|im_end|>"];
pub const MAX_TOKENS: usize = 256;

pub fn prompt(question: &str, shots: usize) -> String {
    let mut p = String::new();
    for (q, a) in EXAMPLES.iter().take(shots) {
        p.push_str(&format!("Question: {q}\nAnswer: {a}\n\n"));
    }
    p.push_str(&format!("Question: {}\nAnswer:", question.trim()));
    p
}

pub fn request(row: &Gsm8kRow, shots: usize) -> GenRequest {
    GenRequest {
        prompt: prompt(&row.question, shots),
        stop: STOP.iter().map(|s| s.to_string()).collect(),
        max_tokens: MAX_TOKENS,
        temperature: 0.0,
        seed: 0,
    }
}

/// The reference answer: the number after `####`.
pub fn gold(answer: &str) -> Option<f64> {
    answer.rsplit("####").next().and_then(parse_number)
}

/// A number as written ("1,234", "$5", "7.50", "-3."), or None.
fn parse_number(s: &str) -> Option<f64> {
    let t: String = s
        .trim()
        .trim_start_matches('$')
        .trim_end_matches('.')
        .chars()
        .filter(|&c| c != ',' && c != '$')
        .collect();
    t.trim().parse().ok()
}

/// Numbers in order of appearance (with thousands separators and decimals).
fn numbers(text: &str) -> Vec<f64> {
    let b = text.as_bytes();
    let mut out = vec![];
    let mut i = 0;
    while i < b.len() {
        let neg = b[i] == b'-' && i + 1 < b.len() && b[i + 1].is_ascii_digit();
        if b[i].is_ascii_digit() || neg {
            let start = i;
            i += 1;
            while i < b.len()
                && (b[i].is_ascii_digit()
                    || ((b[i] == b',' || b[i] == b'.')
                        && i + 1 < b.len()
                        && b[i + 1].is_ascii_digit()))
            {
                i += 1;
            }
            if let Some(v) = parse_number(&text[start..i]) {
                out.push(v);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The model's answer: after the last "The answer is", else the last number.
pub fn extract(generated: &str) -> Option<f64> {
    if let Some(pos) = generated.rfind("The answer is") {
        if let Some(&v) = numbers(&generated[pos..]).first() {
            return Some(v);
        }
    }
    numbers(generated).last().copied()
}

pub fn is_correct(generated: &str, answer: &str) -> bool {
    match (extract(generated), gold(answer)) {
        (Some(a), Some(b)) => (a - b).abs() < 1e-6,
        _ => false,
    }
}
