//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`. Dense layers, routed experts and the
//! shared experts all use it.

use deepseek_kernels::matrix::matmul_serial;
use deepseek_kernels::ops::silu_mul;
use deepseek_kernels::{matmul, Matrix};
use deepseek_loader::{LoadError, WeightStore};

pub struct Mlp {
    pub gate_proj: Matrix,
    pub up_proj: Matrix,
    pub down_proj: Matrix,
}

impl Mlp {
    pub fn load(
        w: &WeightStore,
        prefix: &str,
        hidden: usize,
        inter: usize,
    ) -> Result<Self, LoadError> {
        Ok(Mlp {
            gate_proj: w.matrix(&format!("{prefix}.gate_proj.weight"), inter, hidden)?,
            up_proj: w.matrix(&format!("{prefix}.up_proj.weight"), inter, hidden)?,
            down_proj: w.matrix(&format!("{prefix}.down_proj.weight"), hidden, inter)?,
        })
    }

    /// Bytes of all three projections (what one token's pass reads).
    pub fn weight_bytes(&self) -> usize {
        self.matrices().iter().map(|m| m.size_bytes()).sum()
    }

    pub fn matrices(&self) -> Vec<&Matrix> {
        vec![&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    /// `x`: `[n, hidden]` → `out`: `[n, hidden]`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.forward_with(matmul, x, n, out)
    }

    /// [`Mlp::forward`] on the calling thread only, for callers that run several MLPs at once.
    pub fn forward_serial(&self, x: &[f32], n: usize, out: &mut [f32]) {
        self.forward_with(matmul_serial, x, n, out)
    }

    fn forward_with(
        &self,
        mm: fn(&Matrix, &[f32], usize, &mut [f32]),
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        let inter = self.gate_proj.rows;
        let mut g = vec![0.0; n * inter];
        let mut u = vec![0.0; n * inter];
        mm(&self.gate_proj, x, n, &mut g);
        mm(&self.up_proj, x, n, &mut u);
        silu_mul(&mut g, &u);
        mm(&self.down_proj, &g, n, out);
    }
}
