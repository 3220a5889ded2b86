"""Independent reference for the SmolLM2 GGUF test: a plain numpy forward pass of the llama
architecture over the file's weights dequantized by the `gguf` package (llama.cpp's own Python
reader), with llama.cpp's interleaved ("normal") RoPE on the permuted Q/K rows as stored.

Writes tests/fixtures/smollm2_reference.json: the prompt's token ids, the logits of its last
position computed two ways — with f32 activations, and with activations rounded to 8 bits per
32 values before each quantized matmul as llama.cpp and our engine do (so the engine's own
arithmetic can be checked tightly and the rounding's effect reported) — and the greedy
continuation.

    pip install gguf==0.19.0 numpy; python scripts/smollm2_reference.py GGUF_FILE IDS...
"""
import json, sys, pathlib
import numpy as np
from gguf import GGUFReader, dequantize

path, ids = sys.argv[1], [int(x) for x in sys.argv[2:]]
r = GGUFReader(path)
f = lambda k: r.fields[k].contents()
T = {t.name: t for t in r.tensors}
def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float32)
    return a.reshape([int(d) for d in reversed(t.shape)]) if a.ndim == 1 and len(t.shape) > 1 else a

n_layer, n_head, n_kv = f("llama.block_count"), f("llama.attention.head_count"), f("llama.attention.head_count_kv")
eps, theta = f("llama.attention.layer_norm_rms_epsilon"), f("llama.rope.freq_base")
emb = W("token_embd.weight")
hid = emb.shape[1]
hd = hid // n_head
out_w = W("output.weight") if "output.weight" in T else emb

Q8_ACT = False

def q8(x):
    """Activations rounded to int8 per 32 values (scale amax/127, round half away from zero)."""
    if not Q8_ACT:
        return x
    b = x.reshape(-1, 32)
    d = np.abs(b).max(-1, keepdims=True) / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0).astype(np.float32)
    q = np.trunc(b * inv + np.copysign(0.5, b * inv))
    return (q * d).astype(np.float32).reshape(x.shape)

def mm(x, name_or_w):
    w = W(name_or_w) if isinstance(name_or_w, str) else name_or_w
    return q8(x) @ w.T

def rms(x, w):
    return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

def rope_normal(x, pos):  # x [n, heads, hd]; pairs (2i, 2i+1)
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.outer(pos, inv)  # [n, hd/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2].astype(np.float64), x[..., 1::2].astype(np.float64)
    y = np.empty(x.shape, dtype=np.float64)
    y[..., 0::2] = x0 * c - x1 * s
    y[..., 1::2] = x0 * s + x1 * c
    return y.astype(np.float32)

def forward(tokens):
    n = len(tokens)
    x = emb[tokens]
    pos = np.arange(n)
    mask = np.triu(np.full((n, n), -np.inf, dtype=np.float32), 1)
    for l in range(n_layer):
        p = f"blk.{l}."
        h = rms(x, W(p + "attn_norm.weight"))
        q = mm(h, p + "attn_q.weight").reshape(n, n_head, hd)
        k = mm(h, p + "attn_k.weight").reshape(n, n_kv, hd)
        v = mm(h, p + "attn_v.weight").reshape(n, n_kv, hd)
        q, k = rope_normal(q, pos), rope_normal(k, pos)
        rep = n_head // n_kv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        att = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", att, v).reshape(n, hid)
        x = x + mm(o, p + "attn_output.weight")
        h = rms(x, W(p + "ffn_norm.weight"))
        g, u = mm(h, p + "ffn_gate.weight"), mm(h, p + "ffn_up.weight")
        x = x + mm((g / (1 + np.exp(-g))) * u, p + "ffn_down.weight")
    return mm(rms(x, W("output_norm.weight")), out_w)

toks = list(ids)
logits = forward(toks)[-1]
Q8_ACT = True
logits_q8 = forward(toks)[-1]
Q8_ACT = False
greedy = []
for _ in range(4):
    nxt = int(np.argmax(forward(toks + greedy)[-1]))
    greedy.append(nxt)
out = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/smollm2_reference.json"
# The 64 largest logits and every 97th, to keep the file small.
keep = sorted(set(np.argsort(-logits)[:64].tolist()) | set(range(0, len(logits), 97)))
out.write_text(json.dumps({"gguf": pathlib.Path(path).name, "prompt_ids": ids, "greedy": greedy,
                           "vocab": len(logits), "logits_at": {str(i): round(float(logits[i]), 5) for i in keep},
                           "logits_at_q8_activations": {str(i): round(float(logits_q8[i]), 5) for i in keep}}))
print("wrote", out, "greedy", greedy, "top", int(np.argmax(logits)))
