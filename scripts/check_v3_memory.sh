#!/usr/bin/env bash
# A DeepSeek-V3-shaped model at an IQ2 mix, memory-mapped: `synth --preset v3 --layers 4`
# (hidden 7168, 256 routed experts of 2048, the first three layers dense; no MTP module, which
# would add another 11B parameters), quantized with llama-quantize's IQ2_M mix (`-t iq2_s`,
# which needs no importance matrix), then `info` (bits per weight of the mix) and `bench` with a
# 512-token prefill, which routes to every expert: peak RSS against weights + cache.
# Needs ~36 GB of disk in WORK (30 GB of bf16, deleted at the end, and the 5.4 GB file) and
# about 50 minutes on 2 cores (the quantization).  Usage: scripts/check_v3_memory.sh [WORK]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/deepseek-rs-v3}
cd "$ROOT"
cargo build --release -q -p deepseek-cli
DS="$ROOT/target/release/deepseek"
mkdir -p "$WORK"
free_gb=$(df -Pk "$WORK" | awk 'NR==2 {print int($4 / 1048576)}')
if [ ! -f "$WORK/v3-4l-iq2_s.gguf" ] && [ "$free_gb" -lt 36 ]; then
  echo "check_v3_memory: $WORK has ${free_gb} GB free; this needs about 36 GB" >&2
  exit 2
fi
if [ ! -f "$WORK/v3-4l-iq2_s.gguf" ]; then
  "$DS" synth --preset v3 --layers 4 --mtp 0 --out "$WORK/v3-4l"
  "$DS" quantize -m "$WORK/v3-4l" -t iq2_s -o "$WORK/v3-4l-iq2_s.gguf"
  rm -rf "$WORK/v3-4l"
fi
"$DS" info --model "$WORK/v3-4l-iq2_s.gguf" | grep -E 'parameters|dtype|experts'
"$DS" bench --model "$WORK/v3-4l-iq2_s.gguf" -p 512 -n 16 -r 1 | grep -E 'prefill|decode|memory'
