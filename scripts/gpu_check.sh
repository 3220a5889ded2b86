#!/usr/bin/env bash
# The GPU suite, for a machine with an NVIDIA GPU and no Rust toolchain, in two halves:
#
#   scripts/gpu_check.sh pack          where cargo is: builds the GPU tests and the CLI in release
#                                      mode and packs them, stripped, into target/gpu-check/
#   scripts/gpu_check.sh run [--bench] on the GPU machine, from the repository root, with
#                                      target/gpu-check there: every GPU test with
#                                      DEEPSEEK_REQUIRE_GPU=1 (kernels, NVRTC compile for this
#                                      GPU, fixture parity of the GPU path), `bench --device cuda`
#                                      on the bundled model; with --bench also a V2-Lite-shaped
#                                      checkpoint (synth, 8 layers) at pp4096 and batch 1/32 decode
#
# Logs go to $OUT (the device tool's folder) or target/gpu-check/logs. CUDA's libraries are
# looked for on the library path, then in Python's site-packages (PyTorch's nvidia-* wheels) and
# /usr/local/cuda*.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=target/gpu-check

pack() {
  rm -rf "$PACK" && mkdir -p "$PACK/bin"
  cargo build --release --locked -p deepseek-cli
  cp target/release/deepseek "$PACK/bin/deepseek"
  # The test binaries: cargo names them by hash; its JSON messages say which is which.
  cargo test --release --locked --no-run -p deepseek-cuda -p deepseek-model --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("kernels", "nvrtc", "gpu_parity"):
        shutil.copy(m["executable"], sys.argv[1] + "/bin/" + m["target"]["name"])
' "$PACK"
  strip "$PACK"/bin/*
  # The independent fixtures, when this checkout has them (../shared does not travel).
  if [ -d ../shared/fixtures ]; then
    mkdir -p "$PACK/shared-fixtures"
    for f in ../shared/fixtures/*/; do
      n=$(basename "$f")
      mkdir -p "$PACK/shared-fixtures/$n" && cp "$f"/*.json "$f"/*.safetensors "$PACK/shared-fixtures/$n/" 2>/dev/null || true
    done
  fi
  tar -C "$PACK" -cJf "$PACK.tar.xz" . && rm -rf "$PACK" && mkdir -p "$PACK" && mv "$PACK.tar.xz" "$PACK/"
  du -sh "$PACK"
}

find_cuda_libs() {
  local dirs=() d
  for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda*/lib64 \
           $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
    [ -d "$d" ] || continue
    while IFS= read -r f; do dirs+=("$(dirname "$f")"); done < <(
      find "$d" -maxdepth 4 \( -name 'libcuda.so.1' -o -name 'libnvrtc.so.13' -o -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \) 2>/dev/null)
  done
  printf '%s\n' "${dirs[@]}" | sort -u | paste -sd:
}

run() {
  local logs=${OUT:-$PACK/logs}
  mkdir -p "$logs"
  [ -f "$PACK/gpu-check.tar.xz" ] && tar -C "$PACK" -xJf "$PACK/gpu-check.tar.xz"
  export LD_LIBRARY_PATH="$(find_cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export DEEPSEEK_REQUIRE_GPU=1 DEEPSEEK_REPO="$PWD" RUST_BACKTRACE=1
  [ -d "$PACK/shared-fixtures" ] && export DEEPSEEK_SHARED_FIXTURES="$PWD/$PACK/shared-fixtures"
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee "$logs/env.txt"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$logs/env.txt" || true
  local rc=0
  for t in nvrtc kernels gpu_parity; do
    echo "== $t"
    "$PACK/bin/$t" --test-threads 1 --nocapture 2>&1 | tee "$logs/$t.log" | grep -E "^test |SKIPPED|panicked|test result|ptxas.*(Used|spill)" || true
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  done
  echo "== bench (bundled model)"
  "$PACK/bin/deepseek" --device cuda bench -p 512 -n 64 --batch 8 -r 3 2>&1 | tee "$logs/bench-nano.log" || rc=1
  if [ "${1:-}" = "--bench" ]; then
    echo "== bench (V2-Lite shape, 8 layers, bf16)"
    "$PACK/bin/deepseek" synth --preset v2-lite --layers 8 --out /tmp/v2l8 2>&1 | tail -2
    "$PACK/bin/deepseek" --device cuda bench --model /tmp/v2l8 -p 4096 -n 64 --batch 32 -r 3 2>&1 | tee "$logs/bench-v2l8.log" || rc=1
  fi
  return $rc
}

case "${1:-}" in
  pack) pack ;;
  run) shift; run "$@" ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
