#!/usr/bin/env bash
# Runs each fuzz target (fuzz/fuzz_targets) for N seconds (default 60) with cargo-fuzz on nightly.
# Seeds the corpora with real headers from the repo's fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not found: cargo install cargo-fuzz"; exit 1; }
mkdir -p fuzz/corpus/safetensors_header fuzz/corpus/gguf_header
# Headers only (first 64 KiB) keep the seeds small.
for f in tests/fixtures/*/model.safetensors; do
  head -c 65536 "$f" > "fuzz/corpus/safetensors_header/$(basename "$(dirname "$f")")"
done
if [ ! -s fuzz/corpus/gguf_header/nano ]; then
  tmp=$(mktemp -d)
  cargo run --release --quiet -- quantize -t q8_0 -o "$tmp/nano.gguf" >/dev/null
  head -c 65536 "$tmp/nano.gguf" > fuzz/corpus/gguf_header/nano
  rm -rf "$tmp"
fi
for target in gguf_header safetensors_header; do
  (cd fuzz && cargo +nightly fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048)
done
