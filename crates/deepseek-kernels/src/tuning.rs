//! The kernels' tuning knobs in one place: thresholds measured on the machines this engine
//! has run on (the reasons stay beside the code that uses each), every one overridable by a
//! `DEEPSEEK_*` environment variable for measuring, read once, and listed by `info` and
//! `bench` ([`Tuning::overrides`]). The instruction-set cap (`DEEPSEEK_ISA`, `DEEPSEEK_AMX`)
//! belongs to [`crate::tier`].

use std::sync::OnceLock;

/// One knob: its variable, its default and the value in force.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Knob {
    pub var: &'static str,
    pub default: u64,
    pub value: u64,
}

impl Knob {
    fn read(var: &'static str, default: u64, env: &dyn Fn(&str) -> Option<String>) -> Knob {
        let value = env(var)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default);
        Knob {
            var,
            default,
            value,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// Fewest tokens for which a bf16 matmul uses AMX rather than the FMA tiles.
    pub amx_min_tokens: Knob,
    /// Fewest tokens for which repacked quantized weights use AMX rather than VNNI kernels.
    pub amx_grouped_min_tokens: Knob,
    /// Fewest tokens for which decode-only layouts go through the dequantizing f32 GEMM, for
    /// every such layout (0, the default: each layout's own threshold in `matrix.rs`).
    pub decode_layout_gemm_min_tokens: Knob,
    /// Fewest tokens worth packing AVX2 integer panels for.
    pub qgemm_min_tokens: Knob,
    /// Fewest tokens worth unpacking AVX-512 VNNI panels for.
    pub qgemm_vnni_min_tokens: Knob,
    /// Microseconds an idle worker polls before it parks.
    pub spin_us: Knob,
    /// `DEEPSEEK_BF16_ACTIVATIONS=1` (as `--bf16-activations`).
    pub bf16_activations: Knob,
    /// `DEEPSEEK_EXACT_ACTIVATIONS=1`: f32 activations for quantized weights.
    pub exact_activations: Knob,
}

impl Tuning {
    /// The knobs as `env` sets them (defaults where unset or not a number).
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Tuning {
        Tuning {
            amx_min_tokens: Knob::read("DEEPSEEK_AMX_MIN_TOKENS", 8, env),
            amx_grouped_min_tokens: Knob::read("DEEPSEEK_AMX_GROUPED_MIN_TOKENS", 16, env),
            decode_layout_gemm_min_tokens: Knob::read(
                "DEEPSEEK_DECODE_LAYOUT_GEMM_MIN_TOKENS",
                0,
                env,
            ),
            qgemm_min_tokens: Knob::read("DEEPSEEK_QGEMM_MIN_TOKENS", 16, env),
            qgemm_vnni_min_tokens: Knob::read("DEEPSEEK_QGEMM_VNNI_MIN_TOKENS", 8, env),
            spin_us: Knob::read("DEEPSEEK_SPIN_US", 2000, env),
            bf16_activations: Knob::read("DEEPSEEK_BF16_ACTIVATIONS", 0, env),
            exact_activations: Knob::read("DEEPSEEK_EXACT_ACTIVATIONS", 0, env),
        }
    }

    pub fn knobs(&self) -> [&Knob; 8] {
        [
            &self.amx_min_tokens,
            &self.amx_grouped_min_tokens,
            &self.decode_layout_gemm_min_tokens,
            &self.qgemm_min_tokens,
            &self.qgemm_vnni_min_tokens,
            &self.spin_us,
            &self.bf16_activations,
            &self.exact_activations,
        ]
    }

    /// `VAR=value` for each knob set away from its default.
    pub fn overrides(&self) -> Vec<String> {
        self.knobs()
            .iter()
            .filter(|k| k.value != k.default)
            .map(|k| format!("{}={}", k.var, k.value))
            .collect()
    }
}

/// The process's knobs, read from the environment at first use.
pub fn get() -> &'static Tuning {
    static TUNING: OnceLock<Tuning> = OnceLock::new();
    TUNING.get_or_init(|| Tuning::from_env(&|k| std::env::var(k).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_read_their_variables_and_list_only_overrides() {
        let t = Tuning::from_env(&|k| match k {
            "DEEPSEEK_QGEMM_MIN_TOKENS" => Some("32".into()),
            "DEEPSEEK_SPIN_US" => Some("not a number".into()),
            "DEEPSEEK_BF16_ACTIVATIONS" => Some("1".into()),
            _ => None,
        });
        assert_eq!(t.qgemm_min_tokens.value, 32);
        assert_eq!(t.spin_us.value, 2000);
        assert_eq!(
            t.overrides(),
            [
                "DEEPSEEK_QGEMM_MIN_TOKENS=32",
                "DEEPSEEK_BF16_ACTIVATIONS=1"
            ]
        );
        assert!(Tuning::from_env(&|_| None).overrides().is_empty());
    }
}
