//! A Hugging Face checkpoint written as a GGUF file in llama.cpp's layout (`deepseek quantize`):
//! the metadata keys and tensor names llama.cpp's converter writes, with the weights converted
//! or quantized row by row.
//!
//! DeepSeek-V2 is written in llama.cpp's current MLA form: `kv_b_proj` split into `attn_k_b`
//! (transposed per head) and `attn_v_b`, one KV head of width kv_lora_rank + rope. Experts are
//! stacked into `ffn_*_exps`. Llama's Q/K rows are permuted into the pair order of llama.cpp's
//! RoPE. The tokenizer's metadata comes from the caller (it lives in the engine crate).

use std::io::Write;

use deepseek_kernels::quant::iq_quantize::needs_imatrix;
use deepseek_kernels::quant::{quantize_row_weighted, QuantType};
use deepseek_kernels::Matrix;

use crate::gguf::{Value, GGML_BF16, GGML_F16, GGML_F32};
use crate::gguf_mix::MixModel;
use crate::gguf_writer::{write_gguf, TensorSpec};
use crate::{AttentionKind, Family, LoadError, ModelConfig, RopeScaling, ScoringFunc, WeightStore};

/// What the weight matrices become.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportType {
    F32,
    F16,
    BF16,
    Quant(QuantType),
}

impl ExportType {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Some(ExportType::F32),
            "f16" => Some(ExportType::F16),
            "bf16" => Some(ExportType::BF16),
            q => QuantType::from_name(q)
                .filter(|t| t.can_quantize())
                .map(ExportType::Quant),
        }
    }

    fn ggml_type(self) -> u32 {
        match self {
            ExportType::F32 => GGML_F32,
            ExportType::F16 => GGML_F16,
            ExportType::BF16 => GGML_BF16,
            ExportType::Quant(q) => q.ggml_type(),
        }
    }

    /// llama.cpp's `general.file_type` for a file mostly of this type.
    fn file_type(self) -> u32 {
        match self {
            ExportType::F32 => 0,
            ExportType::F16 => 1,
            ExportType::BF16 => 32,
            ExportType::Quant(q) => match q {
                QuantType::Q4_0 => 2,
                QuantType::Q4_1 => 3,
                QuantType::Q8_0 => 7,
                QuantType::Q5_0 => 8,
                QuantType::Q5_1 => 9,
                QuantType::Q2K => 10,
                QuantType::Q3K => 12,
                QuantType::Q4K => 15,
                QuantType::Q5K => 17,
                QuantType::Q6K => 18,
                QuantType::IQ4NL => 25,
                QuantType::IQ4XS => 30,
                QuantType::IQ2XXS => 19,
                QuantType::IQ3XXS => 23,
                QuantType::IQ2XS => 20,
                QuantType::IQ3S => 26,
                // llama.cpp's IQ2_S file type holds IQ2_XS tensors; its IQ2_M holds IQ2_S ones
                // (with the mix `quantize --type iq2_s` writes).
                QuantType::IQ2S => 29,
                QuantType::IQ1S => 24,
                QuantType::IQ1M => 31,
            },
        }
    }

    /// The type a matrix with rows of `cols` values gets: the target, or for rows that are not
    /// a whole number of its blocks the fallback llama.cpp uses (K-quants need multiples of 256:
    /// V2-Lite's 1408 and 10944 are not).
    pub fn for_row(self, cols: usize) -> ExportType {
        match self {
            ExportType::Quant(q) if !cols.is_multiple_of(q.block_elems()) => {
                let fallback = match q {
                    QuantType::Q2K | QuantType::Q3K => QuantType::Q4_0,
                    QuantType::Q4K => QuantType::Q5_0,
                    QuantType::Q5K => QuantType::Q5_1,
                    q if q == QuantType::IQ4XS || q.is_lattice() => QuantType::IQ4NL,
                    _ => QuantType::Q8_0,
                };
                if cols.is_multiple_of(fallback.block_elems()) {
                    ExportType::Quant(fallback)
                } else {
                    ExportType::F16
                }
            }
            t => t,
        }
    }
}

