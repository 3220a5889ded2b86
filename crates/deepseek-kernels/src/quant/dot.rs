//! The quantized dot products, dispatched to the best code the active tier has.

use super::activations::QuantizedActivations;
use super::dequant::dequantize_row;
use super::format::QuantType;
use super::isa::{byte_dot_isa, ByteDotIsa};
use super::unpacked::{dot_rows_unpacked, ScalarDot};

/// `Σ w·x` of one quantized weight row (`row_bytes(cols)` bytes) with `T` activation rows of
/// `a` starting at `row0`: the weight blocks are unpacked once for all `T`.
pub fn dot_rows<const T: usize>(
    t: QuantType,
    w: &[u8],
    a: &QuantizedActivations,
    row0: usize,
) -> [f32; T] {
    assert!(w.len() >= t.row_bytes(a.cols));
    let acts: [(&[f32], &[i32], &[i8]); T] = std::array::from_fn(|k| a.row(row0 + k));
    match byte_dot_isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were detected at run time; row lengths checked above.
        ByteDotIsa::Vnni
            if a.scale_block == super::format::QK_K
                && super::x86_iq_vbmi::handles(t)
                && super::x86_iq_vbmi::available() =>
        unsafe { super::x86_iq_vbmi::dot_rows::<T>(t, w, &acts) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        ByteDotIsa::Vnni if t.is_lattice() => unsafe {
            super::x86_iq::dot_rows_vnni::<T>(t, w, &acts, a.scale_block == super::format::QK_K)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        ByteDotIsa::Avx2 if t.is_lattice() => unsafe {
            super::x86_iq::dot_rows_avx2::<T>(t, w, &acts, a.scale_block == super::format::QK_K)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the features were detected at run time; row lengths checked above.
        ByteDotIsa::Vnni => unsafe { super::x86::dot_rows_vnni::<T>(t, w, &acts) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        ByteDotIsa::Avx2 => unsafe { super::x86::dot_rows_avx2::<T>(t, w, &acts) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: `dotprod` was detected at run time; row lengths checked above.
        ByteDotIsa::NeonDot => unsafe { super::neon::dot_rows::<T>(t, w, &acts) },
        ByteDotIsa::Scalar => dot_rows_unpacked::<ScalarDot, T>(t, w, &acts),
    }
}

/// `Σ w·x` for a quantized weight row and activation row `row` of `a`.
pub fn dot_row(t: QuantType, w: &[u8], a: &QuantizedActivations, row: usize) -> f32 {
    dot_rows::<1>(t, w, a, row)[0]
}

/// Plain reference for tests: dequantize the row and multiply in f64.
pub fn dot_row_reference(t: QuantType, w: &[u8], x: &[f32]) -> f32 {
    let mut deq = vec![0.0; x.len()];
    dequantize_row(t, w, &mut deq);
    deq.iter()
        .zip(x)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>() as f32
}
