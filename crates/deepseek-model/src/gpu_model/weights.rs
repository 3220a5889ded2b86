//! Weights on the device: how a checkpoint tensor is stored there ([`GpuPrecision`]) and the
//! matrix type the products read.

use deepseek_cuda::launch::{upload, Buffer, Dtype, Launch};
use deepseek_kernels::{DType, Matrix};

use super::error::{GpuModelError, Result};

/// How weights are held on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPrecision {
    /// f32 weights and activations throughout (the parity tests' mode).
    Exact,
    /// bf16 weights (f32 checkpoint tensors stay f32) and bf16-rounded activations into them.
    Bf16,
}

/// A weight matrix `[rows][cols]` on the device.
pub struct Weight {
    pub buf: Buffer,
    pub dtype: Dtype,
    pub rows: usize,
    pub cols: usize,
}

/// How a checkpoint tensor of `dtype` is stored under `p`.
pub fn device_dtype(dtype: DType, p: GpuPrecision) -> Dtype {
    match (p, dtype) {
        (GpuPrecision::Exact, _) | (_, DType::F32) => Dtype::F32,
        _ => Dtype::Bf16,
    }
}

/// Uploads `values` (f32) as `dtype`.
pub fn upload_as(l: &dyn Launch, values: &[f32], dtype: Dtype) -> Result<Buffer> {
    Ok(match dtype {
        Dtype::F32 => upload(l, values)?,
        Dtype::Bf16 => {
            let v: Vec<u16> = values
                .iter()
                .map(|&x| half::bf16::from_f32(x).to_bits())
                .collect();
            upload(l, &v)?
        }
    })
}

impl Weight {
    pub fn new(l: &dyn Launch, m: &Matrix, p: GpuPrecision) -> Result<Weight> {
        Self::stacked(l, &[m], p)
    }

    /// Matrices of equal width one after another (gate and up as one `[2I][H]` product, or
    /// every expert's `[E][rows][cols]`).
    pub fn stacked(l: &dyn Launch, ms: &[&Matrix], p: GpuPrecision) -> Result<Weight> {
        let cols = ms[0].cols;
        if ms.iter().any(|m| m.cols != cols) {
            return Err(GpuModelError::Unsupported(
                "stacked matrices of unequal widths".into(),
            ));
        }
        let dtype = device_dtype(ms[0].dtype(), p);
        let values: Vec<f32> = ms.iter().flat_map(|m| m.to_f32()).collect();
        Ok(Weight {
            buf: upload_as(l, &values, dtype)?,
            dtype,
            rows: ms.iter().map(|m| m.rows).sum(),
            cols,
        })
    }
}
