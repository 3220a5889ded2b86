//! Quantization weighted by an importance matrix (`quantize --imatrix`): each value's rounding
//! error counts in proportion to how large the inputs it multiplies are (the column's mean
//! square over a text), so the scales fit the columns that matter. Every type that takes the
//! weights uses llama.cpp's own search for them (byte-identical blocks): the K-quants in
//! [`super::k_search`], the lattice i-quants in [`super::iq_quantize`], IQ4_NL/IQ4_XS in
//! [`super::iq4_quantize`], Q4_0/Q4_1/Q5_0/Q5_1 in [`super::k_search`] too; Q8_0 ignores them,
//! as llama.cpp's does.

use super::format::{QuantType, QK_K};
use super::quantize::quantize_row;

/// [`quantize_row`] with per-column importances `imatrix` (`x.len()` of them; None: plain).
pub fn quantize_row_weighted(t: QuantType, x: &[f32], imatrix: Option<&[f32]>, out: &mut [u8]) {
    use QuantType::*;
    if super::iq_quantize::writes_lattice(t) {
        return super::iq_quantize::quantize_row_lattice(t, x, imatrix, out);
    }
    if matches!(t, IQ4NL | IQ4XS) {
        return super::iq4_quantize::quantize_row_iq4(t, x, imatrix, out);
    }
    let Some(im) =
        imatrix.filter(|_| matches!(t, Q2K | Q3K | Q4K | Q5K | Q6K | Q4_0 | Q4_1 | Q5_0 | Q5_1))
    else {
        return quantize_row(t, x, out);
    };
    assert_eq!(im.len(), x.len(), "one importance per column");
    if matches!(t, Q4_0 | Q4_1 | Q5_0 | Q5_1) {
        return super::k_search::quantize_row_32_weighted(t, x, im, out);
    }
    let bb = t.block_bytes();
    let blocks = x.chunks_exact(QK_K).zip(im.chunks_exact(QK_K));
    for ((xb, ib), ob) in blocks.zip(out.chunks_exact_mut(bb)) {
        match t {
            Q2K => super::k_search::quantize_q2k(xb, Some(ib), ob),
            Q3K => super::k_search::quantize_q3k(xb, Some(ib), ob),
            Q4K | Q5K => super::k_search::quantize_q4k_q5k(t == Q5K, xb, Some(ib), ob),
            Q6K => super::k_search::quantize_q6k(xb, Some(ib), ob),
            _ => unreachable!("filtered above"),
        }
    }
}
