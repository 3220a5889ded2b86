//! The vector width the float kernels use.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    Avx2,
    Avx512,
    /// AArch64's Advanced SIMD (4 f32 lanes).
    Neon,
}

/// The vector width the float kernels use, from the active [`crate::tier`] (all AVX-512 tiers
/// and AMX use the 512-bit code; `DEEPSEEK_ISA` caps it).
pub fn isa() -> Isa {
    use crate::tier::{self, Tier};
    match tier::active() {
        Tier::Scalar => Isa::Scalar,
        Tier::Avx2 => Isa::Avx2,
        Tier::Avx512 | Tier::Avx512Vnni | Tier::Avx512Bf16 | Tier::Amx => Isa::Avx512,
        Tier::Neon | Tier::NeonDot => Isa::Neon,
    }
}
