//! What a forward step can show of its matrix products: the input rows each weight matrix
//! meets. `deepseek imatrix` builds llama.cpp's importance matrix from them (the mean square
//! of every input column, per routed expert over the tokens routed to it).

/// Sees the input of every weight matrix a forward step multiplies.
pub trait MatmulObserver: Sync {
    /// `x`: `rows` input rows of the matrix named `weight` (its checkpoint name).
    fn observe(&self, weight: &str, x: &[f32], rows: usize);
}

/// Shows `x` to `obs`, if there is one, as the input of `{prefix}.{matrix}.weight`.
pub(crate) fn show(
    obs: Option<&dyn MatmulObserver>,
    prefix: &str,
    matrix: &str,
    x: &[f32],
    rows: usize,
) {
    if let Some(o) = obs {
        o.observe(&format!("{prefix}.{matrix}.weight"), x, rows);
    }
}
