#!/usr/bin/env python3
"""`deepseek serve --cache-dir`: the prefix cache's disk tier, end to end on the bundled model.

- restart: a long prompt's whole blocks come back from disk after a restart, reported as
  `prompt_cache_hit_tokens` (and `cached_tokens`), with the same greedy output;
- crashes: the server is killed with SIGKILL 20 times while it writes blocks under load; after
  each restart every answer equals the cache-free server's, and no cut-off write is ever served;
- corrupt files: every block file damaged between runs is skipped, removed, and recomputed;
- foreign model: another model (the nano quantized to q8_0) on the same folder reads none of
  the nano's blocks and answers as it does without a cache;
- disk full (a file-size limit makes every write fail) and an unwritable folder: one warning,
  the tier off, the server serving correctly;
- two servers sharing one folder at once both answer correctly.

usage: scripts/test_cache_dir.py   (run by scripts/test.sh in its venv)
"""
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_server  # noqa: E402  (its Server, binary and model paths)

ROOT = test_server.ROOT
BIN = test_server.BIN
NANO = test_server.NANO

BASE_TEXT = (ROOT / "crates/deepseek-engine/src/scheduler.rs").read_text()


def prompt(i, chars=3000):
    """A distinct long prompt per i (shared head for i in the same family of 4)."""
    start = (i * 977) % (len(BASE_TEXT) - chars)
    return f"# file {i // 4}\n" + BASE_TEXT[start:start + chars]


class Server(test_server.Server):
    """test_server's server, on one thread, without a key, with the disk tier at `cache_dir`."""

    def __init__(self, model, cache_dir=None, *extra, preexec=None):
        args = ["--threads", "1"]
        if cache_dir is not None:
            args += ["--cache-dir", str(cache_dir)]
        super().__init__(model, *args, *extra, key=None, preexec=preexec)

    def complete(self, text, n=24):
        r = httpx.post(self.base + "/v1/completions", timeout=120,
                       json={"prompt": text, "max_tokens": n, "temperature": 0})
        assert r.status_code == 200, r.text
        j = r.json()
        return j["choices"][0]["text"], j["usage"]


def block_files(d):
    return sorted(Path(d).glob("*.blk"))


def test_restart_and_usage(tmp, reference):
    d = tmp / "restart"
    s = Server(NANO, d)
    try:
        text, u = s.complete(prompt(0))
        assert text == reference[0] and u["prompt_cache_hit_tokens"] == 0, u
    finally:
        s.stop()
    assert block_files(d), "no block written"
    s = Server(NANO, d)
    try:
        text, u = s.complete(prompt(0))
        assert text == reference[0], "output from disk-cached rows differs"
        whole = (u["prompt_tokens"] - 1) // 64 * 64
        assert u["prompt_cache_hit_tokens"] == whole and whole >= 256, u
        assert u["prompt_tokens_details"]["cached_tokens"] == whole, u
        assert u["prompt_cache_miss_tokens"] == u["prompt_tokens"] - whole, u
        m = httpx.get(s.base + "/metrics").text
        assert f'deepseek_prompt_cache_hit_tokens_by_tier_total{{tier="disk"}} {whole}' in m, m
        assert "deepseek_disk_cache_bytes " in m
    finally:
        s.stop()


def test_crashes_under_load(tmp, reference):
    d = tmp / "crash"
    rng = random.Random(7)
    served = 0
    for k in range(20):
        s = Server(NANO, d)
        stop = threading.Event()
        errors = []

        def load(worker):
            i = worker
            while not stop.is_set():
                try:
                    text, _ = s.complete(prompt(i % len(reference)), n=8)
                    if text != reference[i % len(reference)][:len(text)]:
                        errors.append(i)
                except Exception:
                    return  # the kill
                i += 3

        threads = [threading.Thread(target=load, args=(w,)) for w in range(3)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.0))
        s.kill()
        stop.set()
        for t in threads:
            t.join()
        assert not errors, f"kill {k}: wrong output for prompts {errors}"
        # After the kill: a fresh server answers every prompt as the cache-free one does.
        if k % 5 == 4:
            s = Server(NANO, d)
            try:
                for i, want in enumerate(reference):
                    text, u = s.complete(prompt(i))
                    assert text == want, f"after kill {k}: prompt {i} differs"
                    served += u["prompt_cache_hit_tokens"]
            finally:
                s.kill()
    assert served > 0, "no block was ever read back"
    leftovers = [p for p in Path(d).iterdir() if p.name.startswith(".tmp-")]
    s = Server(NANO, d)
    s.stop()
    left = [p for p in leftovers if p.exists()]
    assert not left, f"temporary files of killed writers left behind: {left}"


