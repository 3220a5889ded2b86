#!/usr/bin/env bash
# Builds llama.cpp (llama-quantize, llama-imatrix, llama-completion) from the llama-cpp-python
# sdist into WORK/llama.cpp, once, with a venv holding cmake and gguf-py in WORK/venv; nothing of
# it enters the repo. Used by the interop checks.  Usage: scripts/build_llamacpp.sh WORK
set -euo pipefail
WORK=$1
LCPP="$WORK/llama.cpp"
mkdir -p "$WORK"
[ -x "$WORK/venv/bin/python" ] || python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -c "import cmake, gguf, numpy" 2>/dev/null ||
  "$WORK/venv/bin/pip" install -q cmake gguf==0.19.0 numpy
if [ ! -x "$LCPP/build/bin/llama-completion" ]; then
  (cd "$WORK" && python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d sdist llama-cpp-python)
  rm -rf "$WORK/src" && mkdir -p "$WORK/src" && tar xzf "$WORK"/sdist/llama_cpp_python-*.tar.gz -C "$WORK/src"
  rm -rf "$LCPP" && cp -r "$WORK"/src/llama_cpp_python-*/vendor/llama.cpp "$LCPP"
  "$WORK/venv/bin/cmake" -S "$LCPP" -B "$LCPP/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  "$WORK/venv/bin/cmake" --build "$LCPP/build" -j "$(nproc)" \
    --target llama-quantize llama-imatrix llama-completion >/dev/null
fi
