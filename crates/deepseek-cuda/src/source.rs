//! The kernels' CUDA C source and its compilation by NVRTC: one program, compiled for the GPU
//! in hand when it opens (no build-time CUDA toolkit needed, and the code is the GPU's own).

use cudarc::nvrtc::{self, CompileOptions, Ptx};

use crate::error::CudaError;

/// The kernel files, in the order they are concatenated after `common.cuh`.
pub const FILES: [(&str, &str); 7] = [
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("elementwise.cu", include_str!("../kernels/elementwise.cu")),
    ("rope.cu", include_str!("../kernels/rope.cu")),
    ("router.cu", include_str!("../kernels/router.cu")),
    ("moe.cu", include_str!("../kernels/moe.cu")),
    ("attention.cu", include_str!("../kernels/attention.cu")),
    ("sample.cu", include_str!("../kernels/sample.cu")),
];

/// Every kernel (`__global__` function) of [`FILES`], which [`crate::gpu::Gpu`] loads.
pub const KERNELS: [&str; 16] = [
    "rms_norm_f32",
    "add_f32",
    "silu_mul_f32",
    "embed_rows_f32",
    "embed_rows_bf16",
    "f32_to_bf16_rows",
    "copy_rows_f32",
    "rope_f32",
    "route_topk",
    "moe_gemv_bf16",
    "moe_gemv_f32",
    "moe_combine_f32",
    "argmax_rows",
    "cache_append_rows",
    "attention_partial",
    "attention_combine",
];

/// The whole program: the files, each introduced by a `#line` so compiler messages name it.
pub fn program() -> String {
    let mut s = String::new();
    for (name, text) in FILES {
        s.push_str(&format!("#line 1 \"{name}\"\n{text}\n"));
    }
    s
}

/// Is NVRTC loadable here (the CUDA toolkit, or the `nvidia-cuda-nvrtc` wheel on the library
/// path)? The compile check runs only where it is.
pub fn nvrtc_available() -> bool {
    // SAFETY: only looks the library up.
    unsafe { nvrtc::sys::is_culib_present() }
}

/// Compiles [`program`] to PTX for `arch` (`sm_90` for Hopper). Errors carry NVRTC's log.
pub fn compile(arch: &str) -> Result<Ptx, CudaError> {
    if !nvrtc_available() {
        return Err(CudaError::NoLibrary {
            library: "libnvrtc.so.13",
            what: "NVRTC, which compiles the kernels",
            pip: "nvidia-cuda-nvrtc==13.0.*",
        });
    }
    let opts = CompileOptions {
        options: vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".into(),
            "-default-device".into(),
            "--extra-device-vectorization".into(),
            "-lineinfo".into(),
        ],
        name: Some("deepseek_kernels.cu".into()),
        ..Default::default()
    };
    nvrtc::compile_ptx_with_opts(program(), opts).map_err(|e| match e {
        nvrtc::CompileError::CompileError { log, .. } => CudaError::Compile {
            arch: arch.into(),
            log: log.to_string_lossy().into_owned(),
        },
        other => CudaError::Compile {
            arch: arch.into(),
            log: format!("{other:?}"),
        },
    })
}