def test_corrupt_files(tmp, reference):
    d = tmp / "restart"  # filled by test_restart_and_usage
    files = block_files(d)
    assert files
    for f in files:
        b = bytearray(f.read_bytes())
        b[len(b) // 2] ^= 0xFF
        f.write_bytes(bytes(b))
    s = Server(NANO, d)
    try:
        text, u = s.complete(prompt(0))
        assert text == reference[0] and u["prompt_cache_hit_tokens"] == 0, u
    finally:
        s.stop()
    assert "skipped and removed" in s.output(), s.output()[-2000:]


def test_foreign_model(tmp, reference):
    d = tmp / "restart"
    gguf = tmp / "nano-q8_0.gguf"
    subprocess.run([str(BIN), "quantize", "--model", str(NANO), "--type", "q8_0", "--out", str(gguf)],
                   check=True, capture_output=True)
    plain = Server(gguf)
    try:
        want, _ = plain.complete(prompt(0))
    finally:
        plain.stop()
    before = len(block_files(d))
    assert before > 0
    s = Server(gguf, d)
    try:
        text, u = s.complete(prompt(0))
        assert u["prompt_cache_hit_tokens"] == 0, f"another model's blocks were served: {u}"
        assert text == want
    finally:
        s.stop()
    # Its own blocks join the folder beside the nano's.
    assert len(block_files(d)) > before


def test_disk_full_and_unwritable(tmp, reference):
    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    d = tmp / "full"
    s = Server(NANO, d, preexec=small_files)
    try:
        for i in range(2):
            text, _ = s.complete(prompt(i))
            assert text == reference[i]
        assert httpx.get(s.base + "/health").status_code == 200
    finally:
        s.stop()
    out = s.output()
    assert out.count("the disk tier is off") == 1, out[-2000:]
    assert not block_files(d)

    not_a_dir = tmp / "a-file"
    not_a_dir.write_text("x")
    s = Server(NANO, not_a_dir / "cache")
    try:
        text, _ = s.complete(prompt(1))
        assert text == reference[1]
    finally:
        s.stop()
    assert "cannot be written" in s.output() and "the disk tier is off" in s.output()


def test_two_servers_share_a_folder(tmp, reference):
    d = tmp / "shared"
    a, b = Server(NANO, d), Server(NANO, d)
    try:
        results = {}

        def run(s, name):
            for i in range(len(reference)):
                results[(name, i)] = s.complete(prompt(i))[0]

        ts = [threading.Thread(target=run, args=(s, n)) for s, n in [(a, "a"), (b, "b")]]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for (name, i), text in results.items():
            assert text == reference[i], f"server {name}, prompt {i}"
        # The second pass finds blocks either server wrote.
        _, u = b.complete(prompt(0))
        assert u["prompt_cache_hit_tokens"] > 0, u
    finally:
        a.stop()
        b.stop()


def main():
    tmp = Path(tempfile.mkdtemp(prefix="deepseek-cache-dir-"))
    try:
        plain = Server(NANO)
        try:
            reference = [plain.complete(prompt(i))[0] for i in range(6)]
        finally:
            plain.stop()
        for name, fn in [
            ("restart and usage", test_restart_and_usage),
            ("corrupt files", test_corrupt_files),
            ("foreign model", test_foreign_model),
            ("disk full and unwritable folder", test_disk_full_and_unwritable),
            ("two servers, one folder", test_two_servers_share_a_folder),
            ("20 SIGKILLs under load", test_crashes_under_load),
        ]:
            t0 = time.time()
            fn(tmp, reference)
            print(f"ok    {name} ({time.time() - t0:.1f}s)")
        print("cache-dir tests passed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
