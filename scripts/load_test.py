#!/usr/bin/env python3
"""Bounded load test of `deepseek serve` on loopback with the official openai client.

Keeps N concurrent streaming chat/completion requests going for a fixed time against a tiny
model, then checks: zero failed requests, every stream ended with a finish reason and [DONE],
no growth of the server's memory between a warm-up round and the end of the run, and no cache
blocks left to finished sequences. Prints p50/p99 time to first token and throughput.

With `--draft lookup|mtp` the server decodes speculatively and the completion requests are greedy:
each one's text must be the start of what `deepseek generate` writes without drafts.

usage: scripts/load_test.py [--streams 64] [--seconds 30] [--model DIR] [--draft METHOD]
"""
import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import NANO, ROOT, Server, generate_cli  # noqa: E402

COMPLETION_PROMPTS = ["def main():", "import os\n", "class Node:", "for i in"]


def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


async def one(client, rng, ttfts, stats, greedy=None):
    t0 = time.perf_counter()
    first = None
    finish = None
    n = rng.randint(8, 48)
    try:
        if rng.random() < 0.5:
            stream = await client.chat.completions.create(
                model="x", max_tokens=n, temperature=0.8, stream=True,
                messages=[{"role": "system", "content": "You write Python."},
                          {"role": "user", "content": rng.choice(["a parser", "a sort", "a class", "tests"])}])
            async for ch in stream:
                if ch.choices and ch.choices[0].delta.content and first is None:
                    first = time.perf_counter()
                if ch.choices and ch.choices[0].finish_reason:
                    finish = ch.choices[0].finish_reason
        else:
            prompt = rng.choice(COMPLETION_PROMPTS)
            stream = await client.completions.create(
                model="x", prompt=prompt, max_tokens=n, temperature=0.0 if greedy else 0.8, stream=True)
            text = ""
            async for ch in stream:
                if ch.choices and ch.choices[0].text and first is None:
                    first = time.perf_counter()
                if ch.choices:
                    text += ch.choices[0].text or ""
                if ch.choices and ch.choices[0].finish_reason:
                    finish = ch.choices[0].finish_reason
            if greedy and not greedy[prompt].startswith(text):
                raise RuntimeError(f"drafted output differs: {text!r} is not the start of {greedy[prompt]!r}")
        if finish is None:
            raise RuntimeError("stream ended without a finish reason")
        if first is not None:
            ttfts.append(first - t0)
        stats["ok"] += 1
    except Exception as e:  # noqa: BLE001 - every failure counts
        stats["failed"] += 1
        stats.setdefault("errors", []).append(repr(e)[:200])


async def run(client, streams, seconds, seed, greedy=None):
    rng = random.Random(seed)
    ttfts, stats = [], {"ok": 0, "failed": 0}
    deadline = time.perf_counter() + seconds

    async def worker():
        while time.perf_counter() < deadline:
            await one(client, rng, ttfts, stats, greedy)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(streams)))
    return ttfts, stats, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--model", default=str(NANO))
    ap.add_argument("--max-growth-mib", type=float, default=8.0)
    ap.add_argument("--draft", choices=["lookup", "mtp"], help="speculative decoding on the server")
    a = ap.parse_args()

    # What each greedy completion must start with: the output without drafts.
    greedy = {p: generate_cli(a.model, p, 48)["text"] for p in COMPLETION_PROMPTS} if a.draft else None
    extra = ["--draft", a.draft, "--draft-tokens", "2"] if a.draft else []
    s = Server(a.model, "--max-batch", "32", *extra, key=None)
    try:
        client = openai.AsyncOpenAI(base_url=s.base + "/v1", api_key="none", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(
                                        limits=httpx.Limits(max_connections=a.streams + 8)))
        # Warm-up: fill the cache pool and the allocator once, then measure from there.
        asyncio.run(run(client, a.streams, min(5.0, a.seconds / 3), 1))
        time.sleep(0.5)
        before = rss_kib(s.proc.pid)
        client = openai.AsyncOpenAI(base_url=s.base + "/v1", api_key="none", max_retries=0,
                                    http_client=openai.DefaultAsyncHttpxClient(
                                        limits=httpx.Limits(max_connections=a.streams + 8)))
        ttfts, stats, wall = asyncio.run(run(client, a.streams, a.seconds, 2, greedy))
        time.sleep(0.5)
        after = rss_kib(s.proc.pid)
        running = s.metric("deepseek_running_sequences")
        used = s.metric("deepseek_cache_blocks_used")
        prefix = s.metric("deepseek_prefix_cache_blocks")
        tokens = s.metric("deepseek_generated_tokens_total")
    finally:
        code = s.stop()
    growth = (after - before) / 1024
    drafts = f", drafts: {a.draft}" if a.draft else ""
    print(f"{a.streams} concurrent streams for {wall:.1f}s{drafts}: {stats['ok']} requests ok, {stats['failed']} failed")
    print(f"time to first token: p50 {pct(ttfts, 50) * 1000:.0f} ms, p99 {pct(ttfts, 99) * 1000:.0f} ms")
    print(f"generated tokens (whole run incl. warm-up): {tokens:.0f}")
    print(f"server RSS: {before / 1024:.1f} MiB after warm-up, {after / 1024:.1f} MiB after the run "
          f"(growth {growth:+.1f} MiB)")
    problems = []
    if stats["failed"]:
        problems.append(f"{stats['failed']} failed requests, e.g. {stats['errors'][:3]}")
    if stats["ok"] == 0:
        problems.append("no request completed")
    if growth > a.max_growth_mib:
        problems.append(f"memory grew by {growth:.1f} MiB (limit {a.max_growth_mib})")
    if running != 0 or used != prefix:
        problems.append(f"after the run: {running} sequences running, {used} blocks used, {prefix} in prefix cache")
    if code != 0:
        problems.append(f"server exit code {code}")
    if problems:
        sys.exit("load test FAILED: " + "; ".join(problems))
    print("load test passed")


if __name__ == "__main__":
    main()
