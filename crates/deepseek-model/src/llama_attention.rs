//! Llama attention (DeepSeek LLM 7B: MHA, 67B: GQA) with rotate-half RoPE; K and V cached.

use deepseek_cache::{BlockPool, SequenceCache};
use deepseek_kernels::attention::{attend_group, RowBlocks, RowLayout};
use deepseek_kernels::ops::{rope, RopeStyle};
use deepseek_kernels::{matmul, Matrix, Precision};
use deepseek_loader::{LoadError, ModelConfig, WeightStore};

use crate::batch::BatchLayout;
use crate::observe::{show, MatmulObserver};
use crate::rope::Rope;

pub struct LlamaAttention {
    /// The checkpoint's prefix (`model.layers.3.self_attn`).
    prefix: String,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
    pub(crate) q_proj: Matrix,
    pub(crate) k_proj: Matrix,
    pub(crate) v_proj: Matrix,
    pub(crate) o_proj: Matrix,
}

impl LlamaAttention {
    pub fn load(w: &WeightStore, cfg: &ModelConfig, prefix: &str) -> Result<Self, LoadError> {
        let (h, kvh, hd, hid) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
            cfg.hidden_size,
        );
        Ok(LlamaAttention {
            prefix: prefix.to_string(),
            heads: h,
            kv_heads: kvh,
            head_dim: hd,
            q_proj: w.matrix(&format!("{prefix}.q_proj.weight"), h * hd, hid)?,
            k_proj: w.matrix(&format!("{prefix}.k_proj.weight"), kvh * hd, hid)?,
            v_proj: w.matrix(&format!("{prefix}.v_proj.weight"), kvh * hd, hid)?,
            o_proj: w.matrix(&format!("{prefix}.o_proj.weight"), hid, h * hd)?,
        })
    }

    pub fn matrices(&self) -> Vec<&Matrix> {
        vec![&self.q_proj, &self.k_proj, &self.v_proj, &self.o_proj]
    }

    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &[f32],
        batch: &BatchLayout,
        layer: usize,
        rope_table: &Rope,
        pool: &mut BlockPool,
        caches: &[&mut SequenceCache],
        p: Precision,
        obs: Option<&dyn MatmulObserver>,
        out: &mut [f32],
    ) {
        let (h, kvh, hd, n) = (self.heads, self.kv_heads, self.head_dim, batch.tokens());
        for m in ["q_proj", "k_proj", "v_proj"] {
            show(obs, &self.prefix, m, x, n);
        }
        let kvw = kvh * hd;
        let mut q = vec![0.0; n * h * hd];
        let mut k = vec![0.0; n * kvw];
        let mut v = vec![0.0; n * kvw];
        matmul(&self.q_proj, x, n, &mut q, p);
        matmul(&self.k_proj, x, n, &mut k, p);
        matmul(&self.v_proj, x, n, &mut v, p);
        let (mut cos, mut sin) = (vec![0.0; hd / 2], vec![0.0; hd / 2]);
        for t in 0..n {
            let pos = batch.position(t);
            rope_table.cos_sin(pos, &mut cos, &mut sin);
            for head in q[t * h * hd..(t + 1) * h * hd].chunks_exact_mut(hd) {
                rope(head, &cos, &sin, RopeStyle::Half);
            }
            for head in k[t * kvw..(t + 1) * kvw].chunks_exact_mut(hd) {
                rope(head, &cos, &sin, RopeStyle::Half);
            }
            let mut row = k[t * kvw..(t + 1) * kvw].to_vec();
            row.extend_from_slice(&v[t * kvw..(t + 1) * kvw]);
            pool.write_row(caches[batch.seq_of(t)], layer, pos, &row);
        }
        let group = h / kvh;
        let scale = 1.0 / (hd as f32).sqrt();
        let seq_rows: Vec<RowBlocks> = caches.iter().map(|c| pool.layer_rows(c, layer)).collect();
        let mut attn = vec![0.0; n * h * hd];
        // One task per (token, kv head): its `group` query heads share the K/V rows.
        deepseek_kernels::threads::for_each_chunk_mut(&mut attn, group * hd, |i, o| {
            let (t, j) = (i / kvh, i % kvh);
            let rows = &seq_rows[batch.seq_of(t)];
            let layout = RowLayout {
                row_width: 2 * kvw,
                key_offset: j * hd,
                key_len: hd,
                value_offset: kvw + j * hd,
                value_len: hd,
            };
            let qs = &q[(t * h + j * group) * hd..(t * h + (j + 1) * group) * hd];
            attend_group(qs, rows, layout, batch.position(t) + 1, scale, o);
        });
        show(obs, &self.prefix, "o_proj", &attn, n);
        matmul(&self.o_proj, &attn, n, out, p);
    }
}
