//! `--device`: where a model runs.

use std::fmt;
use std::str::FromStr;

/// Where a model runs: the CPU kernels, GPU `N` through CUDA, or the CUDA kernels in their CPU
/// emulation (the GPU path's code, testable without a GPU; very slow).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
    Emulated,
}

impl FromStr for Device {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0), `cuda:N` or `emulated`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            "emulated" => Ok(Device::Emulated),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Ok(Device::Cuda(n)),
                _ => Err(format!(
                    "`{s}` is not a device: give cpu, cuda (the first GPU), cuda:N or emulated"
                )),
            },
        }
    }
}

impl Device {
    /// The place this device's kernels run (None for the CPU kernels): the GPU opened and its
    /// kernels compiled, or the emulation built.
    pub fn open(self) -> Result<Option<Box<dyn crate::Launch>>, crate::CudaError> {
        Ok(match self {
            Device::Cpu => None,
            Device::Cuda(n) => Some(Box::new(crate::gpu::Gpu::open(n)?)),
            Device::Emulated => Some(Box::new(crate::emulate::Emulator::new()?)),
        })
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::Emulated => write!(f, "emulated"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_cuda_and_ordinals_and_names_bad_values() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert_eq!("emulated".parse(), Ok(Device::Emulated));
        for bad in ["gpu", "cuda:", "cuda:x", "CUDA", "cuda:-1"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains(bad) && e.contains("cuda:N"), "{e}");
        }
        assert_eq!(Device::Cuda(2).to_string(), "cuda:2");
    }
}
