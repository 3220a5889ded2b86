//! Where kernels run: the GPU through the driver ([`crate::gpu::Gpu`]) or the CPU emulation
//! ([`crate::emulate::Emulator`]). Both take launches shaped like `cuLaunchKernel` (a kernel name,
//! grid and block sizes, pointers to the argument values), so the launch code in
//! [`crate::ops`] is one code for both, and what the emulation tests is what the GPU runs.

use std::ffi::c_void;

use crate::error::CudaError;

/// A device allocation: its address (a device pointer on the GPU, a host pointer in the
/// emulation) and the memory behind it.
pub struct Buffer {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
    pub(crate) _owner: Owner,
}

pub(crate) enum Owner {
    Gpu(#[allow(dead_code)] cudarc::driver::CudaSlice<u8>),
    /// u64 words: 8-byte aligned, enough for every element type the kernels read.
    Host(#[allow(dead_code)] Vec<u64>),
}

impl Buffer {
    /// The address, as kernels take it.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The address `offset` elements of `T` in.
    pub fn at<T>(&self, offset: usize) -> u64 {
        debug_assert!(offset * std::mem::size_of::<T>() <= self.bytes);
        self.ptr + (offset * std::mem::size_of::<T>()) as u64
    }
}

/// Plain values kernels take and device memory holds.
pub trait Pod: Copy + Default + 'static {}
impl Pod for f32 {}
impl Pod for i32 {}
impl Pod for u16 {}
impl Pod for u8 {}

pub fn as_bytes<T: Pod>(v: &[T]) -> &[u8] {
    // SAFETY: Pod types are plain values without padding.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// Element type of matrices and tables on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 => 2,
        }
    }
}

/// A (batched) product of row-major matrices: for each of `batch` problems,
/// `C[m×n] (+)= A[m×k] · B'` with `B' = Bᵀ` when `b_transposed` (B stored `[n][k]`, as weights are
/// stored `[out][in]`), else `B' = B` (stored `[k][n]`). A and B are `dtype`, C is f32, sums in
/// f32 (no TF32). Leading dimensions and per-problem strides are in elements.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub dtype: Dtype,
    pub b_transposed: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub accumulate: bool,
}

impl Gemm {
    /// `C[m×n] = A[m×k] · Wᵀ` for a weight `W[n][k]`, all contiguous: the linear layer.
    pub fn linear(m: usize, n: usize, k: usize, dtype: Dtype) -> Gemm {
        Gemm {
            m,
            n,
            k,
            dtype,
            b_transposed: true,
            lda: k,
            ldb: k,
            ldc: n,
            batch: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
            accumulate: false,
        }
    }
}

/// A place kernels run, and the memory they run on.
pub trait Launch {
    /// Runs the matrix product `g` on `a`, `b`, `c` (cuBLAS on the GPU).
    fn gemm(&self, g: &Gemm, a: u64, b: u64, c: u64) -> Result<(), CudaError>;

    /// Runs `kernel` on a `grid` of `block`-thread blocks; `args` points at each argument's value,
    /// in the kernel's parameter order and types (a device pointer is a `u64`).
    fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError>;

    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> Result<Buffer, CudaError>;

    /// Copies `src` to device address `dst`, which must have room for it (see [`upload`] for
    /// the checked form); returns once the copy is done.
    fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<(), CudaError>;

    /// Copies `dst.len()` bytes from device address `src`; returns once they are here.
    fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<(), CudaError>;

    /// Waits for every launch so far.
    fn synchronize(&self) -> Result<(), CudaError>;

    /// Streaming multiprocessors: how many blocks run at once, for choosing how finely to split
    /// work (the emulation is one).
    fn multiprocessors(&self) -> usize;

    /// What it is, for reports (`NVIDIA H200, sm_90, 132 SMs, 139.8 GiB`).
    fn describe(&self) -> String;
}

/// `v` in a new device buffer.
pub fn upload<T: Pod>(l: &dyn Launch, v: &[T]) -> Result<Buffer, CudaError> {
    let b = l.alloc(std::mem::size_of_val(v).max(1))?;
    l.upload_bytes(b.ptr, as_bytes(v))?;
    Ok(b)
}

/// The first `n` values of `b`.
pub fn download<T: Pod>(l: &dyn Launch, b: &Buffer, n: usize) -> Result<Vec<T>, CudaError> {
    if n * std::mem::size_of::<T>() > b.bytes {
        return Err(CudaError::Unsupported(format!(
            "download of {n} values from a buffer of {} bytes",
            b.bytes
        )));
    }
    download_at(l, b.ptr, n)
}

/// `n` values from device address `p`.
pub fn download_at<T: Pod>(l: &dyn Launch, p: u64, n: usize) -> Result<Vec<T>, CudaError> {
    let mut v = vec![T::default(); n];
    // SAFETY: Pod values; the byte view covers exactly `v`.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(v.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(&v[..]))
    };
    l.download_bytes(p, bytes)?;
    Ok(v)
}

/// A kernel's arguments, in parameter order: `Args::new().ptr(x.ptr()).arg(n).arg(eps)`. Each
/// value is boxed, so the pointers [`Args::pointers`] gives stay valid while `Args` lives.
#[derive(Default)]
pub struct Args {
    values: Vec<Box<dyn std::any::Any>>,
}

impl Args {
    pub fn new() -> Self {
        Self::default()
    }

    /// A plain value (`int` is `i32`, `long` is `i64`, `float` is `f32`).
    pub fn arg<T: Copy + 'static>(mut self, v: T) -> Self {
        self.values.push(Box::new(v));
        self
    }

    /// A device address (0 for a null pointer).
    pub fn ptr(self, p: u64) -> Self {
        self.arg(p)
    }

    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.values
            .iter_mut()
            .map(|b| (&mut **b as *mut dyn std::any::Any).cast::<c_void>())
            .collect()
    }
}
