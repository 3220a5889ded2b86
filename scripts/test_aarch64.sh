#!/usr/bin/env bash
# The kernels' NEON paths and the model's parity with the reference fixtures, on AArch64 under
# QEMU user-mode emulation (this project has no ARM machine). Installs what it needs: Rust's
# aarch64 standard library (rustup), a cross linker and qemu-user (apt). Where those cannot be
# installed it says so and exits 0, so the x86 test run does not depend on them.
#
# Runs at each AArch64 tier: QEMU's default CPU (Armv8.x with the dot-product instructions: the
# `sdot` quantized kernels, `neon-dot`), a Cortex-A53 (plain Armv8.0: NEON float kernels,
# scalar integer dots, `neon`), and `DEEPSEEK_ISA=scalar`.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "test_aarch64: SKIPPED ($1)"; exit 0; }

target=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >/dev/null 2>&1 || skip "rustup cannot install the $target standard library"
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  { $sudo_cmd apt-get install -y -q qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update -q >/dev/null 2>&1 &&
      $sudo_cmd apt-get install -y -q qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross >/dev/null 2>&1; }; } ||
    skip "apt cannot install qemu-user and the aarch64 cross compiler"
fi

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

if rustup component list --installed 2>/dev/null | grep -q clippy; then
  cargo clippy --release --locked --target "$target" -p deepseek-kernels --all-targets -- -D warnings
fi
# Each run names its tier: natively the kernel tests re-run themselves once per tier, but under
# QEMU user mode the test binary cannot start itself again, so here the script runs the tiers.
DEEPSEEK_ISA=neon-dot cargo test --release --locked --target "$target" -p deepseek-kernels -p deepseek-loader -p deepseek-model
DEEPSEEK_ISA=neon QEMU_CPU=cortex-a53 cargo test --release --locked --target "$target" -p deepseek-kernels
DEEPSEEK_ISA=scalar cargo test --release --locked --target "$target" -p deepseek-kernels
echo "test_aarch64: passed"