/// Where one GGUF tensor's rows come from.
enum Source {
    /// A Hugging Face matrix, rows optionally permuted for llama.cpp's RoPE.
    Matrix { name: String, permute_heads: usize },
    /// f32 vector.
    Vector { name: String },
    /// Experts' matrices stacked along a new outer dimension.
    Stacked { names: Vec<String> },
    /// `attn_k_b`: per head, W_UK transposed to [kv_lora, nope].
    KB { name: String },
    /// `attn_v_b`: per head, W_UV [v, kv_lora].
    VB { name: String },
}

struct Entries {
    target: ExportType,
    tensors: Vec<TensorSpec>,
    sources: Vec<Source>,
}

impl Entries {
    fn push(&mut self, spec: TensorSpec, source: Source) {
        self.tensors.push(spec);
        self.sources.push(source);
    }
    /// A `[rows, cols]` matrix in the target type (or its fallback for these rows).
    fn matrix(
        &mut self,
        name: String,
        gguf: String,
        rows: usize,
        cols: usize,
        permute_heads: usize,
    ) {
        let t = self.target.for_row(cols);
        self.push(
            TensorSpec {
                name: gguf,
                dims: vec![cols as u64, rows as u64],
                ggml_type: t.ggml_type(),
            },
            Source::Matrix {
                name,
                permute_heads,
            },
        );
    }
}

pub struct ExportPlan {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
    target: ExportType,
    mix_model: MixModel,
    sources: Vec<Source>,
    /// Per tensor, per expert (one for a plain matrix): the columns' importances from an
    /// importance matrix ([`ExportPlan::use_imatrix`]).
    importance: Vec<Vec<Option<Vec<f32>>>>,
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}
fn u(v: usize) -> Value {
    Value::U32(v as u32)
}
fn f(v: f32) -> Value {
    Value::F32(v)
}

