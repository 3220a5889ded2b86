#!/usr/bin/env python3
"""Trains deepseek-coder-nano: a tiny DeepSeek-V2-architecture code model (MLA with the latent
cache, DeepSeekMoE with shared + routed experts, a dense first layer), on the Python standard
library's own source (PSF license), with fill-in-the-middle as DeepSeek-Coder does it.

Writes models/deepseek-coder-nano/: config.json, model.safetensors (bf16), tokenizer.json,
tokenizer_config.json, loss.png, training.json (losses, timing, validation windows) and
reference.json (transformers' greedy generations for the parity test).

    .venv/bin/python scripts/train_nano.py [--minutes 75]

Deterministic for a given Python stdlib, torch version and thread count (seeded).
"""
import argparse
import hashlib
import json
import math
import os
import random
import sys
import sysconfig
import time

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "models", "deepseek-coder-nano")
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
SPECIALS = [BOS, EOS, FIM_BEGIN, FIM_HOLE, FIM_END]
VOCAB = 4096
SEQ = 256
FIM_RATE = 0.5
VAL_WINDOWS = 48

# Chat template in the DeepSeek-Coder-V2 style, so `deepseek chat` and the server work.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def stdlib_files():
    lib = sysconfig.get_paths()["stdlib"]
    files = []
    for d, subdirs, names in os.walk(lib):
        subdirs[:] = sorted(s for s in subdirs if s not in ("site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "turtledemo"))
        for n in sorted(names):
            if n.endswith(".py"):
                files.append(os.path.join(d, n))
    return lib, files


def split(files, lib):
    train, val = [], []
    for f in files:
        rel = os.path.relpath(f, lib)
        (val if int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 20 == 0 else train).append(f)
    return train, val


def read(f):
    with open(f, encoding="utf-8", errors="replace") as fh:
        return fh.read()


def train_tokenizer(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def fim(doc, rng):
    """DeepSeek-Coder's PSM: <fim▁begin>prefix<fim▁hole>suffix<fim▁end>middle."""
    if len(doc) < 10:
        return doc
    a, b = sorted(rng.sample(range(len(doc)), 2))
    return FIM_BEGIN + doc[:a] + FIM_HOLE + doc[b:] + FIM_END + doc[a:b]


def config():
    return transformers.DeepseekV2Config(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=704, moe_intermediate_size=256,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
        q_lora_rank=None, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
        moe_layer_freq=1, n_group=1, topk_group=1, topk_method="greedy", norm_topk_prob=False,
        routed_scaling_factor=1.0, scoring_func="softmax", max_position_embeddings=2048,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1,
        attention_bias=False)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=75.0, help="training time budget")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    os.makedirs(OUT, exist_ok=True)

    lib, files = stdlib_files()
    train_files, val_files = split(files, lib)
    train_docs = [read(f) for f in train_files]
    val_docs = [read(f) for f in val_files]
    print(f"{len(train_files)} train files, {len(val_files)} validation files from {lib}", flush=True)

    tok = train_tokenizer(train_docs)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
                   "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                   "chat_template": CHAT_TEMPLATE}, f, ensure_ascii=False, indent=2)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)

    def encode_doc(d):
        return [bos] + tok.encode(d).ids + [eos]

    # Validation: plain (non-FIM) windows of the held-out files, fixed once.
    val_stream = [t for d in val_docs for t in encode_doc(d)]
    stride = max(SEQ + 1, len(val_stream) // VAL_WINDOWS)
    val_windows = [val_stream[i * stride:i * stride + SEQ + 1] for i in range(VAL_WINDOWS) if i * stride + SEQ + 1 <= len(val_stream)]

    model = transformers.DeepseekV2ForCausalLM(config())
    model.config._attn_implementation = "eager"
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{n_params / 1e6:.2f}M parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch = 16
    budget = args.minutes * 60
    est_steps = 2400
    warmup = 100

    def val_loss():
        model.eval()
        with torch.no_grad():
            x = torch.tensor(val_windows)
            losses = []
            for i in range(0, len(x), 16):
                xb = x[i:i + 16]
                logits = model(xb[:, :-1]).logits.float()
                losses.append(torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), xb[:, 1:].reshape(-1), reduction="sum").item())
        model.train()
        return sum(losses) / (len(val_windows) * SEQ)

    def batches():
        while True:
            order = list(range(len(train_docs)))
            rng.shuffle(order)
            buf = []
            for i in order:
                d = train_docs[i]
                if rng.random() < FIM_RATE:
                    d = fim(d, rng)
                buf.extend(encode_doc(d))
                while len(buf) >= batch * (SEQ + 1):
                    chunk = buf[:batch * (SEQ + 1)]
                    buf = buf[batch * (SEQ + 1):]
                    yield torch.tensor(chunk).view(batch, SEQ + 1)

    log = {"step": [], "train_loss": [], "val_step": [], "val_loss": [], "seconds": []}
    t0 = time.time()
    step = 0
    ema = None
    for xb in batches():
        elapsed = time.time() - t0
        if elapsed > budget:
            break
        frac = min(1.0, elapsed / budget)
        lr = 2e-3 * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        out = model(xb[:, :-1], labels=None)
        loss = torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, VOCAB), xb[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 20 == 0:
            log["step"].append(step); log["train_loss"].append(ema); log["seconds"].append(elapsed)
            print(f"step {step} {elapsed / 60:.1f} min train {ema:.3f}", flush=True)
        if step % 200 == 0:
            v = val_loss()
            log["val_step"].append(step); log["val_loss"].append(v)
            print(f"step {step} {elapsed / 60:.1f} min train {ema:.3f} val {v:.3f} lr {lr:.2e}", flush=True)
        step += 1
    train_seconds = time.time() - t0

    # Save in bf16; the final validation loss is measured on exactly the saved weights.
    model = model.to(torch.bfloat16)
    model.save_pretrained(OUT)
    model = transformers.DeepseekV2ForCausalLM.from_pretrained(OUT, torch_dtype=torch.float32, attn_implementation="eager").eval()
    final_val = val_loss()
    print(f"final validation loss {final_val:.4f} (bf16 weights, f32 compute)", flush=True)

    prompts = {
        "def": "def fibonacci(n):\n",
        "import": "import os\nimport sys\n\n\ndef main():\n",
        "class": "class Stack:\n    def __init__(self):\n",
        "fim": FIM_BEGIN + "def add(a, b):\n    " + FIM_HOLE + "\n\n\ndef sub(a, b):\n    return a - b\n" + FIM_END,
    }
    gens = {}
    for name, p in prompts.items():
        ids = [bos] + tok.encode(p).ids
        with torch.no_grad():
            g = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=40,
                               do_sample=False, eos_token_id=None, pad_token_id=eos, output_logits=True, return_dict_in_generate=True)
        new = g.sequences[0, len(ids):].tolist()
        top2 = torch.topk(torch.stack([l[0] for l in g.logits]).float(), 2, dim=-1).values
        gens[name] = {"prompt": p, "prompt_ids": ids, "generated_ids": new, "text": tok.decode(new),
                      "min_top1_top2_gap": float((top2[:, 0] - top2[:, 1]).min())}
        print(f"--- {name}\n{p}{tok.decode(new)}", flush=True)

    with open(os.path.join(OUT, "training.json"), "w") as f:
        json.dump({"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                   "parameters": n_params, "steps": step, "batch": batch, "seq_len": SEQ, "train_seconds": train_seconds,
                   "threads": args.threads, "train_files": len(train_files), "val_files": len(val_files),
                   "final_val_loss": final_val, "val_windows": val_windows, "log": log}, f)
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"generations": gens}, f, ensure_ascii=False, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(log["step"], log["train_loss"], label="train (EMA)")
    ax.plot(log["val_step"], log["val_loss"], "o-", label="validation")
    ax.set_xlabel("step"); ax.set_ylabel("cross-entropy (nats/token)"); ax.set_title("deepseek-coder-nano")
    ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(os.path.join(OUT, "loss.png"), dpi=100)


if __name__ == "__main__":
    main()
