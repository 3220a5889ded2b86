#!/usr/bin/env python3
"""The nano model's validation loss split by where each window comes from: the held-out files'
generated codec tables (which scripts/train_nano.py no longer trains on) and the rest. Checks that
the windows equal the model's training.json, so the figures are those of the model card.

    .venv/bin/python scripts/nano_val_split.py [MODEL_DIR]   # default models/deepseek-coder-nano
"""
import json
import os
import sys

import torch
import transformers
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_nano as tn  # noqa: E402

model_dir = sys.argv[1] if len(sys.argv) > 1 else tn.OUT
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
lib, files = tn.stdlib_files()
_, val_files = tn.split(files, lib)
bos, eos = tok.token_to_id(tn.BOS), tok.token_to_id(tn.EOS)
stream, from_table = [], []
for f in val_files:
    text = tn.read(f)
    ids = [bos] + tok.encode(text).ids + [eos]
    stream += ids
    from_table += [tn.generated_table(f, text)] * len(ids)
# The windows as train_nano.py cuts them.
stride = max(tn.SEQ + 1, len(stream) // tn.VAL_WINDOWS)
starts = [i * stride for i in range(tn.VAL_WINDOWS) if i * stride + tn.SEQ + 1 <= len(stream)]
windows = [stream[a:a + tn.SEQ + 1] for a in starts]
with open(os.path.join(model_dir, "training.json")) as fh:
    assert windows == json.load(fh)["val_windows"], "validation windows differ from training.json"
model = transformers.DeepseekV2ForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32,
                                                          attn_implementation="eager").eval()
sums = {True: [0.0, 0], False: [0.0, 0]}
with torch.no_grad():
    for a, w in zip(starts, windows):
        x = torch.tensor([w])
        nll = torch.nn.functional.cross_entropy(model(x[:, :-1]).logits[0].float(), x[0, 1:], reduction="sum").item()
        table = any(from_table[a:a + tn.SEQ + 1])
        sums[table][0] += nll
        sums[table][1] += tn.SEQ
total = sums[True][0] + sums[False][0]
print(f"all {len(windows)} windows {total / (len(windows) * tn.SEQ):.3f}; "
      f"{sums[True][1] // tn.SEQ} touching generated tables {sums[True][0] / max(1, sums[True][1]):.3f}; "
      f"the other {sums[False][1] // tn.SEQ} {sums[False][0] / max(1, sums[False][1]):.3f}")
