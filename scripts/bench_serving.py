#!/usr/bin/env python3
"""Serving benchmark: continuous batching and the prefix cache, through the HTTP server.

1. Decode throughput: one stream alone, then K concurrent streams (default 8), each generating
   N tokens after a short prompt; aggregate decode tokens/s = tokens after the first of each
   stream / time from the last stream's first token... measured as total decode tokens over the
   span in which all streams were decoding together.
2. Prefix cache: time to first token for a prompt of P tokens (default 1000) sent cold, then for a
   prompt with the same first P tokens and a different ending (served from the latent cache).

usage: scripts/bench_serving.py --model DIR [--streams 8] [-n 64] [--prefix 1000] [--threads T]
The model folder needs a tokenizer (copy assets/tokenizers/deepseek-v2/* into a v2-lite synthetic).
"""
import argparse
import json
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import Server  # noqa: E402


def stream_tokens(base, prompt_ids, n, out):
    """One streaming completion; records the arrival time of every token chunk."""
    times = []
    body = {"prompt": prompt_ids, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True,
            "logprobs": 0}
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=None) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])
                if ch["choices"] and ch["choices"][0].get("logprobs"):
                    times.append(time.perf_counter())
    out.append(times)


def decode_rate(base, prompts, n):
    out = []
    threads = [threading.Thread(target=stream_tokens, args=(base, p, n, out)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The span in which every stream was decoding: from the last first token to the first last token.
    start = max(ts[0] for ts in out)
    end = min(ts[-1] for ts in out)
    tokens = sum(sum(1 for x in ts if start < x <= end) for ts in out)
    return tokens / (end - start), sum(len(ts) for ts in out)


def ttft(base, prompt_ids):
    t0 = time.perf_counter()
    r = httpx.post(base + "/v1/completions", json={"prompt": prompt_ids, "max_tokens": 1, "temperature": 0},
                   timeout=None).json()
    return time.perf_counter() - t0, r["usage"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    extra = ["--max-batch", str(max(a.streams, 1)), "--prefill-chunk", "512"]
    if a.threads:
        extra = ["--threads", str(a.threads)] + extra
    s = Server(a.model, *extra, key=None)
    rng = random.Random(0)
    try:
        vocab = 1000, 30000
        prompt = lambda k: [rng.randrange(*vocab) for _ in range(k)]  # noqa: E731
        decode_rate(s.base, [prompt(16)], 8)  # warm-up
        singles, batched = [], []
        for _ in range(a.repeat):
            singles.append(decode_rate(s.base, [prompt(16)], a.n)[0])
            batched.append(decode_rate(s.base, [prompt(16) for _ in range(a.streams)], a.n)[0])
        one, many = statistics.median(singles), statistics.median(batched)
        print(f"decode, 1 stream: {one:.2f} tok/s (runs {', '.join(f'{x:.2f}' for x in singles)})")
        print(f"decode, {a.streams} streams: {many:.2f} tok/s aggregate "
              f"(runs {', '.join(f'{x:.2f}' for x in batched)}) = {many / one:.2f}x one stream")
        colds, warms = [], []
        for _ in range(a.repeat):
            shared = prompt(a.prefix)
            cold, u1 = ttft(s.base, shared + prompt(8))
            warm, u2 = ttft(s.base, shared + prompt(8))
            assert u1["prompt_cache_hit_tokens"] == 0, u1
            colds.append(cold)
            warms.append(warm)
            hit = u2["prompt_cache_hit_tokens"]
        cold, warm = statistics.median(colds), statistics.median(warms)
        print(f"time to first token, {a.prefix}-token prefix + 8: cold {cold * 1000:.0f} ms, "
              f"cached {warm * 1000:.0f} ms ({hit} tokens from cache) = {cold / warm:.1f}x faster")
        print(json.dumps({"decode_1_stream_tok_s": one, f"decode_{a.streams}_streams_tok_s": many,
                          "batch_speedup": many / one, "ttft_cold_s": cold, "ttft_cached_s": warm,
                          "prefix_speedup": cold / warm, "prefix_tokens": a.prefix, "cached_tokens": hit}))
    finally:
        s.stop()


if __name__ == "__main__":
    main()
