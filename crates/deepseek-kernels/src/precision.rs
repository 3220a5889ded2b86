//! How activations meet the weights: the one run-time choice that changes the kernels' results,
//! passed with every matmul instead of kept in process state.

use crate::tier::{self, Tier};

/// The activation precision of a matmul. The default is this engine's reference behaviour:
/// f32 activations for f32/bf16/f16 weights, 8-bit activations (a scale per 32 values) for
/// quantized ones, as llama.cpp rounds them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Precision {
    /// bf16 weights meet activations rounded to bf16, as llama.cpp and PyTorch's bf16 inference
    /// do, where that makes prefill faster: on AVX512-BF16 CPUs without AMX the panels then run
    /// 8 or more tokens at ~2× the f32 tiles' rate (`--bf16-activations`,
    /// `DEEPSEEK_BF16_ACTIVATIONS=1`). Off by default: the results then differ from the f32
    /// reference by the rounding (2⁻⁹ relative per activation), enough to change the bundled
    /// model's greedy continuations.
    pub bf16_activations: bool,
    /// Quantized weights meet f32 activations (each row dequantized, then an f32 dot) instead
    /// of 8-bit ones: several times slower, and free of the activations' rounding. For accuracy
    /// checks (`DEEPSEEK_EXACT_ACTIVATIONS=1`).
    pub exact_activations: bool,
}

impl Precision {
    /// The precision `DEEPSEEK_BF16_ACTIVATIONS` and `DEEPSEEK_EXACT_ACTIVATIONS` ask for.
    pub fn from_tuning(t: &crate::tuning::Tuning) -> Precision {
        Precision {
            bf16_activations: t.bf16_activations.value == 1,
            exact_activations: t.exact_activations.value == 1,
        }
    }

    /// Whether bf16 weights meet activations rounded to bf16 on this CPU: asked for, AVX512-BF16
    /// without AMX (which keeps f32 precision on its own tiles), exact activations not asked
    /// for. Then at every token count (the panels from 8 tokens, the f32 tiles on the rounded
    /// values below), so that a sequence's results do not depend on how many tokens share its
    /// step.
    pub fn rounds_bf16(self) -> bool {
        self.bf16_activations
            && !self.exact_activations
            && tier::at_least(Tier::Avx512Bf16)
            && !tier::at_least(Tier::Amx)
    }
}
