//! SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`. Dense layers, routed experts and the
//! shared experts all use it.

use deepseek_kernels::matmul::matmul_serial;
use deepseek_kernels::ops::silu_mul;
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{LoadError, WeightStore};

use crate::observe::{show, MatmulObserver};

/// Tokens per slice of [`Mlp::forward`] (see there).
const MLP_TOKEN_CHUNK: usize = 128;

pub struct Mlp {
    /// The checkpoint's prefix of its matrices (`model.layers.3.mlp.experts.5`).
    pub prefix: String,
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
            prefix: prefix.to_string(),
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

    /// `x`: `[n, hidden]` → `out`: `[n, hidden]`; `obs` sees the projections' inputs.
    pub fn forward(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
    ) {
        self.forward_with(matmul, x, n, out, p, obs)
    }

    /// [`Mlp::forward`] on the calling thread only, for callers that run several MLPs at once.
    pub fn forward_serial(
        &self,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
    ) {
        self.forward_with(matmul_serial, x, n, out, p, obs)
    }

    fn forward_with(
        &self,
        mm: fn(&Matrix, &[f32], usize, &mut [f32], Precision),
        x: &[f32],
        n: usize,
        out: &mut [f32],
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
    ) {
        let (hidden, inter) = (self.gate_proj.cols, self.gate_proj.rows);
        // A long prompt goes through in slices of tokens: the two intermediate buffers of a
        // dense layer (10944 wide in V2-Lite) over 512 tokens are 45 MB, the largest
        // temporaries of a prefill and a visible share of a small quantized model's peak RSS;
        // each slice reads the weights again, which at 128 tokens a slice costs little beside
        // the slice's arithmetic.
        let chunk = n.clamp(1, MLP_TOKEN_CHUNK);
        let mut g = vec![0.0; chunk * inter];
        let mut u = vec![0.0; chunk * inter];
        for t0 in (0..n).step_by(chunk) {
            let m = chunk.min(n - t0);
            let (g, u) = (&mut g[..m * inter], &mut u[..m * inter]);
            let xs = &x[t0 * hidden..(t0 + m) * hidden];
            mm(&self.gate_proj, xs, m, g, p);
            mm(&self.up_proj, xs, m, u, p);
            silu_mul(g, u);
            show(obs, &self.prefix, "gate_proj", xs, m);
            show(obs, &self.prefix, "up_proj", xs, m);
            show(obs, &self.prefix, "down_proj", g, m);
            mm(
                &self.down_proj,
                g,
                m,
                &mut out[t0 * hidden..(t0 + m) * hidden],
                p,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: usize, cols: usize, seed: usize) -> Matrix {
        let v = (0..rows * cols)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 1000.0 - 0.5) * 0.2)
            .collect();
        Matrix::from_f32(rows, cols, v)
    }

    /// `down(silu(gate x) · up x)` per token, in f64.
    fn reference(m: &Mlp, x: &[f32], n: usize) -> Vec<f32> {
        let (g, u, d) = (
            m.gate_proj.to_f32(),
            m.up_proj.to_f32(),
            m.down_proj.to_f32(),
        );
        let (hid, inter) = (m.gate_proj.cols, m.gate_proj.rows);
        let mut out = vec![0.0; n * hid];
        for t in 0..n {
            let xt = &x[t * hid..(t + 1) * hid];
            let dot = |w: &[f32], r: usize, v: &[f64]| -> f64 {
                (0..v.len()).map(|c| w[r * v.len() + c] as f64 * v[c]).sum()
            };
            let xd: Vec<f64> = xt.iter().map(|&v| v as f64).collect();
            let a: Vec<f64> = (0..inter)
                .map(|r| {
                    let (gv, uv) = (dot(&g, r, &xd), dot(&u, r, &xd));
                    gv / (1.0 + (-gv).exp()) * uv
                })
                .collect();
            for r in 0..hid {
                out[t * hid + r] = dot(&d, r, &a) as f32;
            }
        }
        out
    }

    #[test]
    fn forward_over_several_token_slices_matches_per_token_reference() {
        let (hid, inter) = (24, 40);
        let m = Mlp {
            prefix: "mlp".into(),
            gate_proj: matrix(inter, hid, 1),
            up_proj: matrix(inter, hid, 2),
            down_proj: matrix(hid, inter, 3),
        };
        // Two full slices and a partial one, and a prompt shorter than a slice.
        for n in [2 * MLP_TOKEN_CHUNK + 5, 7] {
            let x: Vec<f32> = (0..n * hid)
                .map(|i| ((i * 31 % 97) as f32 / 97.0 - 0.5) * 2.0)
                .collect();
            let mut out = vec![f32::NAN; n * hid];
            m.forward(&x, n, &mut out, Precision::default(), None);
            let want = reference(&m, &x, n);
            for (i, (a, b)) in out.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-5, "n {n}, value {i}: {a} vs {b}");
            }
        }
    }
}
