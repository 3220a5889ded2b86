#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets: the GGUF and safetensors headers, config.json, the
# server's request bodies) for N seconds (default 60) with cargo-fuzz (libFuzzer) on nightly.
# Seeds the corpora with real files from the repo. A crash stops the script with the input
# saved under fuzz/artifacts/.
#
# usage: scripts/fuzz.sh [SECONDS] [--if-available]
#   --if-available: where there is no nightly toolchain (cargo-fuzz needs one), say so and
#   exit 0 instead of failing (scripts/test.sh uses this). cargo-fuzz itself is installed from
#   crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
optional=0
[ "${2:-}" = "--if-available" ] && optional=1

if ! cargo +nightly --version >/dev/null 2>&1; then
  if [ $optional = 1 ]; then
    echo "fuzz: skipped (no nightly toolchain: rustup toolchain install nightly)"
    exit 0
  fi
  echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)"; exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.1 --locked --quiet
fi

mkdir -p fuzz/corpus/safetensors_header fuzz/corpus/gguf_header fuzz/corpus/config_json \
  fuzz/corpus/request_body
# Headers only (first 64 KiB) keep the seeds small.
for f in tests/fixtures/*/model.safetensors models/*/model.safetensors; do
  [ -f "$f" ] && head -c 65536 "$f" > "fuzz/corpus/safetensors_header/$(basename "$(dirname "$f")")"
done
for f in tests/fixtures/*/config.json models/*/config.json; do
  [ -f "$f" ] && cp "$f" "fuzz/corpus/config_json/$(basename "$(dirname "$f")")"
done
if [ ! -s fuzz/corpus/gguf_header/nano ]; then
  tmp=$(mktemp -d)
  cargo run --release --quiet -- quantize -t q8_0 -o "$tmp/nano.gguf" >/dev/null
  head -c 65536 "$tmp/nano.gguf" > fuzz/corpus/gguf_header/nano
  rm -rf "$tmp"
fi
cat > fuzz/corpus/request_body/chat <<'EOF'
{"model": "x", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}, {"role": "tool", "content": "1"}], "max_tokens": 5, "temperature": 0.5, "top_p": 0.9, "stop": ["\n"], "stream": true, "stream_options": {"include_usage": true}, "logprobs": true, "top_logprobs": 2, "response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}], "tool_choice": "auto", "seed": 1}
EOF
cat > fuzz/corpus/request_body/completion <<'EOF'
{"model": "x", "prompt": "def f(", "suffix": "return 1", "max_tokens": 16, "echo": false, "logprobs": 2, "stop": "\n", "n": 1}
EOF
echo '{"model": "x", "prompt": [1, 2, 3], "max_tokens": 0, "echo": true, "logprobs": 0}' > fuzz/corpus/request_body/ids

log=$(mktemp)
for target in gguf_header safetensors_header config_json request_body; do
  if ! (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$secs" \
        -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target failed (a crashing input is kept under fuzz/artifacts/$target/)"
    exit 1
  fi
  runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" || echo "?")
  echo "fuzz: $target: $runs inputs in ${secs}s, no crash"
done
rm -f "$log"
