#!/usr/bin/env python3
"""How far a quantized model's logits sit from the unquantized model's, over one text.

    scripts/quant_logit_error.py [--deepseek BIN] [--model REF] [--text FILE] [--tokens N] QUANT.gguf

Runs `deepseek forward` on the reference model (default: the bundled one) and on the quantized
file over the first N tokens of FILE (default: up to 400 tokens of
crates/deepseek-engine/src/lib.rs),
then prints the mean and max |Δlogit|, the mean KL divergence of the quantized next-token
distribution from the reference's, and how often the greedy token agrees. Also runs the
quantized file with DEEPSEEK_EXACT_ACTIVATIONS=1 (f32 activations), which separates the weights'
rounding from the activations'. To compare two activation forms, run it with two builds
(--deepseek). Standard library only: the logits are read from the safetensors file directly.
"""
import argparse
import array
import json
import math
import os
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_logits(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header["logits"]
        assert meta["dtype"] == "F32", meta
        start, end = meta["data_offsets"]
        f.seek(8 + n + start)
        values = array.array("f")
        values.frombytes(f.read(end - start))
    if sys.byteorder != "little":
        values.byteswap()
    return meta["shape"], values


def forward(binary, model, ids, out, env=None):
    args = [binary, "forward", "--token-ids", ids, "--out", out]
    if model:
        args += ["-m", model]
    run = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env)
    if run.returncode != 0:
        sys.exit(f"{' '.join(args[:2])} on {model or 'the bundled model'} failed:\n{run.stderr}")
    return read_logits(out)


def log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def compare(shape, ref, got):
    tokens, vocab = shape
    total, worst, agree, kl = 0.0, 0.0, 0, 0.0
    for t in range(tokens):
        r = ref[t * vocab:(t + 1) * vocab]
        g = got[t * vocab:(t + 1) * vocab]
        for a, b in zip(r, g):
            d = abs(a - b)
            total += d
            worst = max(worst, d)
        agree += max(range(vocab), key=r.__getitem__) == max(range(vocab), key=g.__getitem__)
        lr, lg = log_softmax(r), log_softmax(g)
        kl += sum(math.exp(a) * (a - b) for a, b in zip(lr, lg))
    return total / (tokens * vocab), worst, agree / tokens, kl / tokens


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("quantized", help="the quantized GGUF file")
    p.add_argument("--deepseek", default=os.path.join(ROOT, "target/release/deepseek"))
    p.add_argument("--model", default=None, help="reference model (default: the bundled one)")
    p.add_argument("--text", default=os.path.join(ROOT, "crates/deepseek-engine/src/lib.rs"))
    p.add_argument("--tokens", type=int, default=400)
    a = p.parse_args()
    text = open(a.text).read()[:8 * a.tokens]
    tok = [a.deepseek, "tokenize", text] + (["-m", a.model] if a.model else [])
    run = subprocess.run(tok, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        sys.exit(f"tokenize failed:\n{run.stderr}")
    ids = ",".join(run.stdout.split()[: a.tokens])
    with tempfile.TemporaryDirectory() as tmp:
        shape, ref = forward(a.deepseek, a.model, ids, os.path.join(tmp, "ref.safetensors"))
        rows = [("8-bit activations", None), ("f32 activations", "1")]
        print(f"{shape[0]} tokens, vocab {shape[1]}, {a.quantized} vs {a.model or 'bundled model'}")
        for name, exact in rows:
            env = dict(os.environ)
            env.pop("DEEPSEEK_EXACT_ACTIVATIONS", None)
            if exact:
                env["DEEPSEEK_EXACT_ACTIVATIONS"] = exact
            _, got = forward(a.deepseek, a.quantized, ids, os.path.join(tmp, "q.safetensors"), env)
            mean, worst, agree, kl = compare(shape, ref, got)
            print(f"{name:>18}: mean |Δlogit| {mean:.4f}, max {worst:.3f}, KL {kl:.4f}, "
                  f"greedy agrees {100 * agree:.1f}%")


if __name__ == "__main__":
    main()
