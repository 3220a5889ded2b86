#!/usr/bin/env python3
"""Writes tiny random-weight checkpoints and their reference outputs into tests/fixtures/.

Reference: Hugging Face transformers (pinned in scripts/requirements-reference.txt), float32
compute, eager attention, eager per-expert MoE loop. Each fixture folder holds config.json (as
transformers 5 saves it: `rope_parameters` style), model.safetensors (published tensor names),
prompts.json, reference.safetensors and reference.json; the format is in tests/fixtures/README.md.

Seeds are searched until no greedy step has a top-1/top-2 logit gap under 1e-3 and no routing
decision (expert or group) a gap under 2e-4, so an engine within ~1e-5 of the reference cannot
legitimately choose differently.

    python3 -m venv .venv && .venv/bin/pip install -r scripts/requirements-reference.txt
    .venv/bin/python scripts/make_fixtures.py
"""
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
GEN_TOKENS = 8
PROMPT_LENS = [1, 6, 33]
YARN = {"type": "yarn", "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096, "beta_fast": 32, "beta_slow": 1}

COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=3, rms_norm_eps=1e-6,
              bos_token_id=0, eos_token_id=1, tie_word_embeddings=False, attention_bias=False,
              max_position_embeddings=163840)

FIXTURES = {
    # V2-Lite style: q_proj, greedy top-4 of 16, 2 shared experts; v_head_dim != qk_nope_head_dim.
    "v2_lite_vdim": ("deepseek_v2", "f32", dict(
        COMMON, model_type="deepseek_v2", intermediate_size=160, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=None, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
        n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4, moe_intermediate_size=24,
        first_k_dense_replace=1, moe_layer_freq=1, n_group=1, topk_group=1, topk_method="greedy",
        norm_topk_prob=False, routed_scaling_factor=1.0, scoring_func="softmax", rope_theta=10000,
        rope_scaling=YARN)),
    # V2 style: q_lora_rank, group_limited_greedy (4 groups, keep 2), routed_scaling_factor 16.
    "v2_group_bf16": ("deepseek_v2", "bf16", dict(
        COMMON, model_type="deepseek_v2", intermediate_size=160, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=3, moe_intermediate_size=24,
        first_k_dense_replace=1, moe_layer_freq=1, n_group=4, topk_group=2, topk_method="group_limited_greedy",
        norm_topk_prob=False, routed_scaling_factor=16.0, scoring_func="softmax", rope_theta=10000,
        rope_scaling=YARN)),
    # V3 router: sigmoid + e_score_correction_bias, noaux_tc, norm_topk_prob, scaling 2.5.
    "v3_noaux": ("deepseek_v3", "f32", dict(
        COMMON, model_type="deepseek_v3", intermediate_size=160, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, moe_intermediate_size=24,
        first_k_dense_replace=1, moe_layer_freq=1, n_group=4, topk_group=2, topk_method="noaux_tc",
        norm_topk_prob=True, routed_scaling_factor=2.5, scoring_func="sigmoid", rope_theta=10000,
        rope_scaling=dict(YARN, mscale=1.0, mscale_all_dim=1.0))),
    # V3 with a multi-token-prediction module (model.layers.2 after 2 main layers): the engine's
    # MTP logits against scripts/mtp_reference.py's module, written from the V3 paper.
    "v3_mtp": ("deepseek_v3", "f32", dict(
        COMMON, model_type="deepseek_v3", num_hidden_layers=2, intermediate_size=160, num_attention_heads=4,
        num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
        v_head_dim=16, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, moe_intermediate_size=24,
        first_k_dense_replace=1, moe_layer_freq=1, n_group=4, topk_group=2, topk_method="noaux_tc",
        norm_topk_prob=True, routed_scaling_factor=2.5, scoring_func="sigmoid", rope_theta=10000,
        rope_scaling=dict(YARN, mscale=1.0, mscale_all_dim=1.0), _mtp=True)),
    # DeepSeek LLM 67B style: GQA (8 query heads, 2 KV heads), rotate-half RoPE, bf16 weights.
    "llm67b_gqa_bf16": ("llama", "bf16", dict(
        COMMON, model_type="llama", intermediate_size=172, num_attention_heads=8, num_key_value_heads=2,
        rope_theta=10000.0, rope_scaling=None, max_position_embeddings=4096)),
}


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms: around 1, jittered so a wrong norm shows
                p.copy_(1.0 + 0.15 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = p.shape[-1]
                scale = 1.0 / math.sqrt(fan_in)
                if "gate.weight" in name:
                    scale *= 2.0  # sharper routing than the default init
                if "lm_head" in name:
                    scale *= 2.0
                p.copy_(scale * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))


