//! The online softmax's partial result over some rows (running max, sum of exponentials,
//! weighted values) and the merge of several of them: what lets attention split a long context
//! across threads, or hand a range of rows to another kernel (AMX).

use super::rows::BLOCK_ROWS;
use crate::simd;

/// Softmax state of a group of heads over part of the context: running maximum, normaliser and
/// unnormalised weighted sum of values (online softmax). `out` may hold rows past the last
/// group (the AMX kernel works on 16 heads at a time); they are ignored.
pub(crate) struct Partial {
    pub(crate) max: Vec<f32>,
    pub(crate) sum: Vec<f32>,
    pub(crate) out: Vec<f32>,
}

impl Partial {
    pub(crate) fn new(groups: usize, out_rows: usize, value_len: usize) -> Self {
        Partial {
            max: vec![f32::NEG_INFINITY; groups],
            sum: vec![0.0; groups],
            out: vec![0.0; out_rows * value_len],
        }
    }

    /// Folds a block's scores (`s[g * BLOCK_ROWS + i]`, `i < len`) into the running softmax:
    /// rescales the sums and outputs to the new maximum and turns the scores into weights.
    pub(crate) fn fold_block(&mut self, s: &mut [f32], len: usize, value_len: usize) {
        for g in 0..self.max.len() {
            let sg = &mut s[g * BLOCK_ROWS..g * BLOCK_ROWS + len];
            let bm = max_of(sg);
            let new_max = self.max[g].max(bm);
            let correction = (self.max[g] - new_max).exp();
            if correction != 1.0 {
                self.sum[g] *= correction;
                self.out[g * value_len..(g + 1) * value_len]
                    .iter_mut()
                    .for_each(|v| *v *= correction);
            }
            self.sum[g] += simd::exp_shifted_sum(sg, new_max);
            self.max[g] = new_max;
        }
    }
}

/// Combines partial softmax states over disjoint row ranges exactly.
pub(crate) fn merge(parts: &[Partial], vl: usize, out: &mut [f32]) {
    let groups = parts[0].max.len();
    for g in 0..groups {
        let m = parts
            .iter()
            .map(|p| p.max[g])
            .fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = parts.iter().map(|p| p.sum[g] * (p.max[g] - m).exp()).sum();
        let dst = &mut out[g * vl..(g + 1) * vl];
        dst.fill(0.0);
        for p in parts {
            simd::axpy((p.max[g] - m).exp() / z, &p.out[g * vl..(g + 1) * vl], dst);
        }
    }
}

/// The largest value (NaNs ignored, like `f32::max`), in 16 lanes the compiler vectorises.
pub(crate) fn max_of(v: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = v.chunks_exact(16);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l = if x > *l { x } else { *l };
        }
    }
    let rest = chunks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, f32::max)
}
