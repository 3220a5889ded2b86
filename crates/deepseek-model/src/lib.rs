//! DeepSeek model definitions, one idea per file, weights named as the checkpoint names them:
//!
//! - [`mla`]: Multi-head Latent Attention over the latent cache, with weight absorption.
//! - [`router`]: DeepSeekMoE routing (softmax/greedy, group-limited, V3 sigmoid + bias).
//! - [`moe`]: routed + shared experts; [`mlp`]: the SwiGLU MLP they are made of.
//! - [`llama_attention`]: DeepSeek LLM 7B/67B attention.
//! - [`rope`]: RoPE and YaRN tables.
//! - [`layer`]: one decoder layer (attention, then dense MLP or MoE).
//! - [`mtp`]: DeepSeek-V3's multi-token-prediction module (speculative drafts).
//! - [`expert_parallel`]: the routed experts split across processes (MPI ranks).
//! - [`observe`]: what a step shows of its matrix products (importance matrices).
//! - [`model`]: the decoder stack and the batched forward step.
//! - [`gpu_model`]: the same stack on a GPU (deepseek-cuda's kernels), or their CPU emulation.
//!
//! Math lives in `deepseek-kernels`; the cache lives in `deepseek-cache`.

pub mod batch;
pub mod expert_parallel;
pub mod gpu_model;
pub mod layer;
pub mod llama_attention;
pub mod mla;
pub mod mlp;
pub mod model;
pub mod moe;
pub mod mtp;
pub mod observe;
pub mod rope;
pub mod router;
pub mod trace;

pub use deepseek_cache::CacheDtype;
pub use model::{LogitsFor, Model, ModelError, MtpStep, PrefillPath, SeqStep, StepOutput};
pub use observe::MatmulObserver;
pub use trace::Trace;
