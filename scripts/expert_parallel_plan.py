#!/usr/bin/env python3
"""Plans expert parallelism for a DeepSeek MoE model from its config.json alone: memory per
rank, bytes per token on the wire, and the critical path of a decode step, for N ranks.

The placement is `--expert-parallel`'s contiguous one (or `even` with --even) (crates/deepseek-model/src/
expert_parallel/placement.rs): rank 0 holds everything but the routed experts plus a share of
them reduced by the shared experts' work, whole expert groups per rank where they divide.

usage: scripts/expert_parallel_plan.py [--config config.json] [--ranks 2 4 8] [--bits 4.85]
       (without --config: DeepSeek-V2's published config)
"""
import argparse
import json
import math

# DeepSeek-V2 (236B) as published (config.json of deepseek-ai/DeepSeek-V2).
V2 = {
    "vocab_size": 102400, "hidden_size": 5120, "intermediate_size": 12288,
    "moe_intermediate_size": 1536, "num_hidden_layers": 60, "first_k_dense_replace": 1,
    "n_routed_experts": 160, "n_shared_experts": 2, "num_experts_per_tok": 6, "n_group": 8,
    "topk_group": 3, "num_attention_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
}


def shares(c, ranks):
    if ranks == 1:
        return [1.0]
    k, s = c["num_experts_per_tok"], c["n_shared_experts"]
    follower = (1 + s / k) / ranks
    leader = 1 - (ranks - 1) * follower
    if leader <= 0:
        return [0.0] + [1 / (ranks - 1)] * (ranks - 1)
    return [leader] + [follower] * (ranks - 1)


def counts(e, unit, shr):
    units, ranks = e // unit, len(shr)
    bounds, cum = [0], 0.0
    for r, sh in enumerate(shr[:-1], start=1):
        cum += sh
        lo = 0 if r == 1 else bounds[-1] + 1
        bounds.append(min(max(round(units * cum), lo), units - (ranks - r)))
    bounds.append(units)
    return [(bounds[r + 1] - bounds[r]) * unit for r in range(ranks)]


def experts_per_rank(c, ranks, even=False):
    e, g = c["n_routed_experts"], max(c.get("n_group", 1), 1)
    shr = [1 / ranks] * ranks if even else shares(c, ranks)
    by_expert = counts(e, 1, shr)
    if g > 1 and g >= ranks and e % g == 0:
        by_group = counts(e, e // g, shr)
        if max(by_group) * 10 <= max(by_expert) * 11:
            return by_group
    return by_expert


def params(c):
    h, v, layers = c["hidden_size"], c["vocab_size"], c["num_hidden_layers"]
    heads, nope, rope, vd = (c["num_attention_heads"], c["qk_nope_head_dim"],
                             c["qk_rope_head_dim"], c["v_head_dim"])
    q = (h * c["q_lora_rank"] + c["q_lora_rank"] * heads * (nope + rope)
         if c.get("q_lora_rank") else h * heads * (nope + rope))
    attn = q + h * (c["kv_lora_rank"] + rope) + c["kv_lora_rank"] * heads * (nope + vd) + heads * vd * h
    expert = 3 * h * c["moe_intermediate_size"]
    moe_layers = layers - c["first_k_dense_replace"]
    return {
        "attention": layers * attn,
        "dense": c["first_k_dense_replace"] * 3 * h * c["intermediate_size"],
        "embed_head": 2 * v * h,
        "shared": moe_layers * c["n_shared_experts"] * expert,
        "routed": moe_layers * c["n_routed_experts"] * expert,
        "expert": expert,
        "moe_layers": moe_layers,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config")
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--even", action="store_true", help="--expert-placement even")
    ap.add_argument("--bits", type=float, nargs="+", default=[16.0, 4.85],
                    help="bits per weight (16: bf16; 4.85: about llama.cpp's Q4_K_M)")
    a = ap.parse_args()
    c = json.load(open(a.config)) if a.config else V2
    p = params(c)
    rest = p["attention"] + p["dense"] + p["embed_head"] + p["shared"]
    total = rest + p["routed"]
    e = c["n_routed_experts"]
    print(f"parameters: {total / 1e9:.1f}B, of which routed experts {p['routed'] / 1e9:.1f}B "
          f"({100 * p['routed'] / total:.0f}%)")
    print("\n| bits | ranks | rank 0 (GB) | largest other rank (GB) | one process (GB) |")
    print("|---|---|---|---|---|")
    for bits in a.bits:
        gb = bits / 8 / 1e9
        for ranks in a.ranks:
            per = experts_per_rank(c, ranks, a.even)
            r0 = (rest + per[0] / e * p["routed"]) * gb
            other = max(per[1:]) / e * p["routed"] * gb
            print(f"| {bits:g} | {ranks} | {r0:.0f} | {other:.0f} | {total * gb:.0f} |")
    h, k = c["hidden_size"], c["num_experts_per_tok"]
    print("\nwire, per decoded token (batch 1), placement as above:")
    print("| ranks | followers a token meets (uniform routing) | KB out a MoE layer | KB back | "
          f"MB a token ({p['moe_layers']} MoE layers) |")
    print("|---|---|---|---|---|")
    for ranks in a.ranks:
        per = experts_per_rank(c, ranks, a.even)
        # Expected followers holding at least one of k experts drawn without replacement.
        met = sum(1 - math.comb(e - n, k) / math.comb(e, k) for n in per[1:])
        out = met * (32 + 4 * h) + 12 * k * (1 - per[0] / e)
        back = met * 4 * h
        print(f"| {ranks} | {met:.2f} | {out / 1e3:.1f} | {back / 1e3:.1f} | "
              f"{p['moe_layers'] * (out + back) / 1e6:.2f} |")
    print(f"latency: 2 per MoE layer (dispatch, answers), {2 * p['moe_layers']} a token, whatever the ranks")
    active_routed = p["moe_layers"] * k * p["expert"]
    print(f"read per decoded token: attention {p['attention'] / 1e9:.2f}B, shared experts "
          f"{p['shared'] / 1e9:.2f}B, dense + lm_head {(p['dense'] + p['embed_head'] / 2) / 1e9:.2f}B "
          f"(rank 0, in series), routed experts {active_routed / 1e9:.2f}B (split)")


if __name__ == "__main__":
    main()
