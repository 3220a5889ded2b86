#!/usr/bin/env bash
# llama.cpp's own 1-3-bit i-quant files, checked against llama.cpp's dequantization of them:
# SmolLM2-135M (assets/smollm2, scripts/fetch_smollm2.py) quantized by llama-quantize with an
# importance matrix to IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S; each file also
# rewritten to F32 by llama-quantize. deepseek-rs's logits on the i-quant file (f32 activations:
# DEEPSEEK_EXACT_ACTIVATIONS=1) must equal its logits on llama.cpp's F32 copy; with the default
# 8-bit activations they differ by the activations' rounding, reported. Also prints both
# engines' greedy text. llama.cpp is built from the llama-cpp-python sdist in WORK
# (scripts/build_llamacpp.sh; nothing of it enters the repo).  Usage: scripts/check_iq_files.sh [WORK]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/deepseek-rs-iq}
mkdir -p "$WORK"
cd "$ROOT"
cargo build --release -q
DS="$ROOT/target/release/deepseek"
python3 scripts/fetch_smollm2.py
MODEL="$ROOT/assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

LCPP="$WORK/llama.cpp"
BIN="$LCPP/build/bin"
scripts/build_llamacpp.sh "$WORK"

cat README.md BENCHMARKS.md > "$WORK/calib.txt"
[ -f "$WORK/imatrix.gguf" ] || "$BIN/llama-imatrix" -m "$MODEL" -f "$WORK/calib.txt" \
  -o "$WORK/imatrix.gguf" --chunks 8 -c 256 >/dev/null 2>&1
PROMPT="The capital of France is"
TEXT="The capital of France is Paris. The French language is spoken in many countries, and the city has a long history."
IDS=$("$DS" tokenize --model "$MODEL" --json "$TEXT" | python3 -c "import json,sys; print(','.join(map(str, json.load(sys.stdin)['ids'])))")
echo "type     MB    f32 activations vs llama.cpp's F32 copy | 8-bit activations: max |Δlogit|, top-1"
for T in IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S; do
  F="$WORK/smol-$T.gguf"
  [ -f "$F" ] || "$BIN/llama-quantize" --allow-requantize --imatrix "$WORK/imatrix.gguf" "$MODEL" "$F" "$T" >/dev/null 2>&1
  [ -f "$F.f32" ] || "$BIN/llama-quantize" --allow-requantize "$F" "$F.f32" F32 >/dev/null 2>&1
  "$DS" forward --model "$F.f32" --token-ids "$IDS" --out "$WORK/ref.safetensors" >/dev/null 2>&1
  DEEPSEEK_EXACT_ACTIVATIONS=1 "$DS" forward --model "$F" --token-ids "$IDS" --out "$WORK/exact.safetensors" >/dev/null 2>&1
  "$DS" forward --model "$F" --token-ids "$IDS" --out "$WORK/q8.safetensors" >/dev/null 2>&1
  "$WORK/venv/bin/python" - "$T" "$F" "$WORK" <<'PY'
import json, os, struct, sys
import numpy as np
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    m = next(v for k, v in h.items() if k != "__metadata__")
    a = np.frombuffer(b[8 + n + m["data_offsets"][0]:8 + n + m["data_offsets"][1]], dtype=np.float32)
    return a.reshape(-1, m["shape"][-1])
t, f, w = sys.argv[1:]
r, e, q = (load(f"{w}/{x}.safetensors") for x in ("ref", "exact", "q8"))
exact = np.abs(e - r).max()
top = np.mean(q.argmax(-1) == r.argmax(-1)) * 100
print(f"{t:8} {os.path.getsize(f) / 1e6:5.1f}  max |Δlogit| {exact:.1e} {'(identical)' if exact == 0 else ''}"
      f"{'':14} | {np.abs(q - r).max():.2f}, {top:.0f}% of {len(r)} positions")
if exact > 1e-4:
    sys.exit(f"{t}: the i-quant path does not reproduce llama.cpp's dequantization")
PY
  ours=$("$DS" generate --model "$F" --prompt "$PROMPT" -n 16 --json | python3 -c "import json,sys; print(repr(json.load(sys.stdin)['text']))")
  theirs=$("$BIN/llama-completion" -m "$F" -p "$PROMPT" -n 16 --temp 0 -no-cnv --no-display-prompt </dev/null 2>/dev/null \
    | sed 's/\[end of text\]//' | python3 -c "import sys; print(repr(sys.stdin.read().rstrip(chr(10))))")
  echo "         ours $ours"
  echo "         llama.cpp $theirs"
done