/// The metadata and tensor list for `config`/`store`. `extra` (tokenizer, name) is appended.
pub fn plan(
    config: &ModelConfig,
    store: &WeightStore,
    target: ExportType,
    extra: Vec<(String, Value)>,
) -> Result<ExportPlan, LoadError> {
    let c = config;
    let arch = match c.family {
        Family::Llama => "llama",
        _ => "deepseek2",
    };
    let k = |key: &str| format!("{arch}.{key}");
    // A multi-token-prediction module travels as one more block with its nextn.* parts, as
    // llama.cpp's converter writes it.
    let mtp_prefix = format!("model.layers.{}", c.num_hidden_layers);
    let mtp =
        c.num_nextn_predict_layers > 0 && store.contains(&format!("{mtp_prefix}.eh_proj.weight"));
    let mut m: Vec<(String, Value)> = vec![
        ("general.architecture".into(), s(arch)),
        ("general.quantization_version".into(), u(2)),
        ("general.file_type".into(), u(target.file_type() as usize)),
        (k("context_length"), u(c.max_position_embeddings)),
        (k("embedding_length"), u(c.hidden_size)),
        (k("block_count"), u(c.num_hidden_layers + usize::from(mtp))),
        (k("feed_forward_length"), u(c.intermediate_size)),
        (k("attention.head_count"), u(c.num_attention_heads)),
        (k("rope.freq_base"), f(c.rope_theta)),
        (k("attention.layer_norm_rms_epsilon"), f(c.rms_norm_eps)),
        (k("vocab_size"), u(c.vocab_size)),
    ];
    match &c.rope_scaling {
        RopeScaling::None => {}
        RopeScaling::Linear { factor } => {
            m.push((k("rope.scaling.type"), s("linear")));
            m.push((k("rope.scaling.factor"), f(*factor)));
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
        } => {
            if mscale != mscale_all_dim && *mscale_all_dim != 0.0 {
                return Err(LoadError::config(
                    "rope_scaling.mscale",
                    format!(
                        "GGUF cannot express mscale {mscale} ≠ mscale_all_dim {mscale_all_dim}"
                    ),
                ));
            }
            m.push((k("rope.scaling.type"), s("yarn")));
            m.push((k("rope.scaling.factor"), f(*factor)));
            m.push((
                k("rope.scaling.original_context_length"),
                u(*original_max_position_embeddings),
            ));
            m.push((
                k("rope.scaling.yarn_log_multiplier"),
                f(0.1 * mscale_all_dim),
            ));
            m.push((k("rope.scaling.yarn_beta_fast"), f(*beta_fast)));
            m.push((k("rope.scaling.yarn_beta_slow"), f(*beta_slow)));
        }
    }
    let mut e = Entries {
        target,
        tensors: vec![],
        sources: vec![],
    };
    let hid = c.hidden_size;
    e.matrix(
        "model.embed_tokens.weight".into(),
        "token_embd.weight".into(),
        c.vocab_size,
        hid,
        0,
    );
    let mut vectors: Vec<(String, String, usize)> =
        vec![("model.norm.weight".into(), "output_norm.weight".into(), hid)];
    if store.contains("lm_head.weight") && !c.tie_word_embeddings {
        e.matrix(
            "lm_head.weight".into(),
            "output.weight".into(),
            c.vocab_size,
            hid,
            0,
        );
    }
    match &c.attention {
        AttentionKind::Gqa => {
            m.push((k("attention.head_count_kv"), u(c.num_key_value_heads)));
            m.push((k("rope.dimension_count"), u(c.head_dim)));
            if c.head_dim * c.num_attention_heads != hid {
                m.push((k("attention.key_length"), u(c.head_dim)));
                m.push((k("attention.value_length"), u(c.head_dim)));
            }
        }
        AttentionKind::Mla(mla) => {
            m.push((k("attention.head_count_kv"), u(1)));
            // 0 when queries are not compressed: llama.cpp decides by this key.
            m.push((k("attention.q_lora_rank"), u(mla.q_lora_rank.unwrap_or(0))));
            m.push((k("attention.kv_lora_rank"), u(mla.kv_lora_rank)));
            m.push((
                k("attention.key_length"),
                u(mla.kv_lora_rank + mla.qk_rope_head_dim),
            ));
            m.push((k("attention.value_length"), u(mla.kv_lora_rank)));
            m.push((k("attention.key_length_mla"), u(mla.qk_head_dim())));
            m.push((k("attention.value_length_mla"), u(mla.v_head_dim)));
            m.push((k("rope.dimension_count"), u(mla.qk_rope_head_dim)));
            if let Some(moe) = &c.moe {
                m.push((k("leading_dense_block_count"), u(moe.first_k_dense_replace)));
                m.push((
                    k("expert_feed_forward_length"),
                    u(moe.moe_intermediate_size),
                ));
                m.push((k("expert_count"), u(moe.n_routed_experts)));
                m.push((k("expert_shared_count"), u(moe.n_shared_experts)));
                m.push((k("expert_used_count"), u(moe.num_experts_per_tok)));
                m.push((k("expert_weights_scale"), f(moe.routed_scaling_factor)));
                m.push((k("expert_weights_norm"), Value::Bool(moe.norm_topk_prob)));
                let gating = if moe.scoring_func == ScoringFunc::Sigmoid {
                    2
                } else {
                    1
                };
                m.push((k("expert_gating_func"), u(gating)));
                m.push((k("expert_group_count"), u(moe.n_group)));
                m.push((k("expert_group_used_count"), u(moe.topk_group)));
                if moe.moe_layer_freq != 1 {
                    return Err(LoadError::config(
                        "moe_layer_freq",
                        "GGUF's deepseek2 layout needs every layer after the dense ones to be MoE",
                    ));
                }
            } else {
                m.push((k("leading_dense_block_count"), u(c.num_hidden_layers)));
            }
        }
    }
    if mtp {
        m.push((k("nextn_predict_layers"), u(1)));
    }
    for i in 0..c.num_hidden_layers + usize::from(mtp) {
        let p = format!("model.layers.{i}");
        let b = format!("blk.{i}");
        vectors.push((
            format!("{p}.input_layernorm.weight"),
            format!("{b}.attn_norm.weight"),
            hid,
        ));
        vectors.push((
            format!("{p}.post_attention_layernorm.weight"),
            format!("{b}.ffn_norm.weight"),
            hid,
        ));
        let a = format!("{p}.self_attn");
        match &c.attention {
            AttentionKind::Gqa => {
                let (h, kv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
                e.matrix(
                    format!("{a}.q_proj.weight"),
                    format!("{b}.attn_q.weight"),
                    h * hd,
                    hid,
                    h,
                );
                e.matrix(
                    format!("{a}.k_proj.weight"),
                    format!("{b}.attn_k.weight"),
                    kv * hd,
                    hid,
                    kv,
                );
                e.matrix(
                    format!("{a}.v_proj.weight"),
                    format!("{b}.attn_v.weight"),
                    kv * hd,
                    hid,
                    0,
                );
                e.matrix(
                    format!("{a}.o_proj.weight"),
                    format!("{b}.attn_output.weight"),
                    hid,
                    h * hd,
                    0,
                );
            }
            AttentionKind::Mla(d) => {
                let h = c.num_attention_heads;
                match d.q_lora_rank {
                    None => e.matrix(
                        format!("{a}.q_proj.weight"),
                        format!("{b}.attn_q.weight"),
                        h * d.qk_head_dim(),
                        hid,
                        0,
                    ),
                    Some(r) => {
                        e.matrix(
                            format!("{a}.q_a_proj.weight"),
                            format!("{b}.attn_q_a.weight"),
                            r,
                            hid,
                            0,
                        );
                        vectors.push((
                            format!("{a}.q_a_layernorm.weight"),
                            format!("{b}.attn_q_a_norm.weight"),
                            r,
                        ));
                        e.matrix(
                            format!("{a}.q_b_proj.weight"),
                            format!("{b}.attn_q_b.weight"),
                            h * d.qk_head_dim(),
                            r,
                            0,
                        );
                    }
                }
                e.matrix(
                    format!("{a}.kv_a_proj_with_mqa.weight"),
                    format!("{b}.attn_kv_a_mqa.weight"),
                    d.kv_lora_rank + d.qk_rope_head_dim,
                    hid,
                    0,
                );
                vectors.push((
                    format!("{a}.kv_a_layernorm.weight"),
                    format!("{b}.attn_kv_a_norm.weight"),
                    d.kv_lora_rank,
                ));
                let kvb = format!("{a}.kv_b_proj.weight");
                e.push(
                    TensorSpec {
                        name: format!("{b}.attn_k_b.weight"),
                        dims: vec![d.qk_nope_head_dim as u64, d.kv_lora_rank as u64, h as u64],
                        ggml_type: target.for_row(d.qk_nope_head_dim).ggml_type(),
                    },
                    Source::KB { name: kvb.clone() },
                );
                e.push(
                    TensorSpec {
                        name: format!("{b}.attn_v_b.weight"),
                        dims: vec![d.kv_lora_rank as u64, d.v_head_dim as u64, h as u64],
                        ggml_type: target.for_row(d.kv_lora_rank).ggml_type(),
                    },
                    Source::VB { name: kvb },
                );
                e.matrix(
                    format!("{a}.o_proj.weight"),
                    format!("{b}.attn_output.weight"),
                    hid,
                    h * d.v_head_dim,
                    0,
                );
            }
        }
        let mlp = format!("{p}.mlp");
        match &c.moe {
            Some(moe) if moe.is_moe_layer(i) => {
                let (n_exp, ff) = (moe.n_routed_experts, moe.moe_intermediate_size);
                e.push(
                    TensorSpec {
                        name: format!("{b}.ffn_gate_inp.weight"),
                        dims: vec![hid as u64, n_exp as u64],
                        ggml_type: GGML_F32,
                    },
                    Source::Matrix {
                        name: format!("{mlp}.gate.weight"),
                        permute_heads: 0,
                    },
                );
                if store.contains(&format!("{mlp}.gate.e_score_correction_bias")) {
                    vectors.push((
                        format!("{mlp}.gate.e_score_correction_bias"),
                        format!("{b}.exp_probs_b.bias"),
                        n_exp,
                    ));
                }
                for (proj, gg, rows, cols) in [
                    ("gate_proj", "ffn_gate_exps", ff, hid),
                    ("up_proj", "ffn_up_exps", ff, hid),
                    ("down_proj", "ffn_down_exps", hid, ff),
                ] {
                    e.push(
                        TensorSpec {
                            name: format!("{b}.{gg}.weight"),
                            dims: vec![cols as u64, rows as u64, n_exp as u64],
                            ggml_type: target.for_row(cols).ggml_type(),
                        },
                        Source::Stacked {
                            names: (0..n_exp)
                                .map(|x| format!("{mlp}.experts.{x}.{proj}.weight"))
                                .collect(),
                        },
                    );
                }
                if moe.n_shared_experts > 0 {
                    let sh = ff * moe.n_shared_experts;
                    let se = format!("{mlp}.shared_experts");
                    e.matrix(
                        format!("{se}.gate_proj.weight"),
                        format!("{b}.ffn_gate_shexp.weight"),
                        sh,
                        hid,
                        0,
                    );
                    e.matrix(
                        format!("{se}.up_proj.weight"),
                        format!("{b}.ffn_up_shexp.weight"),
                        sh,
                        hid,
                        0,
                    );
                    e.matrix(
                        format!("{se}.down_proj.weight"),
                        format!("{b}.ffn_down_shexp.weight"),
                        hid,
                        sh,
                        0,
                    );
                }
            }
            _ => {
                let ff = c.intermediate_size;
                e.matrix(
                    format!("{mlp}.gate_proj.weight"),
                    format!("{b}.ffn_gate.weight"),
                    ff,
                    hid,
                    0,
                );
                e.matrix(
                    format!("{mlp}.up_proj.weight"),
                    format!("{b}.ffn_up.weight"),
                    ff,
                    hid,
                    0,
                );
                e.matrix(
                    format!("{mlp}.down_proj.weight"),
                    format!("{b}.ffn_down.weight"),
                    hid,
                    ff,
                    0,
                );
            }
        }
    }
    if mtp {
        let (p, b) = (&mtp_prefix, format!("blk.{}.nextn", c.num_hidden_layers));
        e.matrix(
            format!("{p}.eh_proj.weight"),
            format!("{b}.eh_proj.weight"),
            hid,
            2 * hid,
            0,
        );
        for (hf, gg) in [
            ("embed_tokens", "embed_tokens"),
            ("shared_head.head", "shared_head_head"),
        ] {
            if store.contains(&format!("{p}.{hf}.weight")) {
                e.matrix(
                    format!("{p}.{hf}.weight"),
                    format!("{b}.{gg}.weight"),
                    c.vocab_size,
                    hid,
                    0,
                );
            }
        }
        for (hf, gg) in [
            ("enorm", "enorm"),
            ("hnorm", "hnorm"),
            ("shared_head.norm", "shared_head_norm"),
        ] {
            vectors.push((format!("{p}.{hf}.weight"), format!("{b}.{gg}.weight"), hid));
        }
    }
    for (name, gguf, len) in vectors {
        e.push(
            TensorSpec {
                name: gguf,
                dims: vec![len as u64],
                ggml_type: GGML_F32,
            },
            Source::Vector { name },
        );
    }
    m.extend(extra);
    let importance = vec![vec![]; e.tensors.len()];
    let mix_model = MixModel {
        blocks: c.num_hidden_layers + usize::from(mtp),
        gqa: match c.attention {
            AttentionKind::Gqa => c.num_attention_heads / c.num_key_value_heads.max(1),
            AttentionKind::Mla(_) => c.num_attention_heads,
        },
        experts: c.moe.as_ref().map_or(0, |m| m.n_routed_experts),
        imatrix: false,
    };
    Ok(ExportPlan {
        metadata: m,
        tensors: e.tensors,
        target,
        mix_model,
        sources: e.sources,
        importance,
    })
}

/// Writes one row of f32 values in GGML type `t`, rounding weighted by the columns'
/// importances where given.
fn put_row(
    t: u32,
    row: &[f32],
    importance: Option<&[f32]>,
    out: &mut dyn Write,
    buf: &mut Vec<u8>,
) -> std::io::Result<()> {
    buf.clear();
    match t {
        GGML_F32 => buf.extend(row.iter().flat_map(|v| v.to_le_bytes())),
        GGML_F16 => buf.extend(
            row.iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
        ),
        GGML_BF16 => buf.extend(
            row.iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()),
        ),
        q => {
            let q = QuantType::from_ggml_type(q).expect("planned type");
            buf.resize(q.row_bytes(row.len()), 0);
            // A matrix (or expert) the importance matrix has nothing for: flat importances
            // where the type needs some.
            let flat;
            let importance = match importance {
                None if needs_imatrix(q) => {
                    flat = vec![1.0; row.len()];
                    Some(&flat[..])
                }
                i => i,
            };
            quantize_row_weighted(q, row, importance, buf);
        }
    }
    out.write_all(buf)
}

