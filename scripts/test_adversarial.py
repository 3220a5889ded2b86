#!/usr/bin/env python3
"""What a hostile or careless client tries, against `deepseek serve` and the CLI.

Each group replays its cases, then checks that the server is still healthy: `/health` answers
in under 100 ms and the process's memory has not grown past a bound. Errors must be OpenAI's
JSON error body with the right status (the CLI: one line and exit 2), never a 500, a panic, an
abort or a hang.

Groups: malformed HTTP and JSON, API edge values, API keys, slow clients, disconnect storms,
bursts against --max-queue, large prompts in flight, and the CLI with corrupt or absurd files.

usage: scripts/test_adversarial.py [GROUP ...]   (run by scripts/test.sh in its venv;
DEEPSEEK_BIN overrides the binary)
"""
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_server import BIN, NANO, Server  # noqa: E402

KEY = "sk-adversarial"
HEALTH_MS = 100
# Memory the server may gain over a group (tokenizer caches, allocator slack), far below what
# one unbounded 2 MB prompt used to take (0.9 GB).
RSS_GROWTH_MB = 300


# --- raw HTTP -------------------------------------------------------------------------------

def raw(port, data, timeout=15, read=True):
    """Sends bytes, reads the answer to the end (requests say `Connection: close`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before reading everything: read its answer
        if not read:
            return None
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break  # reset, or no answer within the timeout: what arrived is the answer
            if not b:
                break
            chunks.append(b)
    return parse_response(b"".join(chunks))


def parse_response(data):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        return 0, {}, data
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return status, headers, body


def request(method, path, body=b"", headers=None, content_type="application/json", key=KEY):
    h = {"Host": "x", "Connection": "close"}
    if content_type is not None:
        h["Content-Type"] = content_type
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    if method == "POST":
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    return head.encode() + body


FAILURES = []


def soft(check):
    """A case's check: a failure is reported and counted, and the group goes on to its next case
    (so one run lists every case that fails)."""
    def wrapped(*args, **kw):
        try:
            return check(*args, **kw)
        except AssertionError as e:
            where = traceback.extract_stack(limit=2)[0]
            msg = f"line {where.lineno}: {e}"
            print(f"  FAILED {msg}"[:400], flush=True)
            FAILURES.append(msg)
            return None
    return wrapped


@soft
def expect(resp, status, *, param=None, contains=(), code=None):
    got, headers, body = resp
    assert got == status, f"expected {status}, got {got}: {body[:300]!r}"
    try:
        err = json.loads(body)["error"]
    except Exception:
        raise AssertionError(f"{status} without OpenAI's JSON error body: {headers} {body[:300]!r}")
    assert isinstance(err.get("message"), str) and err["message"], err
    assert err.get("type") in ("invalid_request_error", "rate_limit_error", "server_error"), err
    if param is not None:
        assert err.get("param") == param, f"param {err.get('param')!r}, expected {param!r}: {err}"
    if code is not None:
        assert err.get("code") == code, f"code {err.get('code')!r}, expected {code!r}: {err}"
    for c in contains:
        assert c.lower() in err["message"].lower(), f"{c!r} not in {err['message']!r}"
    return err


def chat_body(**kw):
    b = {"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    b.update(kw)
    return json.dumps(b).encode()


# --- health ---------------------------------------------------------------------------------

def rss_mb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_clients = threading.local()


def health_ms(s):
    """One GET /health over a kept-alive connection (a new client per call would time Python's
    own setup, ~20 ms)."""
    c = getattr(_clients, "c", None)
    if c is None:
        c = _clients.c = httpx.Client(timeout=10)
    t = time.perf_counter()
    r = c.get(s.base + "/health")
    assert r.status_code == 200, r.text
    return (time.perf_counter() - t) * 1000


def check_healthy(s, baseline_mb, group):
    # Requests cancelled by their clients leave the batch at the next step.
    deadline = time.time() + 30
    while httpx.get(s.base + "/health").json()["running"] and time.time() < deadline:
        time.sleep(0.1)
    assert httpx.get(s.base + "/health").json()["running"] == 0, "requests still running"
    worst = max(health_ms(s) for _ in range(5))
    assert worst < HEALTH_MS, f"/health took {worst:.0f} ms after {group}"
    rss = rss_mb(s.proc.pid)
    assert rss < baseline_mb + RSS_GROWTH_MB, f"RSS {rss:.0f} MB after {group} (baseline {baseline_mb:.0f})"
    r = httpx.post(s.base + "/v1/completions", json={"model": "x", "prompt": "def f():", "max_tokens": 3},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 200, f"a plain request after {group}: {r.status_code} {r.text}"
    print(f"  healthy after {group}: /health {worst:.1f} ms at worst, RSS {rss:.0f} MB")


# --- groups ---------------------------------------------------------------------------------

def group_http(s):
    p = s.port
    post = lambda body, **kw: raw(p, request("POST", "/v1/chat/completions", body, **kw))
    expect(post(b'{"model": "x", "messages": ['), 400, contains=["not valid JSON"])
    expect(post(chat_body() + b"garbage"), 400, contains=["not valid JSON"])
    expect(post(chat_body() + b"{}"), 400, contains=["not valid JSON"])
    r = post(chat_body() + b"  \n")  # whitespace after the value is JSON
    assert r[0] == 200, r
    expect(post(b'{"model": "x", "messages": [{"role": "user", "content": "\xff\xfe"}]}'), 400)
    expect(post(b'{"model": "x", "messages": [{"role": "user", "content": "\\ud800"}]}'), 400)
    expect(post(b"[" * 100000 + b"]" * 100000), 400)
    expect(post(b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"), 400)
    expect(post(b""), 400)
    expect(post(b"null"), 400)
    expect(post(chat_body(), content_type="text/plain"), 415, code="unsupported_media_type",
           contains=["application/json"])
    expect(post(chat_body(), content_type="application/x-www-form-urlencoded"), 415)
    expect(post(chat_body(), content_type=None), 415, contains=["missing"])
    r = post(chat_body(), content_type="application/json; charset=utf-8")
    assert r[0] == 200, r
    expect(raw(p, request("GET", "/v1/chat/completions")), 405, code="method_not_allowed")
    expect(raw(p, request("DELETE", "/health")), 405)
    expect(raw(p, request("GET", "/nowhere")), 404)
    expect(raw(p, request("GET", "/v1/models?" + "a" * 20000)), 414, code="uri_too_long")
    many = {f"X-H{i}": "v" for i in range(150)}
    expect(raw(p, request("GET", "/health", headers=many)), 431, code="headers_too_large")
    expect(raw(p, request("GET", "/health", headers={"X-Big": "v" * 70000})), 431)
    # --max-body-mb 4: refused from Content-Length before the body is read (only the head is
    # sent), and a chunked body once it passes the limit (the rest is never sent).
    head = request("POST", "/v1/completions", headers={"Content-Length": str(5 << 20)})
    expect(raw(p, head), 413, code="request_too_large")
    chunked = request("POST", "/v1/completions", headers={"Transfer-Encoding": "chunked"})
    chunked = chunked.replace(b"Content-Length: 0\r\n", b"")
    piece = b"a" * (1 << 20)
    chunked += b'1a\r\n{"model": "x", "prompt": "\r\n'
    chunked += b"".join(b"%x\r\n" % len(piece) + piece + b"\r\n" for _ in range(5))
    expect(raw(p, chunked), 413)


def group_api(s):
    p = s.port
    chat = lambda body: raw(p, request("POST", "/v1/chat/completions", body))
    cmpl = lambda body: raw(p, request("POST", "/v1/completions", json.dumps(body).encode()))
    expect(chat(chat_body(max_tokens=0)), 400, param="max_tokens")
    expect(chat(chat_body(max_completion_tokens=0)), 400, param="max_completion_tokens")
    for v in (-1, 1.5, "10", 1e30, 2**64):
        expect(chat(chat_body(max_tokens=v)), 400, param="max_tokens")
    expect(chat(b'{"model": "x", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}'), 400)
    for k, v in [("temperature", -0.5), ("temperature", 2.5), ("top_p", 1.5), ("seed", -1),
                 ("presence_penalty", 3), ("n", 2), ("top_logprobs", 21), ("logprobs", "yes"),
                 ("stop", ["s"] * 17), ("stop", 5), ("stream", "yes"), ("tools", "none")]:
        expect(chat(chat_body(**{k: v})), 400, param=k)
    expect(chat(chat_body(messages=[{"role": "user", "content": None}])), 400,
           param="messages[0].content")
    expect(chat(chat_body(messages=[{"role": "user"}])), 400, param="messages[0].content")
    expect(chat(chat_body(messages=[{"role": "assistant", "content": None}])), 400,
           param="messages[0].content")
    expect(chat(chat_body(messages=[])), 400, param="messages")
    expect(chat(chat_body(messages="hi")), 400, param="messages")
    expect(chat(chat_body(messages=[{"role": "wizard", "content": "hi"}])), 400, param="messages[0].role")
    expect(chat(chat_body(messages=[{"role": "user", "content": [{"type": "image_url"}]}])), 400)
    expect(cmpl({"model": "x", "prompt": []}), 400, param="prompt", contains=["empty"])
    expect(cmpl({"model": "x", "prompt": ["a", "b"]}), 400, param="prompt", contains=["several"])
    expect(cmpl({"model": "x", "prompt": [10**9]}), 400, param="prompt")
    expect(cmpl({"model": "x", "prompt": [-1]}), 400)
    expect(cmpl({"model": "x", "prompt": "x", "max_tokens": 10**9}), 400, param="max_tokens",
           code="context_length_exceeded")
    r = cmpl({"model": "x", "prompt": "def f():", "max_tokens": 0, "echo": True, "logprobs": 0})
    assert r[0] == 200, r  # max_tokens 0 stays valid for legacy completions: it scores a text


def group_auth(s):
    p = s.port
    body = chat_body()
    r = lambda **kw: raw(p, request("POST", "/v1/chat/completions", body, **kw))
    expect(r(key=None), 401, code="invalid_api_key", contains=["missing"])
    expect(r(key=None, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, contains=["Basic", "Bearer"])
    expect(r(key=None, headers={"Authorization": "Token " + KEY}), 401, contains=["Token"])
    expect(r(key="wrong"), 401, contains=["incorrect"])
    expect(r(key=KEY + "x"), 401, contains=["incorrect"])
    expect(r(key=KEY[:-1]), 401, contains=["incorrect"])
    expect(r(key=None, headers={"Authorization": "Bearer"}), 401)
    assert r(key=None, headers={"Authorization": "bearer " + KEY})[0] == 200
    assert r(key=None, headers={"Authorization": "Bearer  " + KEY + " "})[0] == 200
    # /health and /metrics stay open; /v1/models needs the key.
    assert raw(p, request("GET", "/health", key=None))[0] == 200
    expect(raw(p, request("GET", "/v1/models", key=None)), 401)


def group_slow(s):
    p = s.port
    # Headers never finished: the server closes the connection after its header deadline.
    t = time.time()
    with socket.create_connection(("127.0.0.1", p), timeout=30) as c:
        c.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        try:
            while c.recv(1024):
                pass
        except (ConnectionResetError, socket.timeout):
            pass  # a reset is a close; a timeout means it stayed open 30 s
    waited = time.time() - t
    check(waited < 20, f"a connection with unfinished headers stayed open {waited:.0f} s")
    print(f"  unfinished headers: closed after {waited:.1f} s")
    # Many such connections at once do not stop others from being served.
    idle = [socket.create_connection(("127.0.0.1", p)) for _ in range(50)]
    for c in idle:
        c.sendall(b"GET /health HTTP/1.1\r\n")
    worst = max(health_ms(s) for _ in range(5))
    assert worst < HEALTH_MS, f"/health took {worst:.0f} ms beside 50 stalled connections"
    for c in idle:
        c.close()


def group_disconnects(s):
    p = s.port
    body = json.dumps({"model": "x", "prompt": "def f():", "max_tokens": 500, "stream": True}).encode()
    for _ in range(40):
        # Send the request, read the first bytes, hang up.
        with socket.create_connection(("127.0.0.1", p), timeout=30) as c:
            c.sendall(request("POST", "/v1/completions", body))
            c.recv(100)
    for _ in range(40):
        # Hang up halfway through the body.
        with socket.create_connection(("127.0.0.1", p), timeout=30) as c:
            data = request("POST", "/v1/completions", body)
            c.sendall(data[: len(data) - 20])
    for _ in range(20):
        # Hang up before anything.
        socket.create_connection(("127.0.0.1", p)).close()


def group_large_prompts(s):
    """Four 2 MB prompts in flight while /health is polled: it must stay under 100 ms."""
    text = ("The quick brown fox jumps over the lazy dog. " * 50000)[:2_000_000]
    bodies = [
        ("/v1/completions", {"model": "x", "prompt": text, "max_tokens": 4}),
        ("/v1/chat/completions", {"model": "x", "messages": [{"role": "user", "content": text}]}),
        ("/v1/completions", {"model": "x", "prompt": text.replace(" ", ""), "max_tokens": 4}),
        ("/v1/completions", {"model": "x", "prompt": text[:1_000_000], "suffix": text[:1_000_000], "max_tokens": 4}),
    ]
    results, lat, peak = [], [], [0.0]
    done = threading.Event()

    def send(path, b):
        r = httpx.post(s.base + path, json=b, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
        try:
            results.append((r.status_code, r.json()))
        except ValueError:
            results.append((r.status_code, r.text))

    def poll():
        while not done.is_set():
            lat.append(health_ms(s))
            peak[0] = max(peak[0], rss_mb(s.proc.pid))
            time.sleep(0.005)

    for _ in range(2):
        threads = [threading.Thread(target=send, args=pb) for pb in bodies]
        poller = threading.Thread(target=poll)
        poller.start()
        t = time.time()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        done.set()
        poller.join()
        done.clear()
    took = time.time() - t
    assert len(results) == 2 * len(bodies), results
    for status, body in results:
        assert status == 400 and body["error"]["code"] == "context_length_exceeded", (status, body)
    worst = max(lat)
    print(f"  4 × 2 MB prompts: answered in {took:.1f} s, /health {worst:.1f} ms at worst "
          f"over {len(lat)} polls, peak RSS {peak[0]:.0f} MB")
    check(worst < HEALTH_MS, f"/health took {worst:.0f} ms with 2 MB prompts in flight")


def group_burst():
    """A burst as large as the batch on an idle server is never refused."""
    s = Server(NANO, "--max-batch", "16", "--max-queue", "4", key=None)
    try:
        for n, may_refuse in ((16, False),) * 5 + ((40, True),):
            statuses = []
            # Connections opened first, then every request sent at once.
            clients = [httpx.Client(timeout=300) for _ in range(n)]
            for c in clients:
                c.get(s.base + "/health")
            go = threading.Barrier(n)

            def one(c):
                go.wait()
                r = c.post(s.base + "/v1/completions",
                           json={"model": "x", "prompt": "def f():", "max_tokens": 32, "temperature": 0.9})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers.get("retry-after"), "429 without Retry-After"
                    assert r.json()["error"]["type"] == "rate_limit_error"

            threads = [threading.Thread(target=one, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for c in clients:
                c.close()
            refused = statuses.count(429)
            print(f"  burst of {n} on --max-batch 16 --max-queue 4: {refused} × 429")
            assert set(statuses) <= {200, 429}, statuses
            if not may_refuse:
                check(refused == 0, f"{refused} of a burst of {n} refused with free places")
            else:
                assert statuses.count(200) >= 20, statuses
            deadline = time.time() + 30
            while httpx.get(s.base + "/health").json()["running"] and time.time() < deadline:
                time.sleep(0.1)
    finally:
        s.stop()


def run_cli(*args, stdin=None, timeout=120):
    r = subprocess.run([str(BIN), *map(str, args)], input=stdin, capture_output=True, timeout=timeout)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


@soft
def check(cond, msg):
    assert cond, msg


@soft
def expect_cli_error(args, *, contains=(), any_of=(), stdin=None):
    rc, out, err = run_cli(*args, stdin=stdin)
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert rc == 2, f"{args}: exit {rc}, expected 2: {err[-500:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{args}: not one error line: {err[-500:]}"
    for c in contains:
        assert c in lines[0], f"{args}: {c!r} not in {lines[0]!r}"
    if any_of:
        assert any(c in lines[0] for c in any_of), f"{args}: none of {any_of} in {lines[0]!r}"
    return lines[0]


def group_cli():
    tmp = Path(tempfile.mkdtemp())
    try:
        expect_cli_error(["--threads", "100000", "info", "--model", NANO], contains=["--threads"])
        expect_cli_error(["--threads", "0", "info", "--model", NANO], contains=["--threads"])
        expect_cli_error(["serve", "--model", NANO, "--cache-tokens", 10**12], contains=["--cache-tokens"])
        expect_cli_error(["serve", "--model", NANO, "--max-batch", 10**11], contains=["--max-batch"])
        expect_cli_error(["serve", "--model", NANO, "--max-body-mb", 10**6], contains=["--max-body-mb"])
        (tmp / "keys.txt").write_text("alice sk-secret-a rpm=zero\n")
        line = expect_cli_error(["serve", "--model", NANO, "--api-keys", tmp / "keys.txt"],
                                contains=["--api-keys", "line 1", "rpm=zero"])
        assert "sk-secret-a" not in line, line
        expect_cli_error(["bench", "--model", NANO, "-p", 10**9], contains=["-p"])
        expect_cli_error(["bench", "--model", NANO, "--depth", 2**64 - 1], contains=["--depth"])
        # tokenize: a text too large for the command line, from a file and from stdin.
        big = "def f(x):\n    return x + 1\n" * 100000
        (tmp / "big.txt").write_text(big)
        rc, out, _ = run_cli("tokenize", "--model", NANO, "--file", tmp / "big.txt")
        rc2, out2, _ = run_cli("tokenize", "--model", NANO, "-", stdin=big.encode())
        check(rc == 0 and rc2 == 0 and out == out2 and len(out.split()) > 100000,
              f"tokenize --file / stdin: exits {rc}, {rc2}")
        (tmp / "bad.txt").write_bytes(b"ok \xff\xfe")
        expect_cli_error(["tokenize", "--model", NANO, "--file", tmp / "bad.txt"], contains=["UTF-8"])
        expect_cli_error(["tokenize", "--model", NANO, "--file", tmp / "none.txt"], contains=["none.txt"])

        # Absurd configs: every numeric field set to absurd values must give exit 2, never an
        # abort or a panic.
        bad = tmp / "bad"
        bad.mkdir()
        for f in NANO.iterdir():
            if f.name != "config.json":
                (bad / f.name).symlink_to(f)
        base = json.loads((NANO / "config.json").read_text())
        numeric = [k for k, v in base.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for k in numeric:
            for v in (10**9, 10**18, -1, 0, 1e300):
                (bad / "config.json").write_text(json.dumps({**base, k: v}))
                for cmd in (["info"], ["generate", "-n", "2", "-p", "def"]):
                    rc, _, err = run_cli(*cmd, "--model", bad)
                    check(rc in (0, 2), f"{k} = {v}: `{cmd[0]}` exited {rc}: {err[-300:]}")
        (bad / "config.json").write_text(json.dumps({**base, "num_hidden_layers": 10**9}))
        expect_cli_error(["info", "--model", bad], contains=["num_hidden_layers", "4 layers"])
        (bad / "config.json").write_text("{not json")
        expect_cli_error(["info", "--model", bad], contains=["config.json"])

        # Corrupt safetensors: cut, an absurd header length, a header that is not JSON.
        st = (NANO / "model.safetensors").read_bytes()
        (bad / "config.json").write_text(json.dumps(base))
        (bad / "model.safetensors").unlink()
        hlen = struct.unpack("<Q", st[:8])[0]
        for name, data in [("cut in the header", st[: 8 + hlen // 2]),
                           ("cut in the data", st[: len(st) // 2]),
                           ("header length 2^63", struct.pack("<Q", 1 << 63) + st[8:]),
                           ("header not JSON", st[:8] + b"\xff" * hlen + st[8 + hlen:]),
                           ("empty", b"")]:
            (bad / "model.safetensors").write_bytes(data)
            expect_cli_error(["info", "--model", bad], contains=["model.safetensors"])

        # GGUF: the same with the file our quantize writes, and an absurd block_count.
        gguf = tmp / "nano.gguf"
        rc, _, err = run_cli("quantize", "--model", NANO, "--type", "q8_0", "--out", gguf)
        assert rc == 0, err
        g = gguf.read_bytes()
        key = b"deepseek2.block_count"
        i = g.index(key) + len(key)
        assert struct.unpack("<I", g[i:i + 4])[0] == 4, "block_count's type is not u32 (4) here"
        patched = g[:i + 4] + struct.pack("<I", 10**9) + g[i + 8:]
        for name, data in [("block_count 10^9", patched), ("cut", g[: len(g) // 3]),
                           ("cut in the header", g[:300]), ("tensor count 2^62", g[:8] + struct.pack("<Q", 1 << 62) + g[16:])]:
            f = tmp / "bad.gguf"
            f.write_bytes(data)
            expect_cli_error(["info", "--model", f], any_of=["bad.gguf", "block_count"])
    finally:
        shutil.rmtree(tmp)


def main():
    want = set(sys.argv[1:])
    on = lambda g: not want or g in want
    if on("cli"):
        print("cli: corrupt and absurd files, flags, large inputs")
        group_cli()
    server_groups = [("http", group_http), ("api", group_api), ("auth", group_auth),
                     ("slow", group_slow), ("disconnects", group_disconnects),
                     ("large_prompts", group_large_prompts)]
    if any(on(g) for g, _ in server_groups):
        s = Server(NANO, "--max-body-mb", "4", key=KEY)
        try:
            health_ms(s)
            baseline = rss_mb(s.proc.pid)
            for name, fn in server_groups:
                if on(name):
                    print(f"{name}")
                    fn(s)
                    check_healthy(s, baseline, name)
        except Exception:
            print(s.output()[-3000:], file=sys.stderr)
            raise
        finally:
            s.stop()
    if on("burst"):
        print("burst")
        group_burst()
    if FAILURES:
        print(f"{len(FAILURES)} adversarial case(s) failed")
        sys.exit(1)
    print("adversarial tests passed")


if __name__ == "__main__":
    main()
