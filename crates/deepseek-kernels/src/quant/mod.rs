//! llama.cpp's (GGML) quantized block formats: their byte layouts, dequantization, quantization,
//! and the dot product of a quantized weight row with an 8-bit quantized activation.
//!
//! Activations are quantized per 32 values (an f32 scale, the int8 values and their sum), for
//! every weight format: a K-quant super-block of 256 is eight such activation blocks. That is at
//! least as precise as llama.cpp's Q8_0/Q8_K activations, and lets one integer dot product of 32
//! (or 16) int8 pairs serve every format: each weight block is unpacked to int8 on the stack, and
//! its scale (and min) applied once per block.

pub mod activations;
pub mod dequant;
pub mod dot;
pub mod format;
pub(crate) mod iq;
pub(crate) mod iq1_quantize;
pub mod iq4_quantize;
pub mod iq_quantize;
mod iq_tables;
pub(crate) mod isa;
mod k_search;
mod lattice;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
pub mod quantize;
pub(crate) mod unpack;
pub(crate) mod unpacked;
pub mod weighted;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_iq;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_iq_vbmi;

#[cfg(test)]
pub(crate) mod tests;

pub use activations::*;
pub use dequant::*;
pub use dot::*;
pub use format::*;
pub(crate) use isa::*;
pub use quantize::*;
pub(crate) use unpack::*;
pub(crate) use unpacked::*;
pub use weighted::quantize_row_weighted;
