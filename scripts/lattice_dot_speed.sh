#!/usr/bin/env bash
# The lattice i-quant dot products alone, one thread: ours (examples/lattice_dot_speed.rs, both
# activation forms) beside llama.cpp's `vec_dot` for the same types against its Q8_K activations
# (called through ctypes from libggml-cpu, built from the llama-cpp-python sdist by
# scripts/build_llamacpp.sh in WORK), on random valid blocks of 23-37 MB, ns per 256 values.
# Usage: scripts/lattice_dot_speed.sh [WORK]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/deepseek-rs-iq}
cd "$ROOT"
scripts/build_llamacpp.sh "$WORK"
cargo run --release -q -p deepseek-kernels --example lattice_dot_speed
"$WORK/venv/bin/python" - "$WORK/llama.cpp/build/bin" <<'PY'
import ctypes, sys, time
import numpy as np
b = sys.argv[1]
ctypes.CDLL(f"{b}/libggml-base.so", mode=ctypes.RTLD_GLOBAL)
cpu = ctypes.CDLL(f"{b}/libggml-cpu.so")
cpu.ggml_cpu_init()
class Traits(ctypes.Structure):
    _fields_ = [("from_float", ctypes.c_void_p), ("vec_dot", ctypes.c_void_p),
                ("vec_dot_type", ctypes.c_int), ("nrows", ctypes.c_int64)]
cpu.ggml_get_type_traits_cpu.restype = ctypes.POINTER(Traits)
FromFloat = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
VecDot = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                          ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
rng = np.random.default_rng(0)
n = 2048 * 1408 * 8  # as many values as the Rust example's rows
for name, tid, bb in [("iq2_xxs", 16, 66), ("iq2_xs", 17, 74), ("iq2_s", 22, 82),
                      ("iq3_xxs", 18, 98), ("iq3_s", 21, 110), ("iq1_s", 19, 50)]:
    tr = cpu.ggml_get_type_traits_cpu(tid).contents
    act = cpu.ggml_get_type_traits_cpu(tr.vec_dot_type).contents
    w = rng.integers(0, 256, n // 256 * bb, dtype=np.uint8)
    w.reshape(-1, bb)[:, :2] = np.frombuffer(np.float16(0.003).tobytes(), dtype=np.uint8)
    x = rng.uniform(-1, 1, n).astype(np.float32)
    q8 = np.zeros(n // 256 * 292, dtype=np.uint8)  # block_q8_K
    FromFloat(act.from_float)(x.ctypes.data, q8.ctypes.data, n)
    out = np.zeros(1, dtype=np.float32)
    dot = VecDot(tr.vec_dot)
    best = 1e9
    for _ in range(20):
        # One call over all the blocks as one long row (the same blocks and arithmetic as row
        # by row, without a Python call per row).
        t0 = time.perf_counter()
        dot(n, out.ctypes.data, 0, w.ctypes.data, 0, q8.ctypes.data, 0, 1)
        best = min(best, time.perf_counter() - t0)
    print(f"llama.cpp   {name:8} activations Q8_K   : {best * 1e9 / (n / 256):5.1f} ns per super-block")
PY
