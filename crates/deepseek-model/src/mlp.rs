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

    pub fn matrices(&self) -> Vec<&Matrix> {
        vec![&self.gate_proj, &self.up_proj, &self.down_proj]
    }

    /// `x`: `[n, hidden]` → `out`: `[n, hidden]`.
    pub fn forward(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let inter = self.gate_proj.rows;
        let mut g = vec![0.0; n * inter];
        let mut u = vec![0.0; n * inter];
        matmul(&self.gate_proj, x, n, &mut g);
        matmul(&self.up_proj, x, n, &mut u);
        silu_mul(&mut g, &u);
        matmul(&self.down_proj, &g, n, out);
    }

    /// [`Mlp::forward`] on the calling thread only, for callers that run several MLPs at once.
    pub fn forward_serial(&self, x: &[f32], n: usize, out: &mut [f32]) {
        let inter = self.gate_proj.rows;
        let mut g = vec![0.0; n * inter];
        let mut u = vec![0.0; n * inter];
        matmul_serial(&self.gate_proj, x, n, &mut g);
        matmul_serial(&self.up_proj, x, n, &mut u);
        silu_mul(&mut g, &u);
        matmul_serial(&self.down_proj, &g, n, out);
    }
}
