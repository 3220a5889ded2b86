#!/usr/bin/env bash
# Side-by-side decode/prefill benchmark: deepseek-rs vs llama.cpp (and optionally HF transformers)
# on the same synthetic DeepSeek-V2-Lite checkpoint (8 layers, bf16), in one run.
#
#   scripts/bench_vs_llamacpp.sh [WORKDIR]        (default WORKDIR: /tmp/deepseek-rs-bench)
#
# llama.cpp comes from the PyPI sdist of llama-cpp-python (vendor/llama.cpp), built in WORKDIR;
# nothing of it enters the repo. Needs a C++ compiler and python3 with pip (cmake comes from
# PyPI where the machine has none). llama.cpp reads the GGUF files our `deepseek quantize` writes
# (bf16 included), so no converter (and no torch) is needed.
# Env: LAYERS (8), PP (512), TG (128), REPS (3), THREADS (all cores), DEPTHS ("0"), HF=1 to add
# transformers' decode (installs torch), TYPES ("bf16 q8_0 q4_k"): quantized types are written by
# `deepseek quantize` from the same checkpoint, and both engines run that same GGUF file;
# upper-case names (Q4_K_M, Q5_K_M, Q3_K_M, Q2_K, any llama-quantize file type) are written by
# llama.cpp's own llama-quantize from the bf16 GGUF, the mixes users download; `bf16-act` runs
# our bf16 checkpoint with --bf16-activations (llama.cpp's rounding of the activations; its
# own bf16 row is the `bf16` one). OURS_FLAGS adds flags to every deepseek-rs run (say
# `--cache-type bf16`). The i-quants (IQ2_XXS, IQ3_XXS, …; ours: iq2_xxs, iq3_xxs) are
# quantized with an importance matrix that `deepseek imatrix` makes over README.md and
# BENCHMARKS.md (4 chunks of 512 tokens), the same file for both quantizers.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/deepseek-rs-bench}
LAYERS=${LAYERS:-8}; PP=${PP:-512}; TG=${TG:-128}; REPS=${REPS:-3}; THREADS=${THREADS:-$(nproc)}
DEPTHS=${DEPTHS:-0}
mkdir -p "$WORK"
cd "$ROOT"
cargo build --release -q
DS="$ROOT/target/release/deepseek"
python3 scripts/fetch_tokenizers.py