impl ExportPlan {
    /// Gives the matrices the types llama.cpp's preset for the target gives them
    /// ([`crate::gguf_mix`]; IQ2_XXS and IQ3_XXS, whose mixes depend on whether an importance
    /// matrix is used), then the width fallbacks. Returns how many tensors changed type.
    pub fn apply_preset_mix(&mut self, imatrix: bool) -> usize {
        let ExportType::Quant(target) = self.target else {
            return 0;
        };
        let quantized: Vec<usize> = (0..self.tensors.len())
            .filter(|&i| QuantType::from_ggml_type(self.tensors[i].ggml_type).is_some())
            .collect();
        let names: Vec<&str> = quantized
            .iter()
            .map(|&i| self.tensors[i].name.as_str())
            .collect();
        let model = MixModel {
            imatrix,
            ..self.mix_model
        };
        let types = crate::gguf_mix::preset_types(target, &names, model);
        let mut changed = 0;
        for (&i, t) in quantized.iter().zip(types) {
            if let Some(t) = t {
                let spec = &mut self.tensors[i];
                let ty = ExportType::Quant(t)
                    .for_row(spec.dims[0] as usize)
                    .ggml_type();
                changed += usize::from(ty != spec.ggml_type);
                spec.ggml_type = ty;
            }
        }
        changed
    }

