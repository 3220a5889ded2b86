#!/usr/bin/env python3
"""Decode speed of HF transformers (torch, CPU, float32 compute on the checkpoint's weights):
the third column of scripts/bench_vs_llamacpp.sh. Prints one JSON line.

    python scripts/hf_decode_speed.py MODEL_DIR [TOKENS] [THREADS]
"""
import json
import sys
import time

import torch
import transformers

model_dir = sys.argv[1]
tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 32
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16).eval()
ids = torch.tensor([[1, 2, 3, 4]])
with torch.no_grad():
    model.generate(ids, max_new_tokens=2, do_sample=False)
    t = time.time()
    out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    secs = time.time() - t
print(json.dumps({"gen_tokens": tokens, "decode_tok_s": tokens / secs, "dtype": "bf16"}))
