"""DeepSeek-V3's multi-token-prediction (MTP) module, written from the paper (V3 report §2.2):
transformers' DeepseekV3 has no MTP code. The reference for the engine's module
(crates/deepseek-model/src/mtp.rs) in the fixtures (make_fixtures.py) and the module the
bundled model trains (train_nano.py).

At position i, with h_i the main model's final-normed hidden state and x_{i+1} the next token:

    u_i    = eh_proj([enorm(embed(x_{i+1})); hnorm(h_i)])     # embedding first, as the
    u_i    = block_L(u_i)                                      # published weights are used
    logits = head(shared_head.norm(u_i))                       # predicts x_{i+2}

The block is an ordinary decoder layer with index L = num_hidden_layers (so MoE past
first_k_dense_replace); the embedding and the output head are the main model's (V3 shares
them; its files store copies). Stored as `model.layers.{L}.*` beside the main layers.
"""
import json
import os

import torch
from torch import nn
from transformers.masking_utils import create_causal_mask

EXTRA = ("enorm", "hnorm", "eh_proj", "head_norm")


class MtpModule(nn.Module):
    def __init__(self, config, layer_cls, norm_cls):
        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = norm_cls(h, eps)
        self.hnorm = norm_cls(h, eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = layer_cls(config, config.num_hidden_layers)
        self.head_norm = norm_cls(h, eps)

    def forward(self, main, next_ids, hidden, position_ids=None):
        """`main`: the causal LM (its embedding, RoPE tables and lm_head are shared);
        `next_ids` [B, T]: the token after each position; `hidden` [B, T, H]: the main model's
        final-normed hidden state there. Returns (logits [B, T, V], normed output [B, T, H])."""
        if position_ids is None:
            position_ids = torch.arange(next_ids.shape[1]).unsqueeze(0)
        e = main.model.embed_tokens(next_ids)
        u = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(hidden)], dim=-1))
        mask = create_causal_mask(config=main.config, inputs_embeds=u, attention_mask=None, cache=None,
                                  position_ids=position_ids)
        pe = main.model.rotary_emb(u, position_ids)
        u = self.block(u, attention_mask=mask, position_ids=position_ids, position_embeddings=pe)
        if isinstance(u, tuple):
            u = u[0]
        n = self.head_norm(u)
        return main.lm_head(n), n


def save_with_mtp(main, mtp, model_cls, config_cls, out_dir, dtype=None):
    """Writes `main` and `mtp` as one checkpoint in the published layout: the block as
    model.layers.{L} (transformers writes its per-expert names), the module's own parts as
    model.layers.{L}.{enorm,hnorm,eh_proj,shared_head.norm}, config num_nextn_predict_layers = 1."""
    from safetensors.torch import load_file, save_file
    cfg = main.config.to_dict()
    L = cfg["num_hidden_layers"]
    big_cfg = config_cls(**dict(cfg, num_hidden_layers=L + 1))
    big = model_cls(big_cfg)
    missing, _ = big.load_state_dict(main.state_dict(), strict=False)
    assert all(k.startswith(f"model.layers.{L}.") for k in missing), missing
    big.model.layers[L].load_state_dict(mtp.block.state_dict())
    if dtype is not None:
        big = big.to(dtype)
    big.save_pretrained(out_dir)
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    p = f"model.layers.{L}"
    for name, t in [("enorm.weight", mtp.enorm.weight), ("hnorm.weight", mtp.hnorm.weight),
                    ("eh_proj.weight", mtp.eh_proj.weight), ("shared_head.norm.weight", mtp.head_norm.weight)]:
        tensors[f"{p}.{name}"] = t.detach().to(dtype or t.dtype).contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json")) as f:
        c = json.load(f)
    c["num_hidden_layers"] = L
    c["num_nextn_predict_layers"] = 1
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")


def load_mtp(out_dir, main, model_cls, config_cls, layer_cls, norm_cls):
    """The module saved by save_with_mtp, in float32, beside an already loaded `main`."""
    from safetensors.torch import load_file
    L = main.config.num_hidden_layers
    big = model_cls.from_pretrained(out_dir, config=config_cls(**dict(main.config.to_dict(), num_hidden_layers=L + 1)),
                                    torch_dtype=torch.float32, attn_implementation="eager")
    mtp = MtpModule(main.config, layer_cls, norm_cls)
    mtp.block.load_state_dict(big.model.layers[L].state_dict())
    t = load_file(os.path.join(out_dir, "model.safetensors"))
    p = f"model.layers.{L}"
    with torch.no_grad():
        mtp.enorm.weight.copy_(t[f"{p}.enorm.weight"].float())
        mtp.hnorm.weight.copy_(t[f"{p}.hnorm.weight"].float())
        mtp.eh_proj.weight.copy_(t[f"{p}.eh_proj.weight"].float())
        mtp.head_norm.weight.copy_(t[f"{p}.shared_head.norm.weight"].float())
    return mtp.eval()
