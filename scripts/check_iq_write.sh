#!/usr/bin/env bash
# The lattice i-quants `deepseek quantize` writes (IQ1_S, IQ1_M, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS,
# IQ3_S)
# against llama-quantize's presets of the same tensor type (IQ2_S's is llama.cpp's IQ2_M), on
# the bundled model with one importance matrix (`deepseek imatrix` over the repo's Python
# scripts, 40 chunks of 512 tokens) given to both: the tensor types of the two files (the
# preset mixes), the bytes of every tensor both wrote in the same type (i-quant, K-quant and
# 32-wide blocks all use llama.cpp's searches), the mean KL divergence of each file's next-token
# distribution from the bf16 model's over the model card's first 1000 tokens
# (scripts/quant_logit_error.py), and llama.cpp's greedy text on our file beside ours.
# llama.cpp is built by scripts/build_llamacpp.sh in WORK.  Usage: scripts/check_iq_write.sh [WORK]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/deepseek-rs-iq}
cd "$ROOT"
cargo build --release -q
DS="$ROOT/target/release/deepseek"
scripts/build_llamacpp.sh "$WORK"
BIN="$WORK/llama.cpp/build/bin"
cat scripts/*.py > "$WORK/iq-calib.txt"
"$DS" imatrix --text "$WORK/iq-calib.txt" --chunks 40 -o "$WORK/iq-im.gguf" >/dev/null
"$DS" quantize -t f32 -o "$WORK/nano-f32.gguf" >/dev/null
for T in IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S; do
  t=$(echo "$T" | tr 'A-Z' 'a-z')
  PRESET=$T; [ "$T" = IQ2_S ] && PRESET=IQ2_M
  "$DS" quantize -t "$t" --imatrix "$WORK/iq-im.gguf" -o "$WORK/nano-$t-ours.gguf" 2>/dev/null
  "$BIN/llama-quantize" --imatrix "$WORK/iq-im.gguf" "$WORK/nano-f32.gguf" "$WORK/nano-$t-theirs.gguf" "$PRESET" >/dev/null 2>&1
  "$WORK/venv/bin/python" - "$WORK/nano-$t-ours.gguf" "$WORK/nano-$t-theirs.gguf" "$T" <<'PY'
import sys
import gguf
import numpy as np
a = {t.name: t for t in gguf.GGUFReader(sys.argv[1]).tensors}
b = {t.name: t for t in gguf.GGUFReader(sys.argv[2]).tensors}
want = sys.argv[3]
types = [(n, t.tensor_type.name, b[n].tensor_type.name) for n, t in a.items()
         if t.tensor_type != b[n].tensor_type]
same = [n for n, t in a.items() if t.tensor_type == b[n].tensor_type]
equal = [n for n in same if np.array_equal(np.asarray(a[n].data), np.asarray(b[n].data))]
iq = [n for n in same if a[n].tensor_type.name.startswith("IQ")]
print(f"{want}: {len(a)} tensors, types differ in {len(types)} {types[:2]}; "
      f"{len(equal)} of the {len(same)} tensors of the same type byte-identical "
      f"({sum(n in equal for n in iq)} of {len(iq)} i-quant); differing: "
      f"{[n for n in same if n not in equal][:4]}")
if types or len(equal) != len(same):
    sys.exit(f"{want}: our file differs from llama-quantize's")
PY
  for WHO in ours theirs; do
    printf '%s %s: ' "$T" "$WHO"
    python3 scripts/quant_logit_error.py --text models/deepseek-coder-nano/README.md --tokens 1000 \
      "$WORK/nano-$t-$WHO.gguf" | grep -v '^[0-9]* tokens' | tr '\n' ' '
    echo
  done
  ours=$("$DS" generate -m "$WORK/nano-$t-ours.gguf" --prompt 'def fibonacci(n):' -n 16 --json \
    | python3 -c "import json,sys; print(repr(json.load(sys.stdin)['text']))")
  theirs=$("$BIN/llama-completion" -m "$WORK/nano-$t-ours.gguf" -p 'def fibonacci(n):' -n 16 --temp 0 \
    -no-cnv --no-display-prompt </dev/null 2>/dev/null | python3 -c "import sys; print(repr(sys.stdin.read().rstrip(chr(10))))")
  echo "$T, our file: deepseek-rs $ours; llama.cpp $theirs"
done
