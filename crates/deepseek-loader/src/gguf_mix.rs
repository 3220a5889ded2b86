//! The per-tensor type mixes of llama.cpp's 1–3-bit presets (`llama-quantize … IQ1_S`,
//! `IQ1_M`, `IQ2_XXS`, `IQ2_XS`, `IQ2_M` (of IQ2_S tensors), `IQ3_XXS`, `IQ3_S`; `llama_tensor_get_type` in llama-quant.cpp), so that
//! `quantize --type iq2_xxs` writes the file llama-quantize would: the output matrix, the token
//! embeddings, attention's value matrices and the first eighth of the `ffn_down` matrices get
//! more bits, the rest the named type. Tensors are matched by their GGUF names as llama.cpp
//! matches them.

use deepseek_kernels::quant::QuantType;

/// What the presets look at besides a tensor's name.
#[derive(Clone, Copy, Debug)]
pub struct MixModel {
    /// `block_count` (the MTP block included, as llama.cpp counts `n_layer_all`).
    pub blocks: usize,
    /// Query heads per key/value head.
    pub gqa: usize,
    /// Routed experts (0 for a dense model).
    pub experts: usize,
    /// Whether an importance matrix is given (IQ3_XXS's mix depends on it).
    pub imatrix: bool,
}

/// llama.cpp's tensor categories (`tensor_get_category`), in its order of matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    Output,
    TokenEmbd,
    AttnV,
    AttnK,
    AttnQ,
    AttnOutput,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    let has = |s: &str| name.contains(s);
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" {
        Category::TokenEmbd
    } else if has("attn_qkv.weight") || has("attn_kv_b.weight") || has("attn_v.weight") {
        Category::AttnV
    } else if has("attn_k.weight") {
        Category::AttnK
    } else if has("attn_q.weight") {
        Category::AttnQ
    } else if has("attn_output.weight") {
        Category::AttnOutput
    } else if has("ffn_up") || has("ffn_gate") {
        Category::Other
    } else if has("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// The layer of a `blk.N.…` name.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// The preset's type for each of `names` (the file's matrices, in file order: llama.cpp counts
/// `ffn_down` tensors as it meets them), for a file of `target`; None where the preset keeps
/// the target. The 2–3-bit lattice targets have mixes here; the others stay pure.
pub fn preset_types(target: QuantType, names: &[&str], m: MixModel) -> Vec<Option<QuantType>> {
    use Category as C;
    use QuantType::*;
    // llama.cpp's "IQ2 group" of file types (IQ2_XXS, IQ2_XS, IQ2_S; also IQ1_S/M and IQ2_M).
    let iq2 = matches!(target, IQ1S | IQ1M | IQ2XXS | IQ2XS | IQ2S);
    // Their 2.5-bit member takes IQ3_S where the others take Q2_K.
    let low = if target == IQ2S { IQ3S } else { Q2K };
    let mut ffn_down_seen = 0;
    names
        .iter()
        .map(|&name| {
            let t = match (target, category(name)) {
                (IQ1S | IQ1M | IQ2XXS | IQ2XS | IQ2S | IQ3XXS, C::Output) => Some(Q5K),
                (IQ3S, C::Output) => Some(Q6K),
                (IQ1S | IQ1M | IQ2XXS | IQ2XS, C::TokenEmbd) => Some(Q2K),
                (IQ2S | IQ3XXS, C::TokenEmbd) => Some(IQ3S),
                (_, C::AttnV) if iq2 => Some(if m.gqa >= 4 || m.experts >= 4 {
                    Q4K
                } else {
                    low
                }),
                (_, C::AttnK) if iq2 && m.experts == 8 => Some(Q4K),
                (_, C::FfnDown) if iq2 => {
                    ffn_down_seen += 1;
                    (ffn_down_seen - 1 < m.blocks / 8).then_some(low)
                }
                (_, C::AttnOutput) if iq2 && m.experts == 8 => Some(Q5K),
                (IQ2S, C::AttnOutput) => Some(IQ3S),
                (IQ1S | IQ1M, C::AttnOutput) => Some(IQ2XXS),
                (IQ3XXS, C::AttnV) => Some(if m.gqa >= 4 {
                    Q4K
                } else if m.imatrix {
                    IQ3XXS
                } else {
                    IQ3S
                }),
                (IQ3S, C::AttnV) if m.gqa >= 4 => Some(Q4K),
                (IQ3XXS | IQ3S, C::AttnK) if m.experts == 8 => Some(Q8_0),
                (IQ3XXS, C::AttnK | C::AttnQ) => Some(IQ2S),
                (IQ3XXS, C::FfnDown) if !m.imatrix => {
                    let layer = if m.experts > 1 {
                        layer_of(name).unwrap_or(0)
                    } else {
                        ffn_down_seen
                    };
                    ffn_down_seen += 1;
                    Some(if layer < m.blocks / 8 { Q4K } else { Q3K })
                }
                (IQ3XXS | IQ3S, C::AttnOutput) if m.experts == 8 => Some(Q5K),
                (IQ3XXS, C::AttnOutput) => Some(IQ3S),
                _ => None,
            };
            t.filter(|&t| t != target)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The IQ2_XXS mix llama-quantize chose for the 8-layer V2-Lite synthetic (one dense layer,
    /// 64 experts): output Q5_K, embeddings Q2_K, the first of the 8 `ffn_down` tensors Q2_K,
    /// the rest the target (attn_k_b/attn_v_b are not attention's value in llama.cpp's naming).
    #[test]
    fn iq2_xxs_mix_follows_llama_cpp() {
        let names = [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.0.attn_v_b.weight",
            "blk.0.ffn_down.weight",
            "blk.1.ffn_down_exps.weight",
            "blk.1.ffn_down_shexp.weight",
            "blk.1.ffn_gate_exps.weight",
            "output.weight",
        ];
        let m = MixModel {
            blocks: 8,
            gqa: 16,
            experts: 64,
            imatrix: true,
        };
        let got = preset_types(QuantType::IQ2XXS, &names, m);
        use QuantType::*;
        assert_eq!(
            got,
            vec![
                Some(Q2K),
                None,
                None,
                Some(Q2K),
                None,
                None,
                None,
                Some(Q5K)
            ]
        );
        // Sixty layers: the first seven ffn_down tensors, dense and MoE alike.
        let many: Vec<String> = (0..30)
            .flat_map(|i| {
                [
                    format!("blk.{i}.ffn_down_exps.weight"),
                    format!("blk.{i}.ffn_down_shexp.weight"),
                ]
            })
            .collect();
        let names: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
        let got = preset_types(QuantType::IQ2XXS, &names, MixModel { blocks: 60, ..m });
        assert_eq!(got.iter().filter(|t| t.is_some()).count(), 7);
        assert!(got[..7].iter().all(|t| *t == Some(Q2K)));
        // A dense Llama-style model with grouped queries: attn_v at Q4_K.
        let dense = MixModel {
            blocks: 30,
            gqa: 8,
            experts: 0,
            imatrix: true,
        };
        assert_eq!(
            preset_types(QuantType::IQ2XXS, &["blk.3.attn_v.weight"], dense),
            vec![Some(Q4K)]
        );
        // IQ3_XXS: embeddings IQ3_S, the MLA-less attn_q IQ2_S, with an importance matrix
        // ffn_down stays.
        let got = preset_types(
            QuantType::IQ3XXS,
            &[
                "token_embd.weight",
                "blk.0.attn_q.weight",
                "blk.0.ffn_down.weight",
            ],
            m,
        );
        assert_eq!(got, vec![Some(IQ3S), Some(IQ2S), None]);
        // Other targets stay pure.
        assert!(preset_types(QuantType::Q4K, &names, m)
            .iter()
            .all(|t| t.is_none()));
    }
}