# 1. llama.cpp from the llama-cpp-python sdist.
LCPP="$WORK/llama.cpp"
if [ ! -x "$LCPP/build/bin/llama-bench" ]; then
  CMAKE=cmake
  if ! command -v cmake >/dev/null; then
    # Not every machine has cmake; PyPI's wheel carries it.
    [ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
    "$WORK/venv/bin/pip" install -q cmake
    CMAKE="$WORK/venv/bin/cmake"
  fi
  (cd "$WORK" && python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d sdist llama-cpp-python)
  rm -rf "$WORK/src" && mkdir -p "$WORK/src" && tar xzf "$WORK"/sdist/llama_cpp_python-*.tar.gz -C "$WORK/src"
  rm -rf "$LCPP" && cp -r "$WORK"/src/llama_cpp_python-*/vendor/llama.cpp "$LCPP"
  "$CMAKE" -S "$LCPP" -B "$LCPP/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  "$CMAKE" --build "$LCPP/build" -j "$(nproc)" --target llama-bench llama-quantize >/dev/null
fi
LCPP_VERSION=$(cd "$WORK" && ls src | head -1)

# 2. The synthetic model, in HF layout with the real DeepSeek-V2 tokenizer.
MODEL="$WORK/v2lite-${LAYERS}l-bf16"
[ -f "$MODEL/config.json" ] || "$DS" synth --preset v2-lite --layers "$LAYERS" --dtype bf16 --tokenizer assets/tokenizers/deepseek-v2 --out "$MODEL"

# 3. GGUF for llama.cpp (bf16, no re-quantization), written by our own GGUF writer.
GGUF="$WORK/v2lite-${LAYERS}l-bf16.gguf"
[ -f "$GGUF" ] || "$DS" quantize --model "$MODEL" --type bf16 --out "$GGUF"

OUT="$WORK/results.jsonl"; : > "$OUT"
# llama.cpp's CPU repacking aborts on these deepseek2 files in the vendored version
# (GGML_ASSERT(*cur_backend_id != -1), also on files llama-quantize makes); retry without it.
llama_bench() {
  local out
  # (an abort prints a debugger backtrace on stdout: keep only the JSON lines)
  out=$("$LCPP/build/bin/llama-bench" "$@" -o jsonl 2>/dev/null | grep '^{') || true
  if [ -z "$out" ]; then
    echo "  (llama.cpp: retrying with --repack 0)" >&2
    out=$("$LCPP/build/bin/llama-bench" "$@" --repack 0 -o jsonl 2>/dev/null | grep '^{') || true
  fi
  printf '%s\n' "$out"
}
# The i-quants need an importance matrix (llama-quantize refuses IQ2 types without one).
imatrix() {
  local f="$WORK/imatrix-${LAYERS}l.gguf"
  if [ ! -f "$f" ]; then
    cat README.md BENCHMARKS.md > "$WORK/calib.txt"
    "$DS" imatrix --model "$GGUF" --text "$WORK/calib.txt" --chunks 4 -o "$f" >&2
  fi
  echo "$f"
}
for T in ${TYPES:-bf16 q8_0 q4_k}; do
  IM=()
  if [[ "$T" =~ ^[Ii][Qq][1-3] ]]; then IM=(--imatrix "$(imatrix)"); fi
  FLAGS=${OURS_FLAGS:-}
  if [ "$T" = bf16 ]; then
    OURS="$MODEL"; THEIRS="$GGUF"
  elif [ "$T" = bf16-act ]; then
    OURS="$MODEL"; THEIRS=""; FLAGS="$FLAGS --bf16-activations"
  elif [[ "$T" =~ ^[A-Z] ]]; then
    OURS="$WORK/v2lite-${LAYERS}l-$T.gguf"; THEIRS="$OURS"
    [ -f "$OURS" ] || "$LCPP/build/bin/llama-quantize" "${IM[@]}" "$GGUF" "$OURS" "$T" >/dev/null 2>&1
  else
    OURS="$WORK/v2lite-${LAYERS}l-$T.gguf"; THEIRS="$OURS"
    [ -f "$OURS" ] || "$DS" quantize --model "$MODEL" --type "$T" "${IM[@]}" --out "$OURS"
  fi
  for D in $DEPTHS; do
    echo "deepseek-rs $T depth $D ..." >&2
    # shellcheck disable=SC2086
    "$DS" $FLAGS bench --model "$OURS" -p "$PP" -n "$TG" --depth "$D" -r "$REPS" --threads "$THREADS" --json | sed "s/^/{\"engine\":\"deepseek-rs\",\"type\":\"$T\",\"result\":/; s/\$/}/" >> "$OUT"
    [ -n "$THEIRS" ] || continue
    echo "llama.cpp $T depth $D ..." >&2
    llama_bench -m "$THEIRS" -p "$PP" -n "$TG" -d "$D" -r "$REPS" -t "$THREADS" \
      | grep . | sed "s/^/{\"engine\":\"llama.cpp\",\"type\":\"$T\",\"result\":/; s/\$/}/" >> "$OUT"
  done
done
if [ "${HF:-0}" = 1 ]; then
  echo "transformers decode ..." >&2
  [ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
  "$WORK/venv/bin/pip" install -q numpy "transformers<5" safetensors torch
  "$WORK/venv/bin/python" "$ROOT/scripts/hf_decode_speed.py" "$MODEL" "${HF_TG:-32}" "$THREADS" | sed "s/^/{\"engine\":\"transformers\",\"result\":/; s/\$/}/" >> "$OUT"
fi

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
python3 - "$OUT" "$LCPP_VERSION" "$CPU" "$THREADS" <<'PY'
import datetime, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [r["result"] for r in rows if r["engine"] == "deepseek-rs"]
tier = ours[0].get("isa", "?") if ours else "?"
bw = min(x["bandwidth_gb_s"] for x in ours) if ours else 0
print(f"{sys.argv[3]}, {sys.argv[4]} threads, kernels at the {tier} tier, probe {bw:.1f} GB/s, "
      f"{datetime.date.today()}; llama.cpp from {sys.argv[2]}\n")
print("| engine | type | test | depth | tokens/s | GB/s (decode) | share of probe bandwidth | peak RSS ÷ (weights + cache) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    e, x, t = r["engine"], r["result"], r.get("type", "bf16")
    if e == "deepseek-rs":
        if x["prompt_tokens"] and x["depth"] == 0:  # our prefill test always starts empty
            print(f"| deepseek-rs | {t} | pp{x['prompt_tokens']} | {x['depth']} | {x['prefill_tok_s']:.1f} ({x['prefill_tok_s_min']:.1f}–{x['prefill_tok_s_max']:.1f}) | | | |")
        rss = f"{x['peak_rss_ratio']:.3f}" if x.get("peak_rss_ratio") else ""
        print(f"| deepseek-rs | {t} | tg{x['gen_tokens']} | {x['depth']} | {x['decode_tok_s']:.2f} ({x['decode_tok_s_min']:.2f}–{x['decode_tok_s_max']:.2f}) | {x['decode_gb_s']:.1f} | {100*x['bandwidth_share']:.0f}% of {x['bandwidth_gb_s']:.1f} GB/s | {rss} |")
        bw, active = x["bandwidth_gb_s"], x["active_weight_bytes"]
    elif e == "llama.cpp":
        test = f"pp{x['n_prompt']}" if x["n_prompt"] else f"tg{x['n_gen']}"
        # Weights only, sized as our engine reads them (for repacked/widened types that is what
        # we read, not what llama.cpp reads); at depth > 0 llama.cpp also reads its KV cache.
        gbs = "" if x["n_prompt"] or x.get("n_depth", 0) else f"{x['avg_ts'] * active / 1e9:.1f}"
        print(f"| llama.cpp | {t} | {test} | {x.get('n_depth', 0)} | {x['avg_ts']:.2f} ± {x['stddev_ts']:.2f} | {gbs} | | |")
    else:
        print(f"| transformers | bf16 | tg{x['gen_tokens']} | 0 | {x['decode_tok_s']:.2f} | {x['decode_tok_s'] * active / 1e9:.1f} | | |")
PY
