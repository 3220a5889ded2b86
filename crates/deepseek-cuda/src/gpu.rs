//! One NVIDIA GPU: its context and stream (cudarc, driver loaded at run time), the kernels
//! compiled for it by NVRTC, and device memory. Opening it says in one line what is missing on a
//! machine without a driver, a GPU, NVRTC or cuBLAS.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, CudaContext, CudaFunction, CudaStream, DevicePtr};

use crate::error::CudaError;
use crate::launch::{Buffer, Dtype, Gemm, Launch, Owner};
use crate::source;

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: cudarc::cublas::CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    /// What the driver calls it (`NVIDIA H200`).
    pub name: String,
    /// Compute capability (9, 0 for Hopper).
    pub capability: (i32, i32),
    pub memory_bytes: usize,
    multiprocessors: usize,
}

/// Which of the libraries the GPU needs are missing here, as the error opening would give, or
/// None when all load (a GPU may still be absent).
pub fn missing_library() -> Option<CudaError> {
    // SAFETY: each call only looks a library up by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some(CudaError::NoDriver {
            library: "libcuda.so.1",
        });
    }
    if !source::nvrtc_available() {
        return Some(CudaError::NoLibrary {
            library: "libnvrtc.so.13",
            what: "NVRTC, which compiles the kernels",
            pip: "nvidia-cuda-nvrtc==13.0.*",
        });
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Some(CudaError::NoLibrary {
            library: "libcublas.so.13",
            what: "cuBLAS, for the matrix products",
            pip: "nvidia-cublas==13.0.*",
        });
    }
    None
}

impl Gpu {
    /// Opens GPU `ordinal` and compiles the kernels for it.
    pub fn open(ordinal: usize) -> Result<Gpu, CudaError> {
        if let Some(e) = missing_library() {
            return Err(e);
        }
        let count = CudaContext::device_count()? as usize;
        if ordinal >= count {
            return Err(CudaError::NoSuchGpu { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal)?;
        let capability = ctx.compute_capability()?;
        let ptx = source::compile(&format!("sm_{}{}", capability.0, capability.1))?;
        let module = ctx.load_module(ptx)?;
        let mut functions = HashMap::new();
        for k in source::KERNELS {
            let f = module
                .load_function(k)
                .map_err(|_| CudaError::NoKernel(k.into()))?;
            functions.insert(k, f);
        }
        let stream = ctx.default_stream();
        let blas = cudarc::cublas::CudaBlas::new(stream.clone())
            .map_err(|e| CudaError::Blas(format!("{e:?}")))?;
        let multiprocessors = ctx.attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )? as usize;
        Ok(Gpu {
            multiprocessors,
            name: ctx.name()?,
            memory_bytes: ctx.total_mem()?,
            stream,
            blas,
            ctx,
            functions,
            capability,
        })
    }

    /// The stream every launch and copy goes on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

impl Launch for Gpu {
    /// cuBLAS, column-major: the row-major `C = A · B'` is `Cᵀ = B'ᵀ · Aᵀ`, so B goes first.
    fn gemm(&self, g: &Gemm, a: u64, b: u64, c: u64) -> Result<(), CudaError> {
        use cudarc::cublas::sys::{cublasComputeType_t, cublasOperation_t, cudaDataType};
        let ty = match g.dtype {
            Dtype::F32 => cudaDataType::CUDA_R_32F,
            Dtype::Bf16 => cudaDataType::CUDA_R_16BF,
        };
        let op_b = if g.b_transposed {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        };
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        self.ctx.bind_to_thread()?;
        // SAFETY: the buffers hold the matrices `g` describes; alpha/beta outlive the call.
        unsafe {
            cudarc::cublas::result::gemm_strided_batched_ex(
                *self.blas.handle(),
                op_b,
                cublasOperation_t::CUBLAS_OP_N,
                g.n as i32,
                g.m as i32,
                g.k as i32,
                (&alpha as *const f32).cast(),
                b as *const c_void,
                ty,
                g.ldb as i32,
                g.stride_b as i64,
                a as *const c_void,
                ty,
                g.lda as i32,
                g.stride_a as i64,
                (&beta as *const f32).cast(),
                c as *mut c_void,
                cudaDataType::CUDA_R_32F,
                g.ldc as i32,
                g.stride_c as i64,
                g.batch as i32,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cudarc::cublas::sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Blas(format!("{e:?} for {g:?}")))
    }

    fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        let f = self
            .functions
            .get(kernel)
            .ok_or_else(|| CudaError::NoKernel(kernel.into()))?;
        self.ctx.bind_to_thread()?;
        // SAFETY: `args` point at values of the kernel's parameter types, in order (the launch
        // code in ops.rs is written against the kernel's signature and tested in emulation).
        unsafe {
            result::launch_kernel(
                f.cu_function(),
                grid,
                block,
                0,
                self.stream.cu_stream(),
                args,
            )
        }?;
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer, CudaError> {
        let slice = self.stream.alloc_zeros::<u8>(bytes.max(1))?;
        let (ptr, _sync) = slice.device_ptr(&self.stream);
        drop(_sync);
        Ok(Buffer {
            ptr,
            bytes,
            _owner: Owner::Gpu(slice),
        })
    }

    fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the caller gives an address with room for `src`; synchronised before `src`
        // can go away.
        unsafe { result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(())
    }

    fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<(), CudaError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: the caller gives an address holding dst.len() bytes; synchronised before
        // returning.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }?;
        self.stream.synchronize()?;
        Ok(())
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize()?;
        Ok(())
    }

    fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    fn describe(&self) -> String {
        format!(
            "{}, sm_{}{}, {} SMs, {:.1} GiB",
            self.name,
            self.capability.0,
            self.capability.1,
            self.multiprocessors,
            self.memory_bytes as f64 / (1u64 << 30) as f64
        )
    }
}
