//! A follower rank: holds its share of the routed experts and runs them, layer by layer, on
//! the tokens rank 0 sends, until rank 0 says stop.

use deepseek_kernels::Precision;
use deepseek_loader::{LoadError, ModelConfig, WeightStore};

use super::{check_message, decode_header, ExpertParallel, OP_CHECK, OP_LAYER, OP_STOP};
use crate::mlp::Mlp;
use crate::moe::{load_routed_experts, run_experts};

/// The routed experts one follower holds: per decoder layer (and the multi-token-prediction
/// block after them), `Some` for a MoE layer, with `Some(expert)` for the ones held here.
pub struct ExpertShard {
    hidden: usize,
    /// The checkpoint's [`WeightStore::fingerprint`], which rank 0 checks against its own.
    fingerprint: [u8; 32],
    layers: Vec<Option<Vec<Option<Mlp>>>>,
}

impl ExpertShard {
    /// Memory-maps only this rank's experts of every MoE layer of the checkpoint `w`.
    pub fn load(
        w: &WeightStore,
        c: &ModelConfig,
        ep: &ExpertParallel,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, LoadError> {
        let Some(m) = &c.moe else {
            return Err(LoadError::config(
                "n_routed_experts",
                "is absent: expert parallelism needs a MoE model".to_string(),
            ));
        };
        // The multi-token-prediction block, where the checkpoint holds one, is one more layer.
        let blocks = c.num_hidden_layers
            + usize::from(
                c.num_nextn_predict_layers > 0
                    && w.contains(&format!(
                        "model.layers.{}.eh_proj.weight",
                        c.num_hidden_layers
                    )),
            );
        let mut layers = Vec::with_capacity(blocks);
        for i in 0..blocks {
            layers.push(match m.is_moe_layer(i) {
                true => Some(load_routed_experts(
                    w,
                    c,
                    m,
                    &format!("model.layers.{i}.mlp"),
                    &|e| ep.holds(e),
                )?),
                false => None,
            });
            progress(i + 1, blocks);
        }
        Ok(ExpertShard {
            hidden: c.hidden_size,
            fingerprint: w.fingerprint(),
            layers,
        })
    }

    /// Bytes of the experts held here.
    pub fn held_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .flatten()
            .flatten()
            .map(|e| e.weight_bytes())
            .sum()
    }
}

/// A follower with no experts to hold (a dense model): waits for rank 0 to say stop.
pub fn wait_for_stop(link: &dyn super::ExpertLink) -> Result<(), String> {
    let msg = link.receive_from_leader();
    match decode_header(&msg).map_or(u64::MAX, |(h, _)| h[0]) {
        OP_STOP => Ok(()),
        op => Err(format!(
            "rank {}: rank 0 sent message {op} for a model with no routed experts here (do all ranks load the same model?)",
            link.rank()
        )),
    }
}

/// Answers rank 0's MoE layers until it says stop. Run it on the kernel pool's leader thread
/// (`threads::on_pool`) in a process of its own. An error when a message makes no sense here
/// (another model on rank 0).
pub fn serve_experts(shard: &ExpertShard, ep: &ExpertParallel, p: Precision) -> Result<(), String> {
    let hid = shard.hidden;
    loop {
        let msg = ep.link.receive_from_leader();
        let Some(([op, layer, n, k], body)) = decode_header(&msg) else {
            return Err(format!(
                "rank {}: a message of {} bytes from rank 0 is shorter than a header",
                ep.rank(),
                msg.len()
            ));
        };
        match op {
            OP_STOP => return Ok(()),
            OP_LAYER => {}
            OP_CHECK => {
                let same = body == check_message(shard.fingerprint, &ep.placement);
                ep.reduce(&mut [f32::from(u8::from(!same))]);
                if !same {
                    return Err(format!(
                        "rank {}: rank 0 loaded other weights or placed the experts otherwise",
                        ep.rank()
                    ));
                }
                continue;
            }
            _ => {
                return Err(format!(
                    "rank {}: unknown message {op} from rank 0",
                    ep.rank()
                ))
            }
        }
        let (layer, n, k) = (layer as usize, n as usize, k as usize);
        if body.len() != 4 * (n * hid + 2 * n * k) {
            return Err(format!(
                "rank {}: rank 0 sent {} bytes for {n} tokens of MoE layer {layer}; a hidden size of {hid} takes {} (do all ranks load the same model?)",
                ep.rank(),
                body.len(),
                4 * (n * hid + 2 * n * k)
            ));
        }
        let words: Vec<[u8; 4]> = body
            .chunks_exact(4)
            .map(|c| c.try_into().unwrap())
            .collect();
        let x: Vec<f32> = words[..n * hid]
            .iter()
            .map(|&b| f32::from_le_bytes(b))
            .collect();
        let weights = &words[n * hid..n * hid + n * k];
        let ids = &words[n * hid + n * k..];
        let Some(Some(experts)) = shard.layers.get(layer) else {
            return Err(format!(
                "rank {}: rank 0 sent MoE layer {layer}, which is not a MoE layer of the model here (do all ranks load the same model?)",
                ep.rank()
            ));
        };
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![vec![]; experts.len()];
        for t in 0..n {
            for j in 0..k {
                let e = u32::from_le_bytes(ids[t * k + j]) as usize;
                let Some(slot) = by_expert.get_mut(e) else {
                    return Err(format!(
                        "rank {}: rank 0 routed a token to expert {e} of layer {layer}, which has {} (do all ranks load the same model?)",
                        ep.rank(),
                        experts.len()
                    ));
                };
                slot.push((t, f32::from_le_bytes(weights[t * k + j])));
            }
        }
        let mut out = vec![0.0; n * hid];
        run_experts(experts, None, &by_expert, &x, n, &mut out, p, None);
        ep.reduce(&mut out);
    }
}
