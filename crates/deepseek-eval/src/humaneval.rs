//! HumanEval: complete each prompt (greedy for one sample; temperature 0.8 when sampling
//! several), stop at the original harness's stop sequences, run the problem's tests on
//! prompt + completion in the sandbox, and report pass@k with the unbiased estimator of Chen et
//! al. (2021) for every k in {1, 10, 100} not above the number of samples.

use crate::data::HumanEvalRow;
use crate::model::GenRequest;

pub const STOP: [&str; 5] = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"];
pub const MAX_TOKENS: usize = 512;

pub fn request(row: &HumanEvalRow, sample: usize, samples: usize) -> GenRequest {
    GenRequest {
        prompt: row.prompt.clone(),
        stop: STOP.iter().map(|s| s.to_string()).collect(),
        max_tokens: MAX_TOKENS,
        temperature: if samples > 1 { 0.8 } else { 0.0 },
        seed: sample as u64,
    }
}

/// The program the sandbox runs: the completed function, the tests, the check call.
pub fn program(row: &HumanEvalRow, completion: &str) -> String {
    format!(
        "{}{}\n\n{}\n\ncheck({})\n",
        row.prompt, completion, row.test, row.entry_point
    )
}

/// pass@k = 1 − C(n−c, k) / C(n, k) for n samples of which c passed.
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    if n - c < k {
        return 1.0;
    }
    let mut prod = 1.0;
    for i in (n - c + 1)..=n {
        prod *= 1.0 - k as f64 / i as f64;
    }
    1.0 - prod
}

/// The k values reported for `samples` samples per problem.
pub fn ks(samples: usize) -> Vec<usize> {
    [1, 10, 100].into_iter().filter(|&k| k <= samples).collect()
}