def routing_margins(cfg, logits):
    """Smallest gap at any routing decision (experts and groups) for [T, E] router logits."""
    x = logits.double().numpy()
    if cfg["scoring_func"] == "softmax":
        s = np.exp(x - x.max(-1, keepdims=True)); s /= s.sum(-1, keepdims=True)
    else:
        s = 1 / (1 + np.exp(-x))
    gaps = []
    for row in s:
        choice = row.copy()
        method, ng, tg, k = cfg["topk_method"], cfg["n_group"], cfg["topk_group"], cfg["num_experts_per_tok"]
        if method == "noaux_tc":
            choice = choice + cfg["_bias"]
        if method != "greedy" and ng > 1:
            g = choice.reshape(ng, -1)
            gs = np.sort(g, -1)[:, ::-1][:, :2].sum(-1) if method == "noaux_tc" else g.max(-1)
            order = np.sort(gs)[::-1]
            gaps.append(order[tg - 1] - order[tg])
            keep = np.argsort(-gs)[:tg]
            mask = np.full(ng, -np.inf); mask[keep] = 0
            choice = (g + mask[:, None]).reshape(-1)
        order = np.sort(choice)[::-1]
        gaps.append(order[k - 1] - order[k])
    return float(min(gaps)) if gaps else math.inf


