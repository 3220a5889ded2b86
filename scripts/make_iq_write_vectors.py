"""Writes tests/fixtures/quant/iq_write.json: what llama.cpp's own quantizer (ggml_quantize_chunk
in libggml-base, built from the llama-cpp-python sdist by scripts/build_llamacpp.sh) makes of a
few rows for the types this engine writes with llama.cpp's searches (IQ1_S, IQ1_M, IQ2_XXS,
IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_NL, IQ4_XS, Q2_K … Q6_K, Q4_0 … Q5_1), with an importance matrix and
(all but IQ1_S, IQ2_XXS and IQ2_XS) without one. The Rust tests require our blocks to be
byte-identical.

    scripts/build_llamacpp.sh WORK
    WORK/venv/bin/python scripts/make_iq_write_vectors.py WORK
"""
import ctypes, json, pathlib, sys
import numpy as np

work = pathlib.Path(sys.argv[1])
ggml = ctypes.CDLL(str(work / "llama.cpp/build/bin/libggml-base.so"))
ggml.ggml_quantize_chunk.restype = ctypes.c_size_t
ggml.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                     ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
TYPES = {"IQ1_S": (19, 50), "IQ1_M": (29, 56), "IQ2_XXS": (16, 66), "IQ2_XS": (17, 74), "IQ2_S": (22, 82), "IQ3_XXS": (18, 98),
         "IQ3_S": (21, 110), "IQ4_NL": (20, 18), "IQ4_XS": (23, 136),
         "Q2_K": (10, 84), "Q3_K": (11, 110), "Q4_K": (12, 144), "Q5_K": (13, 176), "Q6_K": (14, 210),
         "Q4_0": (2, 18), "Q4_1": (3, 20), "Q5_0": (6, 22), "Q5_1": (7, 24)}

rng = np.random.default_rng(77)
rows, cols = 3, 512
# Rows of different characters: gaussian, heavy-tailed with outliers, and one with a zero
# sub-block (the "all zero" path), at weight-like magnitudes.
x = np.stack([
    rng.standard_normal(cols) * 0.02,
    rng.standard_t(3, cols) * 0.01,
    np.concatenate([np.zeros(32), rng.standard_normal(cols - 32) * 0.05]),
]).astype(np.float32)
imatrix = (rng.gamma(1.0, 1.0, cols) + 1e-3).astype(np.float32)

out = {"rows": rows, "cols": cols, "input": x.ravel().tobytes().hex(),
       "imatrix": imatrix.tobytes().hex()}
for name, (tid, bb) in TYPES.items():
    for weighted in (True, False):
        if name in ("IQ1_S", "IQ2_XXS", "IQ2_XS") and not weighted:
            continue  # llama.cpp asserts without an importance matrix
        per = 32 if name in ("IQ4_NL", "Q4_0", "Q4_1", "Q5_0", "Q5_1") else 256
        dst = np.zeros(rows * cols // per * bb, dtype=np.uint8)
        n = ggml.ggml_quantize_chunk(tid, x.ctypes.data, dst.ctypes.data, 0, rows, cols,
                                     imatrix.ctypes.data if weighted else None)
        assert n == dst.size
        out[f"{name}{'' if weighted else '_plain'}"] = dst.tobytes().hex()
path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/quant/iq_write.json"
path.write_text(json.dumps(out, indent=1) + "\n")
print(f"wrote {path}")
