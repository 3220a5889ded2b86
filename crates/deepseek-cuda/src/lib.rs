//! The GPU side of the kernels layer: CUDA C kernels (`kernels/*.cu`, compiled by NVRTC when a
//! device opens), the Rust code that launches them ([`ops`]), the device ([`gpu::Gpu`], through
//! cudarc with the driver, NVRTC and cuBLAS loaded at run time), and an emulation that runs the
//! same kernels on the CPU ([`emulate::Emulator`]) so their logic is tested on machines without a
//! GPU.
//!
//! Where things are: `kernels/attention.cu` (absorbed MLA decode, and Llama attention, on the
//! paged cache), `kernels/router.cu` (scores, group-limited top-k, V3's bias), `kernels/moe.cu` (expert GEMVs
//! by routed id), `kernels/elementwise.cu` (RMSNorm, SwiGLU, embeddings, bf16 casts),
//! `kernels/rope.cu`, `kernels/sample.cu` (argmax).

pub mod device;
pub mod emulate;
pub mod error;
pub mod gpu;
pub mod launch;
pub mod ops;
pub mod source;

pub use device::Device;
pub use error::CudaError;
pub use launch::{Buffer, Launch};
