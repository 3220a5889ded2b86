//! What can go wrong on the GPU side, each said in one line a user can act on.

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("no NVIDIA driver here: {library} is not on the library path (install the NVIDIA driver, or run with --device cpu)")]
    NoDriver { library: &'static str },
    #[error("{library} ({what}) is not on the library path: install the CUDA 13 toolkit or `pip install {pip}` and add its lib folder to LD_LIBRARY_PATH")]
    NoLibrary {
        library: &'static str,
        what: &'static str,
        pip: &'static str,
    },
    #[error("no GPU {ordinal}: the driver sees {count} GPU(s)")]
    NoSuchGpu { ordinal: usize, count: usize },
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("cuBLAS: {0}")]
    Blas(String),
    #[error("compiling the kernels (NVRTC, {arch}) failed:\n{log}")]
    Compile { arch: String, log: String },
    #[error("kernel `{0}` is not in the compiled module")]
    NoKernel(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("CPU emulation of the kernels: {0}")]
    Emulation(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver(e.to_string())
    }
}
