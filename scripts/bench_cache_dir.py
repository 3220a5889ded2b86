#!/usr/bin/env python3
"""Time to first token of a long prompt: cold, from the memory prefix cache, and from
`--cache-dir` after a server restart (what DeepSeek's API calls a context-cache hit).

usage: scripts/bench_cache_dir.py --model DIR_OR_GGUF [--tokens 4000] [--threads N]

Each figure is the median of 3 streamed requests (time until the first content chunk). The
prompt is source text cut to about --tokens tokens; the disk figure is read after a restart,
so it comes from the page cache (a recently written folder) unless the OS dropped it.
"""
import argparse
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target/release/deepseek"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model, threads, cache_dir=None):
    port = free_port()
    args = [str(BIN), "serve", "--model", model, "--port", str(port)]
    if threads:
        args += ["--threads", str(threads)]
    if cache_dir:
        args += ["--cache-dir", str(cache_dir)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    while True:
        try:
            httpx.get(base + "/health", timeout=1)
            return p, base
        except httpx.HTTPError:
            if p.poll() is not None:
                raise SystemExit("server exited")
            time.sleep(0.2)


def ttft(base, prompt):
    t0 = time.perf_counter()
    body = {"prompt": prompt, "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    first, hit = None, None
    with httpx.stream("POST", base + "/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            j = json.loads(line[6:])
            if first is None and j.get("choices"):
                first = time.perf_counter() - t0
            if j.get("usage"):
                hit = j["usage"]["prompt_cache_hit_tokens"], j["usage"]["prompt_tokens"]
    return first, hit


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=4000)
    ap.add_argument("--threads", type=int)
    a = ap.parse_args()
    src = "".join(p.read_text() for p in sorted((ROOT / "crates").rglob("*.rs")))
    # About 3.3 characters per token of Rust source; each prompt starts differently so the
    # cold runs share nothing.
    prompts = [f"// variant {i}\n" + src[i * 101: i * 101 + int(a.tokens * 3.3)] for i in range(3)]
    tmp = Path(tempfile.mkdtemp(prefix="deepseek-bench-cache-"))
    try:
        p, base = start(a.model, a.threads, tmp)
        cold = [ttft(base, q) for q in prompts]
        memory = [ttft(base, q) for q in prompts]
        p.terminate()
        p.wait()
        p, base = start(a.model, a.threads, tmp)
        disk = [ttft(base, q) for q in prompts]
        p.terminate()
        p.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = lambda rs: statistics.median(r[0] for r in rs)
    print(f"prompt tokens: {[r[1][1] for r in cold]}")
    print(f"cold            TTFT {med(cold) * 1000:9.1f} ms   hits {[r[1][0] for r in cold]}")
    print(f"memory prefix   TTFT {med(memory) * 1000:9.1f} ms   hits {[r[1][0] for r in memory]}  ({med(cold) / med(memory):.1f}x)")
    print(f"disk, restarted TTFT {med(disk) * 1000:9.1f} ms   hits {[r[1][0] for r in disk]}  ({med(cold) / med(disk):.1f}x)")


if __name__ == "__main__":
    main()
