//! What a traced forward step records, for parity tests against the reference.

use crate::router::Routing;

/// Optional record of intermediate values, for parity tests against the reference.
#[derive(Default)]
pub struct Trace {
    /// `[layers + 1]` residual streams, each `[tokens, hidden]`.
    pub resid: Vec<Vec<f32>>,
    /// Per layer: routing of every token (empty for dense layers).
    pub routing: Vec<Vec<Routing>>,
    /// Per layer: raw router logits `[tokens, experts]` (empty for dense layers).
    pub router_logits: Vec<Vec<f32>>,
    pub final_norm: Vec<f32>,
}