    /// Each GGUF matrix the file holds and the Hugging Face matrices it is made of (several for
    /// stacked experts, in expert order): how importance-matrix entries are named. The split
    /// `attn_k_b`/`attn_v_b` take the per-head inputs named by
    /// [`crate::imatrix::kv_b_half_name`].
    pub fn matrix_sources(&self) -> Vec<(String, Vec<String>)> {
        use crate::imatrix::kv_b_half_name;
        self.tensors
            .iter()
            .zip(&self.sources)
            .filter_map(|(t, s)| match s {
                Source::Matrix { name, .. } => Some((t.name.clone(), vec![name.clone()])),
                Source::Stacked { names } => Some((t.name.clone(), names.clone())),
                Source::KB { name } => Some((t.name.clone(), vec![kv_b_half_name(name, "k_b")])),
                Source::VB { name } => Some((t.name.clone(), vec![kv_b_half_name(name, "v_b")])),
                _ => None,
            })
            .collect()
    }

    /// Quantizes with `imatrix`'s column importances (its entries named as this file names its
    /// matrices; an expert it saw no tokens for is quantized plainly). Returns how many of the
    /// file's matrices it covers; an entry of the wrong width is an error naming it.
    pub fn use_imatrix(&mut self, imatrix: &crate::imatrix::Imatrix) -> Result<usize, LoadError> {
        let mut covered = 0;
        for (i, (t, src)) in self.tensors.iter().zip(&self.sources).enumerate() {
            let experts = match src {
                Source::Matrix { .. } => 1,
                Source::Stacked { names } => names.len(),
                // One slice per head, all with the entry's one count.
                Source::KB { .. } | Source::VB { .. } => t.dims[2] as usize,
                _ => continue,
            };
            let Some(entry) = imatrix.entries.get(&t.name) else {
                continue;
            };
            let cols = t.dims[0] as usize;
            if entry.sums.len() != cols * experts {
                return Err(LoadError::config(
                    "--imatrix",
                    format!(
                        "entry `{}` has {} values; the matrix needs {cols} per expert × {experts}",
                        t.name,
                        entry.sums.len()
                    ),
                ));
            }
            self.importance[i] = (0..experts).map(|e| entry.mean_squares(e, cols)).collect();
            covered += 1;
        }
        Ok(covered)
    }

