"""Writes tests/fixtures/quant/vectors.json: test vectors for our GGUF block formats, made with the
`gguf` package's numpy (de)quantizers (the reference llama.cpp ships with its converter).

For types gguf can quantize (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) the vectors hold the input floats, the
blocks gguf made from them and their dequantization; for the K-quants, IQ4_NL/IQ4_XS and the
lattice i-quants (IQ1_S … IQ3_S), which gguf only dequantizes, random but valid blocks and their
dequantization.

    pip install gguf==0.19.0 numpy; python scripts/make_quant_vectors.py
"""
import json, pathlib
import numpy as np
from gguf import quants, GGMLQuantizationType as T

rng = np.random.default_rng(1234)
out = {}
for name in ["Q8_0", "Q4_0", "Q4_1", "Q5_0"]:
    t = getattr(T, name)
    x = (rng.standard_normal(32 * 4) * np.array([0.02, 1.0, 3.0, 1e-3]).repeat(32)).astype(np.float32)
    x[5] = 0.0
    q = quants.quantize(x.reshape(1, -1), t)
    deq = quants.dequantize(q, t).reshape(-1)
    out[name] = {"input": x.tolist(), "blocks": q.reshape(-1).tobytes().hex(), "dequant": deq.tolist()}

def f16(v):
    return np.array([v], dtype=np.float16).tobytes()

def kblock(name):
    if name == "Q4_K":
        return f16(rng.uniform(0.001, 0.05)) + f16(rng.uniform(0.001, 0.05)) + rng.integers(0, 256, 12 + 128, dtype=np.uint8).tobytes()
    if name == "Q5_K":
        return f16(rng.uniform(0.001, 0.05)) + f16(rng.uniform(0.001, 0.05)) + rng.integers(0, 256, 12 + 32 + 128, dtype=np.uint8).tobytes()
    if name == "Q6_K":
        return rng.integers(0, 256, 128 + 64 + 16, dtype=np.uint8).tobytes() + f16(rng.uniform(0.0005, 0.01))
    raise ValueError(name)

for name in ["Q4_K", "Q5_K", "Q6_K"]:
    t = getattr(T, name)
    raw = b"".join(kblock(name) for _ in range(3))
    q = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    deq = quants.dequantize(q, t).reshape(-1)
    out[name] = {"blocks": raw.hex(), "dequant": deq.tolist()}

# Added later, after the others so that their vectors stay as they were.
for name in ["Q5_1"]:
    t = getattr(T, name)
    x = (rng.standard_normal(32 * 4) * np.array([0.02, 1.0, 3.0, 1e-3]).repeat(32)).astype(np.float32)
    x[5] = 0.0
    x[40:72] += 2.5  # a block that does not straddle zero
    q = quants.quantize(x.reshape(1, -1), t)
    deq = quants.dequantize(q, t).reshape(-1)
    out[name] = {"input": x.tolist(), "blocks": q.reshape(-1).tobytes().hex(), "dequant": deq.tolist()}

def kblock_low(name):
    if name == "Q2_K":
        return rng.integers(0, 256, 16 + 64, dtype=np.uint8).tobytes() + f16(rng.uniform(0.001, 0.05)) + f16(rng.uniform(0.001, 0.05))
    if name == "Q3_K":
        return rng.integers(0, 256, 32 + 64 + 12, dtype=np.uint8).tobytes() + f16(rng.uniform(0.0005, 0.01))
    raise ValueError(name)

for name in ["Q2_K", "Q3_K"]:
    t = getattr(T, name)
    raw = b"".join(kblock_low(name) for _ in range(3))
    q = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    deq = quants.dequantize(q, t).reshape(-1)
    out[name] = {"blocks": raw.hex(), "dequant": deq.tolist()}

def iq4_block(name):
    if name == "IQ4_NL":
        return f16(rng.uniform(0.0005, 0.01)) + rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    if name == "IQ4_XS":
        return f16(rng.uniform(0.0005, 0.01)) + rng.integers(0, 256, 2 + 4 + 128, dtype=np.uint8).tobytes()
    raise ValueError(name)

for name in ["IQ4_NL", "IQ4_XS"]:
    t = getattr(T, name)
    raw = b"".join(iq4_block(name) for _ in range(3 if name == "IQ4_XS" else 6))
    q = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    deq = quants.dequantize(q, t).reshape(-1)
    out[name] = {"blocks": raw.hex(), "dequant": deq.tolist()}

# The lattice i-quants: random but valid blocks; IQ1_M keeps its f16 scale in the
# top nibbles of its four scale words.
def lattice_block(name):
    rest = {"IQ2_XXS": 64, "IQ2_XS": 72, "IQ2_S": 80, "IQ3_XXS": 96, "IQ3_S": 108, "IQ1_S": 48}
    if name in rest:
        return f16(rng.uniform(0.0005, 0.01)) + rng.integers(0, 256, rest[name], dtype=np.uint8).tobytes()
    if name == "IQ1_M":
        d = int(np.frombuffer(f16(rng.uniform(0.0005, 0.01)), dtype=np.uint16)[0])
        low = rng.integers(0, 1 << 12, 4, dtype=np.uint16)
        words = [int(low[k]) | (((d >> (4 * k)) & 0xF) << 12) for k in range(4)]
        return rng.integers(0, 256, 48, dtype=np.uint8).tobytes() + np.array(words, dtype=np.uint16).tobytes()
    raise ValueError(name)

for name in ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]:
    t = getattr(T, name)
    raw = b"".join(lattice_block(name) for _ in range(2))
    q = np.frombuffer(raw, dtype=np.uint8).reshape(1, -1)
    deq = quants.dequantize(q, t).reshape(-1)
    out[name] = {"blocks": raw.hex(), "dequant": deq.tolist()}

path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/quant/vectors.json"
path.write_text(json.dumps(out))
print("wrote", path, path.stat().st_size, "bytes")
