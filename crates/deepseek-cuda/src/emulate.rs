//! The kernels run on the CPU: `emulate/emulate.cpp` includes every kernel file under
//! `emulate/cuda_emulation.h` (each GPU thread a CPU thread), is built by the host's g++ into a
//! shared library on first use, and is launched with the same arguments as the GPU. Tests use it
//! to check the kernels and their launch code where no GPU is; it says nothing about speed.

use std::ffi::{c_void, CString};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::Command;

use crate::error::CudaError;
use crate::launch::{Buffer, Dtype, Gemm, Launch, Owner};
use crate::source;

const HEADER: &str = include_str!("../emulate/cuda_emulation.h");
const DRIVER: &str = include_str!("../emulate/emulate.cpp");

type LaunchFn = unsafe extern "C" fn(
    *const std::ffi::c_char,
    u32,
    u32,
    u32,
    u32,
    u32,
    u32,
    *mut *mut c_void,
) -> i32;

pub struct Emulator {
    library: libloading::Library,
}

impl Emulator {
    /// Builds (once per source version, cached in the temp folder) and loads the emulation.
    /// Fails, saying why, where no C++20 g++ is.
    pub fn new() -> Result<Emulator, CudaError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (HEADER, DRIVER, source::FILES).hash(&mut h);
        let dir = std::env::temp_dir().join(format!("deepseek-cuda-emulation-{:016x}", h.finish()));
        let lib = dir.join("libemulated_kernels.so");
        if !lib.exists() {
            build(&dir, &lib)?;
        }
        // SAFETY: our own library, built from the sources above; it runs no code at load.
        let library = unsafe { libloading::Library::new(&lib) }
            .map_err(|e| CudaError::Emulation(format!("loading {}: {e}", lib.display())))?;
        Ok(Emulator { library })
    }
}

fn build(dir: &Path, lib: &Path) -> Result<(), CudaError> {
    let io = |e: std::io::Error| CudaError::Emulation(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(dir.join("emulate")).map_err(io)?;
    std::fs::create_dir_all(dir.join("kernels")).map_err(io)?;
    std::fs::write(dir.join("emulate/cuda_emulation.h"), HEADER).map_err(io)?;
    std::fs::write(dir.join("emulate/emulate.cpp"), DRIVER).map_err(io)?;
    for (name, text) in source::FILES {
        std::fs::write(dir.join("kernels").join(name), text).map_err(io)?;
    }
    // Built beside, then renamed: a concurrent test never loads a half-written library.
    let partial = dir.join(format!("partial-{}.so", std::process::id()));
    let out = Command::new("g++")
        .args(["-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-o"])
        .arg(&partial)
        .arg(dir.join("emulate/emulate.cpp"))
        .output()
        .map_err(|e| CudaError::Emulation(format!("running g++: {e}")))?;
    if !out.status.success() {
        return Err(CudaError::Emulation(format!(
            "g++ failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    std::fs::rename(&partial, lib).map_err(io)
}

/// Element `i` of a device array of `dtype` at `p` (a host address here), as f32.
///
/// # Safety
/// `p` must address at least `i + 1` elements of `dtype`.
unsafe fn load(p: u64, dtype: Dtype, i: usize) -> f32 {
    match dtype {
        Dtype::F32 => *(p as *const f32).add(i),
        Dtype::Bf16 => f32::from_bits((*(p as *const u16).add(i) as u32) << 16),
    }
}

impl Launch for Emulator {
    /// Plain loops, summing in f32 in k order.
    fn gemm(&self, g: &Gemm, a: u64, b: u64, c: u64) -> Result<(), CudaError> {
        for p in 0..g.batch {
            let (a, b) = (
                a + (p * g.stride_a * g.dtype.bytes()) as u64,
                b + (p * g.stride_b * g.dtype.bytes()) as u64,
            );
            let c = (c as *mut f32).wrapping_add(p * g.stride_c);
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut acc = 0.0f32;
                    for kk in 0..g.k {
                        let bi = if g.b_transposed {
                            j * g.ldb + kk
                        } else {
                            kk * g.ldb + j
                        };
                        // SAFETY: the caller's buffers hold the matrices `g` describes.
                        acc += unsafe { load(a, g.dtype, i * g.lda + kk) * load(b, g.dtype, bi) };
                    }
                    // SAFETY: as above, for C.
                    unsafe {
                        let o = c.add(i * g.ldc + j);
                        *o = if g.accumulate { *o + acc } else { acc };
                    }
                }
            }
        }
        Ok(())
    }

    fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: &mut [*mut c_void],
    ) -> Result<(), CudaError> {
        if !(block.0 * block.1 * block.2).is_multiple_of(32) {
            return Err(CudaError::Emulation(format!(
                "{kernel}: blocks of {block:?} threads: the emulation runs whole warps only"
            )));
        }
        let name = CString::new(kernel).expect("kernel names have no NUL");
        // SAFETY: the symbol has this signature (emulate.cpp); `args` as for cuLaunchKernel.
        let rc = unsafe {
            let f = self
                .library
                .get::<LaunchFn>(b"emulated_launch\0")
                .map_err(|e| CudaError::Emulation(e.to_string()))?;
            f(
                name.as_ptr(),
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                args.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(CudaError::NoKernel(kernel.into()));
        }
        Ok(())
    }

    fn alloc(&self, bytes: usize) -> Result<Buffer, CudaError> {
        let words = vec![0u64; bytes.div_ceil(8).max(1)];
        Ok(Buffer {
            ptr: words.as_ptr() as u64,
            bytes,
            _owner: Owner::Host(words),
        })
    }

    fn upload_bytes(&self, dst: u64, src: &[u8]) -> Result<(), CudaError> {
        // SAFETY: the caller gives a live host address with room for `src`.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download_bytes(&self, src: u64, dst: &mut [u8]) -> Result<(), CudaError> {
        // SAFETY: the caller gives a live host address holding dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn synchronize(&self) -> Result<(), CudaError> {
        Ok(())
    }

    fn multiprocessors(&self) -> usize {
        1
    }

    fn describe(&self) -> String {
        "the CUDA kernels in CPU emulation".into()
    }
}
