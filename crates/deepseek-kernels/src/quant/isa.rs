//! Which integer dot-product code the quantized kernels run, from the active tier.

/// Which integer dot-product code runs, from the active [`crate::tier`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ByteDotIsa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Vnni,
    /// AArch64 with the `sdot` instruction (Armv8.2 dot product).
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

pub(crate) fn byte_dot_isa() -> ByteDotIsa {
    use crate::tier::{self, Tier};
    match tier::active() {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 | Tier::Avx512 => ByteDotIsa::Avx2,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512Vnni | Tier::Avx512Bf16 | Tier::Amx => ByteDotIsa::Vnni,
        #[cfg(target_arch = "aarch64")]
        Tier::NeonDot => ByteDotIsa::NeonDot,
        _ => ByteDotIsa::Scalar,
    }
}
