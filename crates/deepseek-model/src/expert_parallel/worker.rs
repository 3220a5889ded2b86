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
    let msg = link.receive(0);
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
    let rank = ep.rank();
    let other_model = "(do all ranks load the same model?)";
    loop {
        let msg = ep.link.receive(0);
        let Some(([op, layer, m, pairs], body)) = decode_header(&msg) else {
            return Err(format!(
                "rank {rank}: a message of {} bytes from rank 0 is shorter than a header",
                msg.len()
            ));
        };
        match op {
            OP_STOP => return Ok(()),
            OP_LAYER => {}
            OP_CHECK => {
                let same = body == check_message(shard.fingerprint, &ep.placement);
                ep.link.send(0, &[u8::from(same)]);
                if !same {
                    return Err(format!(
                        "rank {rank}: rank 0 loaded other weights or placed the experts otherwise"
                    ));
                }
                continue;
            }
            _ => return Err(format!("rank {rank}: unknown message {op} from rank 0")),
        }
        let (layer, m, pairs) = (layer as usize, m as usize, pairs as usize);
        if body.len() != 4 * (m * hid + 3 * pairs) {
            return Err(format!(
                "rank {rank}: rank 0 sent {} bytes for {m} tokens of MoE layer {layer}; a hidden size of {hid} takes {} {other_model}",
                body.len(),
                4 * (m * hid + 3 * pairs)
            ));
        }
        let Some(Some(experts)) = shard.layers.get(layer) else {
            return Err(format!(
                "rank {rank}: rank 0 sent MoE layer {layer}, which is not a MoE layer of the model here {other_model}"
            ));
        };
        let word = |i: usize| -> [u8; 4] { body[4 * i..4 * i + 4].try_into().unwrap() };
        let x: Vec<f32> = (0..m * hid).map(|i| f32::from_le_bytes(word(i))).collect();
        let mut by_expert: Vec<Vec<(usize, f32)>> = vec![vec![]; experts.len()];
        for j in 0..pairs {
            let at = m * hid + 3 * j;
            let t = u32::from_le_bytes(word(at)) as usize;
            let e = u32::from_le_bytes(word(at + 1)) as usize;
            let w = f32::from_le_bytes(word(at + 2));
            match (by_expert.get_mut(e), experts.get(e)) {
                (Some(slot), Some(Some(_))) if t < m => slot.push((t, w)),
                _ => {
                    return Err(format!(
                        "rank {rank}: rank 0 routed a token to expert {e} of layer {layer}, which is not held here {other_model}"
                    ))
                }
            }
        }
        let mut out = vec![0.0; m * hid];
        run_experts(experts, None, &by_expert, &x, m, &mut out, p, None);
        let answer: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        ep.link.send(0, &answer);
    }
}
