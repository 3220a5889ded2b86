//! The CPU compute layer of deepseek-rs.
//!
//! Everything here works on plain slices of `f32` activations and on [`Matrix`] weights, whatever
//! their storage format. The model code never sees SIMD: it calls [`matmul`], [`ops`] and
//! [`attention`], so a different backend can replace this crate without touching the model.
//!
//! Each hot kernel has a plain scalar reference beside it (`*_reference`) and a test against it.

pub mod amx;
pub mod attention;
pub mod gemm;
pub mod gemm_avx512;
pub mod matmul;
pub mod matrix;
pub mod ops;
pub mod precision;
pub mod probe;
pub mod qgemm;
pub mod qgemm_vnni;
pub mod quant;
pub mod repack;
pub mod simd;
pub mod threads;
pub mod tier;
pub mod tuning;

pub use matrix::{Buffer, DType, Matrix, MatrixData};
pub use precision::Precision;
pub use quant::QuantType;

/// `out[t][r] = Σ_k w[r][k] · x[t][k]` for `n` tokens: a PyTorch `Linear` without bias, with
/// activations at precision `p`.
pub fn matmul(w: &Matrix, x: &[f32], n: usize, out: &mut [f32], p: Precision) {
    matmul::matmul(w, x, n, out, p)
}
