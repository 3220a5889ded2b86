#!/usr/bin/env bash
# Expert parallelism over MPI: builds `deepseek` with its `mpi` feature (Open MPI through the
# `mpi` crate), checks that `mpirun -np 2` and `-np 4` (oversubscribed where the cores are
# fewer) give the single process's logits and greedy tokens on every MoE fixture and the
# bundled model (scripts/check_expert_parallel.py), and runs the server tests with the server
# under `mpirun -np 2` (scripts/mpi_deepseek.sh). Installs Debian's libopenmpi-dev,
# openmpi-bin and libclang-dev where missing; where they cannot be installed it says so and
# exits 0.
#
# Usage: scripts/test_mpi.sh   (with target/py-serve made, as scripts/test.sh makes it)
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "test_mpi: SKIPPED ($1)"; exit 0; }

have_mpi() {
  command -v mpirun >/dev/null && command -v mpicc >/dev/null &&
    ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1
}
if ! have_mpi; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  pkgs="libopenmpi-dev openmpi-bin libclang-dev"
  export DEBIAN_FRONTEND=noninteractive
  { $sudo_cmd apt-get install -y -q $pkgs >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update -q >/dev/null 2>&1 &&
      $sudo_cmd apt-get install -y -q $pkgs >/dev/null 2>&1; }; } ||
    skip "apt cannot install $pkgs"
  have_mpi || skip "no mpirun, mpicc or libclang after installing $pkgs"
fi
# Open MPI refuses to start as root unless told it is meant.
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

if rustup component list --installed 2>/dev/null | grep -q clippy; then
  cargo clippy --release -p deepseek-cli --features mpi --all-targets --locked -- -D warnings
fi
cargo build --release --locked -p deepseek-cli --features mpi
python3 scripts/check_expert_parallel.py target/release/deepseek
DEEPSEEK_BIN=scripts/mpi_deepseek.sh target/py-serve/bin/python scripts/test_server.py