def build(name, family, wdtype, cfg_dict, seed):
    cls = {"deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM),
           "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM),
           "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}[family]
    kwargs = {k: v for k, v in cfg_dict.items() if k not in ("model_type", "_mtp")}
    config = cls[0](**kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls[1](config).eval()
    init_weights(model, seed)
    if wdtype == "bf16":
        model = model.to(torch.bfloat16)
    return model


def run(model, cfg_dict, prompts):
    model = model.float().eval()
    router_logits = {}
    hooks = []
    for li, layer in enumerate(model.model.layers):
        gate = getattr(layer.mlp, "gate", None)
        if gate is not None and hasattr(gate, "top_k"):
            def hook(mod, inp, out, li=li):
                router_logits.setdefault(li, []).append(out)
            hooks.append(gate.register_forward_hook(hook))
    out = {}
    margins = {"gen": math.inf, "route": math.inf}
    bias = {}
    for li, layer in enumerate(model.model.layers):
        g = getattr(layer.mlp, "gate", None)
        if g is not None and hasattr(g, "e_score_correction_bias"):
            bias[li] = g.e_score_correction_bias.detach().double().numpy()
    for i, p in enumerate(prompts):
        ids = torch.tensor([p])
        router_logits.clear()
        with torch.no_grad():
            logits = model(ids).logits[0]
        out[f"prompt.{i}"] = torch.tensor(p, dtype=torch.int32)
        out[f"logits.{i}"] = logits.float()
        for li, calls in router_logits.items():
            rl, w, idx = calls[0]
            order = torch.argsort(idx, dim=-1)
            out[f"router.{i}.layer{li}.logits"] = rl.float()
            out[f"router.{i}.layer{li}.indices"] = torch.gather(idx, 1, order).to(torch.int32)
            out[f"router.{i}.layer{li}.weights"] = torch.gather(w, 1, order).float()
            cfg = dict(cfg_dict, _bias=bias.get(li))
            margins["route"] = min(margins["route"], routing_margins(cfg, rl))
        router_logits.clear()
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GEN_TOKENS, do_sample=False, use_cache=True,
                               output_logits=True, return_dict_in_generate=True, eos_token_id=None,
                               pad_token_id=0)
        step_logits = torch.stack([l[0] for l in g.logits]).float()
        out[f"generated.{i}"] = g.sequences[0, len(p):].to(torch.int32)
        out[f"gen_step_logits.{i}"] = step_logits
        top2 = torch.topk(step_logits, 2, dim=-1).values
        margins["gen"] = min(margins["gen"], float((top2[:, 0] - top2[:, 1]).min()))
    for h in hooks:
        h.remove()
    return out, margins


def mtp_logits(main, mtp, cfg_dict, prompts, ref):
    """MTP logits over each prompt and its greedy continuation: position i takes the main
    model's final-normed hidden state there and token i + 1; `mtp_logits.i` [T - 1, vocab]."""
    gate_logits = []
    hook = mtp.block.mlp.gate.register_forward_hook(lambda mod, inp, out: gate_logits.append(out[0]))
    margin = math.inf
    bias = mtp.block.mlp.gate.e_score_correction_bias.detach().double().numpy()
    for i, p in enumerate(prompts):
        seq = torch.tensor([p + ref[f"generated.{i}"].tolist()])
        gate_logits.clear()
        with torch.no_grad():
            hidden = main.model(seq).last_hidden_state
            logits, _ = mtp(main, seq[:, 1:], hidden[:, :-1])
        ref[f"mtp_logits.{i}"] = logits[0].float()
        margin = min(margin, routing_margins(dict(cfg_dict, _bias=bias), gate_logits[0]))
    hook.remove()
    return margin


def main():
    torch.set_num_threads(2)
    only = set(sys.argv[1:])
    os.makedirs(OUT, exist_ok=True)
    for name, (family, wdtype, cfg_dict) in FIXTURES.items():
        if only and name not in only:
            continue
        rng = np.random.default_rng(1234)
        prompts = [[0] + rng.integers(2, cfg_dict["vocab_size"], n - 1).tolist() for n in PROMPT_LENS]
        for seed in range(1, 200):
            model = build(name, family, wdtype, cfg_dict, seed)
            tmp = tempfile.mkdtemp()
            cls = type(model)
            if cfg_dict.get("_mtp"):
                import mtp_reference
                from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m3
                mtp = mtp_reference.MtpModule(model.config, m3.DeepseekV3DecoderLayer, m3.DeepseekV3RMSNorm)
                init_weights(mtp, seed + 1000)
                mtp_reference.save_with_mtp(model, mtp, cls, transformers.DeepseekV3Config, tmp)
            else:
                model.save_pretrained(tmp)
            # Reload what was saved, so the reference uses exactly the stored (e.g. bf16) weights.
            reloaded = cls.from_pretrained(tmp, torch_dtype=torch.float32, attn_implementation="eager")
            ref, margins = run(reloaded, cfg_dict, prompts)
            if cfg_dict.get("_mtp"):
                mtp = mtp_reference.load_mtp(tmp, reloaded, cls, transformers.DeepseekV3Config,
                                             m3.DeepseekV3DecoderLayer, m3.DeepseekV3RMSNorm)
                margins["route"] = min(margins["route"], mtp_logits(reloaded, mtp, cfg_dict, prompts, ref))
            if margins["gen"] >= 1e-3 and margins["route"] >= 2e-4:
                break
            shutil.rmtree(tmp)
        else:
            raise SystemExit(f"{name}: no seed without near-ties")
        dst = os.path.join(OUT, name)
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        for f in ("config.json", "model.safetensors"):
            shutil.copy(os.path.join(tmp, f), dst)
        shutil.rmtree(tmp)
        save_file({k: v.contiguous() for k, v in ref.items()}, os.path.join(dst, "reference.safetensors"))
        with open(os.path.join(dst, "prompts.json"), "w") as f:
            json.dump({"prompts": prompts}, f)
        with open(os.path.join(dst, "reference.json"), "w") as f:
            json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                       "model_class": type(model).__name__, "weights_dtype": wdtype, "seed": seed,
                       "compute_dtype": "float32", "attn_implementation": "eager",
                       "min_gen_top1_top2_gap": margins["gen"], "min_routing_gap": margins["route"]},
                      f, indent=1)
        print(f"{name}: seed {seed}, gen gap {margins['gen']:.2e}, routing gap {margins['route']:.2e}")


if __name__ == "__main__":
    main()