    /// Writes the file; `progress(done, total)` per tensor.
    pub fn write(
        &self,
        store: &WeightStore,
        config: &ModelConfig,
        path: &std::path::Path,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<(), LoadError> {
        let total = self.tensors.len();
        write_gguf(path, &self.metadata, &self.tensors, |i, out| {
            self.fill(store, config, path, i, out)?;
            progress(i + 1, total);
            Ok(())
        })
    }

    /// Writes the model in parts of at most `max_bytes` of tensor data each, as llama.cpp's
    /// `gguf-split` does (`NAME-00001-of-0000N.gguf` beside `path`; the first part holds the
    /// metadata, every part `split.*`); a model that fits in one part is written to `path` as
    /// one file. Returns the files written.
    pub fn write_split(
        &self,
        store: &WeightStore,
        config: &ModelConfig,
        path: &std::path::Path,
        max_bytes: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<std::path::PathBuf>, LoadError> {
        use crate::gguf_split::{part_path, plan_parts, split_metadata};
        let sizes: Vec<usize> = self.tensors.iter().map(|t| t.len_bytes()).collect();
        let parts = plan_parts(&sizes, max_bytes);
        if parts.len() == 1 {
            self.write(store, config, path, progress)?;
            return Ok(vec![path.to_path_buf()]);
        }
        let (total, count) = (self.tensors.len(), parts.len());
        let mut written = vec![];
        for (k, range) in parts.into_iter().enumerate() {
            let file = part_path(path, k + 1, count);
            let mut meta = if k == 0 {
                self.metadata.clone()
            } else {
                vec![]
            };
            meta.extend(split_metadata(k, count, total));
            write_gguf(&file, &meta, &self.tensors[range.clone()], |i, out| {
                self.fill(store, config, &file, range.start + i, out)?;
                progress(range.start + i + 1, total);
                Ok(())
            })?;
            written.push(file);
        }
        Ok(written)
    }

    /// Writes tensor `i`'s data.
    fn fill(
        &self,
        store: &WeightStore,
        config: &ModelConfig,
        path: &std::path::Path,
        i: usize,
        out: &mut dyn Write,
    ) -> Result<(), LoadError> {
        let io = |e: std::io::Error| LoadError::Io {
            path: path.to_path_buf(),
            source: e,
        };
        let shape = |spec: &TensorSpec| -> (usize, usize) {
            let cols = spec.dims[0] as usize;
            let rows = spec.dims[1..].iter().product::<u64>() as usize;
            (rows, cols)
        };
        {
            let spec = &self.tensors[i];
            let (rows, cols) = shape(spec);
            let mut row = vec![0.0f32; cols];
            let mut buf = vec![];
            let importance = |e: usize| self.importance[i].get(e).and_then(|v| v.as_deref());
            let matrix_rows = |m: &Matrix,
                               order: &mut dyn Iterator<Item = usize>,
                               imp: Option<&[f32]>,
                               out: &mut dyn Write|
             -> Result<(), LoadError> {
                // Rows quantize on every thread (the i-quant searches take ~1 µs a value), in
                // batches written in order: the file is the same as one thread's.
                const ROWS_PER_TASK: usize = 16;
                let order: Vec<usize> = order.collect();
                let batch = ROWS_PER_TASK * 4 * deepseek_kernels::threads::current();
                for rows in order.chunks(batch) {
                    let parts = deepseek_kernels::threads::map(
                        rows.len().div_ceil(ROWS_PER_TASK),
                        |task| {
                            let (mut row, mut buf, mut part) =
                                (vec![0.0f32; m.cols], vec![], vec![]);
                            let mine = &rows[task * ROWS_PER_TASK..];
                            for &r in &mine[..ROWS_PER_TASK.min(mine.len())] {
                                m.row_f32(r, &mut row);
                                put_row(spec.ggml_type, &row, imp, &mut part, &mut buf)
                                    .expect("writing to memory");
                            }
                            part
                        },
                    );
                    for p in parts {
                        out.write_all(&p).map_err(io)?;
                    }
                }
                Ok(())
            };
            match &self.sources[i] {
                Source::Vector { name } => {
                    let v = store.vector(name, cols)?;
                    put_row(spec.ggml_type, &v, None, out, &mut buf).map_err(io)?;
                }
                Source::Matrix {
                    name,
                    permute_heads,
                } => {
                    let m = store.matrix(name, rows, cols)?;
                    if *permute_heads > 0 {
                        // GGUF row 2i + h ← HF row h·d/2 + i within each head.
                        let hd = rows / permute_heads;
                        let mut order = (0..rows).map(|r| {
                            let (head, j) = (r / hd, r % hd);
                            head * hd + (j % 2) * (hd / 2) + j / 2
                        });
                        matrix_rows(&m, &mut order, importance(0), out)?;
                    } else {
                        matrix_rows(&m, &mut (0..rows), importance(0), out)?;
                    }
                }
                Source::Stacked { names } => {
                    let per = rows / names.len();
                    for (e, n) in names.iter().enumerate() {
                        let m = store.matrix(n, per, cols)?;
                        matrix_rows(&m, &mut (0..per), importance(e), out)?;
                    }
                }
                Source::KB { name } | Source::VB { name } => {
                    let d = config.mla().ok_or_else(|| {
                        LoadError::config(
                            "kv_lora_rank",
                            "k_b/v_b tensors exist only in MLA models",
                        )
                    })?;
                    let h = config.num_attention_heads;
                    let per_head = d.qk_nope_head_dim + d.v_head_dim;
                    let m = store.matrix(name, h * per_head, d.kv_lora_rank)?;
                    let kv = m.to_f32();
                    let lora = d.kv_lora_rank;
                    for head in 0..h {
                        let base = head * per_head;
                        if matches!(self.sources[i], Source::KB { .. }) {
                            // [kv_lora rows, nope cols]: W_UK transposed.
                            for c in 0..lora {
                                for (j, v) in row.iter_mut().enumerate() {
                                    *v = kv[(base + j) * lora + c];
                                }
                                put_row(spec.ggml_type, &row, importance(head), out, &mut buf)
                                    .map_err(io)?;
                            }
                        } else {
                            for j in 0..d.v_head_dim {
                                let r = base + d.qk_nope_head_dim + j;
                                put_row(
                                    spec.ggml_type,
                                    &kv[r * lora..(r + 1) * lora],
                                    importance(head),
                                    out,
                                    &mut buf,
                                )
                                .map_err(io)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
