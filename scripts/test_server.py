#!/usr/bin/env python3
"""End-to-end tests of `deepseek serve` with the official `openai` client, unchanged.

Starts real servers (the bundled nano model; SmolLM2 from its GGUF when fetched; a v3-tiny
synthetic with the real DeepSeek-V3 tokenizer for tool calls) and checks chat and completions,
streaming and not, usage, FIM, JSON mode, tool calls, logprobs, errors and their status codes,
cancellation on disconnect, and a clean exit on SIGTERM. Greedy output through the server must
equal `deepseek generate`.

usage: scripts/test_server.py   (run by scripts/test.sh in its venv; DEEPSEEK_BIN overrides the
binary, default target/release/deepseek)
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("DEEPSEEK_BIN", ROOT / "target/release/deepseek"))
NANO = ROOT / "models/deepseek-coder-nano"
SMOLLM2 = ROOT / "assets/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KEY = "sk-test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model, *extra, key=KEY, preexec=None):
        self.port = free_port()
        args = [str(BIN), "serve", "--model", str(model), "--port", str(self.port)]
        if key:
            args += ["--api-key", key]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args + list(extra), stdout=self.log, stderr=self.log,
                                     preexec_fn=preexec)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.output()}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        self.client = openai.OpenAI(base_url=self.base + "/v1", api_key=key or "none", max_retries=0)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise RuntimeError("server did not exit within 60 s of SIGTERM")
        return self.proc.returncode

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def metric(self, name):
        for line in httpx.get(self.base + "/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


def generate_cli(model, prompt, n):
    out = subprocess.run(
        [str(BIN), "generate", "--model", str(model), "--prompt", prompt, "-n", str(n), "--json"],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def expect_error(status, fn, *, param=None, contains=()):
    try:
        fn()
    except openai.APIStatusError as e:
        assert e.status_code == status, f"expected {status}, got {e.status_code}: {e}"
        body = e.body if isinstance(e.body, dict) else {}
        if param is not None:
            assert body.get("param") == param, f"param {body.get('param')!r}, expected {param!r}"
        for c in contains:
            assert c in str(e), f"{c!r} not in {e}"
        return e
    raise AssertionError(f"expected HTTP {status}, got a response")


# ---------------------------------------------------------------- the bundled model
def test_nano(s):
    c = s.client
    models = c.models.list()
    assert [m.id for m in models.data] == ["deepseek-coder-nano"]

    # The chat page at `/` is public (its API calls carry the key), self-contained, and locked
    # down by its Content-Security-Policy (the browser test drives it: test_chat_page.py).
    page = httpx.get(s.base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "v1/chat/completions" in page.text
    assert "script-src 'sha256-" in page.headers["content-security-policy"]

    # Greedy completion equals `deepseek generate`.
    prompt = "def parse_args(argv):"
    want = generate_cli(NANO, prompt, 32)
    r = c.completions.create(model="x", prompt=prompt, max_tokens=32, temperature=0)
    assert r.choices[0].text == want["text"], (r.choices[0].text, want["text"])
    u = r.usage
    assert u.prompt_tokens == want.get("prompt_tokens", u.prompt_tokens)
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.completion_tokens == len(want["token_ids"])

    # Streaming gives the same text, and usage last when asked.
    chunks = list(c.completions.create(model="x", prompt=prompt, max_tokens=32, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == want["text"]
    assert chunks[-1].usage.completion_tokens == u.completion_tokens and chunks[-1].choices == []

    # Chat: streaming and not agree; finish reason; DeepSeek usage fields.
    msgs = [{"role": "system", "content": "You write Python."},
            {"role": "user", "content": "Write a function that adds two numbers."}]
    r = c.chat.completions.create(model="x", messages=msgs, max_tokens=24, temperature=0)
    full = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    extra = r.usage.model_extra or {}
    assert extra["prompt_cache_hit_tokens"] + extra["prompt_cache_miss_tokens"] == r.usage.prompt_tokens
    stream = c.chat.completions.create(model="x", messages=msgs, max_tokens=24, temperature=0, stream=True)
    parts, roles, finish = [], [], None
    for ch in stream:
        d = ch.choices[0].delta
        roles += [d.role] if d.role else []
        parts.append(d.content or "")
        finish = ch.choices[0].finish_reason or finish
    assert "".join(parts) == full and roles == ["assistant"] and finish == r.choices[0].finish_reason

    # A repeated long prefix is served from the cache and reported as cache hits.
    long_system = "You are a careful Python programmer. " * 30
    msgs2 = [{"role": "system", "content": long_system}, {"role": "user", "content": "hello"}]
    c.chat.completions.create(model="x", messages=msgs2, max_tokens=2, temperature=0)
    r2 = c.chat.completions.create(model="x", messages=msgs2, max_tokens=2, temperature=0)
    hit = r2.usage.model_extra["prompt_cache_hit_tokens"]
    assert hit >= 64 and hit % 64 == 0, r2.usage
    assert r2.usage.prompt_tokens_details.cached_tokens == hit

    # Stop strings, seeds.
    r = c.completions.create(model="x", prompt=prompt, max_tokens=32, temperature=0, stop=["\n"])
    assert "\n" not in r.choices[0].text and r.choices[0].finish_reason == "stop"
    a = c.completions.create(model="x", prompt=prompt, max_tokens=16, temperature=1.0, seed=7).choices[0].text
    b = c.completions.create(model="x", prompt=prompt, max_tokens=16, temperature=1.0, seed=7).choices[0].text
    assert a == b

    # FIM: suffix makes a prefix-suffix-middle prompt.
    r = c.completions.create(model="x", prompt="def add(a, b):\n    ", suffix="\n    return c\n",
                             max_tokens=16, temperature=0)
    assert r.usage.prompt_tokens > 10 and r.choices[0].text
    fim = c.completions.create(model="x", prompt="def add(a, b):\n    ", suffix="\n    return c\n",
                               max_tokens=16, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in fim if ch.choices) == r.choices[0].text

    # JSON mode: the content parses as an object.
    for seed in (1, 2):
        r = c.chat.completions.create(model="x", messages=msgs, max_tokens=300, temperature=0.8, seed=seed,
                                      response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict), r.choices[0].message.content
        else:
            assert r.choices[0].message.content.startswith("{")

    # Logprobs: chat (top alternatives) and legacy completions with echo (scoring a text).
    r = c.chat.completions.create(model="x", messages=msgs, max_tokens=5, temperature=0, logprobs=True,
                                  top_logprobs=3)
    lp = r.choices[0].logprobs.content
    assert len(lp) == r.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in lp)
    assert all(e.logprob <= 0 and e.top_logprobs[0].logprob >= e.logprob - 1e-5 for e in lp)
    r = c.completions.create(model="x", prompt="import os\nimport sys\n", max_tokens=0, echo=True, logprobs=1)
    l = r.choices[0].logprobs
    assert r.choices[0].text == "import os\nimport sys\n"
    assert l.token_logprobs[0] is None and all(x <= 0 for x in l.token_logprobs[1:])
    assert len(l.tokens) == r.usage.prompt_tokens and r.usage.completion_tokens == 0

    # Errors, with OpenAI's body and status codes.
    expect_error(401, lambda: openai.OpenAI(base_url=s.base + "/v1", api_key="wrong", max_retries=0)
                 .models.list())
    raw = httpx.post(s.base + "/v1/chat/completions", content=b"{not json",
                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert raw.status_code == 400 and "error" in raw.json() and raw.json()["error"]["type"] == "invalid_request_error"
    expect_error(400, lambda: c.chat.completions.create(model="x", messages=msgs, temperature="hot"),
                 param="temperature")
    expect_error(400, lambda: c.chat.completions.create(model="x", messages=msgs, temperature=3), param="temperature")
    expect_error(400, lambda: c.chat.completions.create(model="x", messages=[]), param="messages")
    expect_error(400, lambda: c.chat.completions.create(model="x", messages=[{"role": "robot", "content": "x"}]),
                 param="messages[0].role")
    e = expect_error(400, lambda: c.completions.create(model="x", prompt=prompt, max_tokens=5000),
                     param="max_tokens", contains=("2048", "5000"))
    expect_error(400, lambda: c.completions.create(model="x", prompt=[99999999], max_tokens=2), param="prompt")
    expect_error(400, lambda: c.chat.completions.create(model="x", messages=msgs, n=2), param="n")
    expect_error(404, lambda: c.models.retrieve("nope"))

    # A client that goes away cancels its sequence.
    with httpx.stream("POST", s.base + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                      json={"prompt": prompt, "max_tokens": 1500, "stream": True, "temperature": 0.9}) as resp:
        for i, _ in enumerate(resp.iter_lines()):
            if i > 3:
                break
    deadline = time.time() + 10
    while s.metric("deepseek_running_sequences") > 0:
        assert time.time() < deadline, "a disconnected stream kept running"
        time.sleep(0.05)
    assert s.metric("deepseek_generated_tokens_total") < 2000

    m = httpx.get(s.base + "/metrics").text
    for name in ("deepseek_requests_total", "deepseek_time_to_first_token_seconds_bucket",
                 "deepseek_time_per_output_token_seconds_count", "deepseek_queue_depth",
                 "deepseek_batch_size", "deepseek_cache_blocks_used"):
        assert name in m, name


def test_queue_full():
    s = Server(NANO, "--max-batch", "1", "--max-queue", "1", "--no-chat-page", key=None)
    try:
        r = httpx.get(s.base + "/")
        assert r.status_code == 404 and r.json()["error"]["type"], (r.status_code, r.text[:200])
        results = []

        def one():
            try:
                s.client.completions.create(model="x", prompt="def f():", max_tokens=400, temperature=0.9)
                results.append(200)
            except openai.RateLimitError as e:
                assert e.response.headers.get("retry-after"), "429 without Retry-After"
                results.append(429)

        threads = [threading.Thread(target=one) for _ in range(6)]
        for t in threads:
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join()
        assert 429 in results and 200 in results, results
    finally:
        s.stop()


def test_api_keys():
    """--api-keys: names and limits per key, beside the single --api-key."""
    tmp = Path(tempfile.mkdtemp())
    keys = tmp / "keys.txt"
    keys.write_text("# name key limits\nalice sk-alice-1 rpm=3\nbob sk-bob-2 concurrent=1\n"
                    "carol sk-carol-3 tpm=60\n")
    s = Server(NANO, "--api-keys", str(keys), "--max-batch", "1", "--threads", "1")
    try:
        def post(key, **body):
            body = {"prompt": "def add(a, b):", "max_tokens": 8, "temperature": 0, **body}
            return httpx.post(s.base + "/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {key}"})

        # rpm=3: the fourth request within the minute is refused, for alice alone.
        assert [post("sk-alice-1").status_code for _ in range(3)] == [200, 200, 200]
        r = post("sk-alice-1")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1, (r.status_code, r.text)
        assert "alice" in r.json()["error"]["message"] and "requests per minute" in r.text, r.text
        assert post("sk-bob-2").status_code == 200
        assert post(KEY).status_code == 200, "the single --api-key stopped working"
        assert post("sk-alice-").status_code == 401

        # concurrent=1: while one of bob's requests waits behind a long one (one batch place),
        # his second is refused; other keys are not.
        def health():
            return httpx.get(s.base + "/health").json()

        def wait_for(cond, what):
            deadline = time.time() + 20
            while not cond(health()):
                assert time.time() < deadline, what
                time.sleep(0.01)

        long = threading.Thread(target=post, args=(KEY,),
                                kwargs={"max_tokens": 1800, "ignore_eos": True})
        long.start()
        wait_for(lambda h: h["running"] == 1, "the long request did not start")
        queued = threading.Thread(target=post, args=("sk-bob-2",))
        queued.start()
        wait_for(lambda h: h["waiting"] == 1, "bob's first request did not queue")
        r = post("sk-bob-2")
        assert r.status_code == 429 and "running" in r.text, (r.status_code, r.text)
        carol = threading.Thread(target=lambda: results.append(post("sk-carol-3").status_code))
        results = []
        carol.start()
        for t in (long, queued, carol):
            t.join()
        assert results == [200], results  # others unaffected
        deadline = time.time() + 10
        while post("sk-bob-2").status_code != 200:
            assert time.time() < deadline, "bob's place was not given back after his stream"
            time.sleep(0.1)

        # tpm=60: carol's first two requests (prompt + 8 tokens each) spend the minute.
        codes = [post("sk-carol-3", max_tokens=30).status_code for _ in range(3)]
        assert 429 in codes, codes

        m = httpx.get(s.base + "/metrics").text
        assert 'deepseek_key_requests_total{key="alice"} 3' in m, m
        assert 'deepseek_key_refused_total{key="alice"} 1' in m, m
        assert 'deepseek_key_requests_total{key="default"} 2' in m, m
        assert 'deepseek_key_prompt_tokens_total{key="alice"}' in m
        for secret in ["sk-alice-1", "sk-bob-2", "sk-carol-3", KEY]:
            assert secret not in m, "a key in /metrics"
    finally:
        s.stop()
    out = s.output()
    for secret in ["sk-alice-1", "sk-bob-2", "sk-carol-3", KEY]:
        assert secret not in out, "a key in the server's output"


def test_sigterm_finishes_running_requests():
    s = Server(NANO, key=None)
    got = {}

    def run():
        r = s.client.completions.create(model="x", prompt="class A:", max_tokens=200, temperature=0.9,
                                        stream=True)
        got["text"] = "".join(ch.choices[0].text for ch in r if ch.choices)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.3)
    code = s.stop()
    t.join(30)
    assert code == 0, f"exit code {code}: {s.output()}"
    assert got.get("text"), "the running stream was cut off"
    assert "server stopped" in s.output()


def test_speculative():
    """`serve --draft lookup` and `--draft mtp` (the bundled model's multi-token-prediction
    module): concurrent requests, each with its own drafts in the batched step, answer what
    `deepseek generate` answers without drafts (streamed and not), and the metrics count the
    drafts."""
    for method, draft_tokens in (("lookup", "5"), ("mtp", "2")):
        speculative_server(method, draft_tokens)


def speculative_server(method, draft_tokens):
    s = Server(NANO, "--draft", method, "--draft-tokens", draft_tokens, key=None)
    try:
        prompt = ("class Stack:\n    def __init__(self):\n        self.items = []\n\n"
                  "    def push(self, item):\n        self.items.append(item)\n\n\n"
                  "class Queue:\n    def __init__(self):\n        self.items = []\n\n")
        prompts = [prompt, "def parse_args(argv):", prompt + "    def pop(self):\n"]
        want = [generate_cli(NANO, p, 40)["text"] for p in prompts]
        got = [None] * len(prompts)

        def one(k):
            if k == 1:
                pieces = s.client.completions.create(model="x", prompt=prompts[k], max_tokens=40,
                                                     temperature=0, stream=True)
                got[k] = "".join(c.choices[0].text for c in pieces)
            else:
                r = s.client.completions.create(model="x", prompt=prompts[k], max_tokens=40,
                                                temperature=0)
                got[k] = r.choices[0].text

        threads = [threading.Thread(target=one, args=(k,)) for k in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(len(prompts)):
            assert got[k] == want[k], (method, k, got[k], want[k])
        m = httpx.get(s.base + "/metrics").text
        proposed = int(next(l for l in m.splitlines() if l.startswith("deepseek_draft_tokens_total ")).split()[1])
        accepted = int(next(l for l in m.splitlines() if l.startswith("deepseek_draft_accepted_tokens_total ")).split()[1])
        assert 0 < accepted <= proposed, (method, accepted, proposed)
    finally:
        assert s.stop() == 0, s.output()


def test_smollm2():
    s = Server(SMOLLM2, key=None)
    try:
        r = s.client.completions.create(model="x", prompt="The capital of France is", max_tokens=3, temperature=0)
        assert "Paris" in r.choices[0].text, r.choices[0].text
        # Chat through the file's own template: the same tokens as generating from the rendered text.
        msgs = [{"role": "user", "content": "What is the capital of France?"}]
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            json.dump(msgs, f)
            f.flush()
            rendered = subprocess.run([str(BIN), "template", "--model", str(SMOLLM2), "--messages", f.name],
                                      check=True, capture_output=True, text=True).stdout
        want = generate_cli(SMOLLM2, rendered, 12)
        r = s.client.chat.completions.create(model="x", temperature=0, max_tokens=12, messages=msgs)
        assert r.choices[0].message.content == want["text"], (r.choices[0].message.content, want["text"])
        expect_error(400, lambda: s.client.completions.create(model="x", prompt="a", suffix="b", max_tokens=4),
                     param="suffix", contains=("fill-in-the-middle",))
        expect_error(400, lambda: s.client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "x"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), param="tools")
    finally:
        assert s.stop() == 0


def test_tool_calls(tmp):
    model = Path(tmp) / "v3-tiny"
    subprocess.run([str(BIN), "synth", "--preset", "v3-tiny", "--out", str(model),
                    "--tokenizer", str(ROOT / "assets/tokenizers/deepseek-v3")], check=True, capture_output=True)
    s = Server(model, key=None)
    try:
        tools = [
            {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "get_time", "description": "Local time",
                                              "parameters": {"type": "object", "properties": {}}}},
        ]
        msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
        for choice, names in ([{"type": "function", "function": {"name": "get_weather"}}, {"get_weather"}],
                              ["required", {"get_weather", "get_time"}]):
            for stream in (False, True):
                kw = dict(model="x", messages=msgs, tools=tools, tool_choice=choice, max_tokens=60, temperature=0)
                if stream:
                    calls, finish = {}, None
                    for ch in s.client.chat.completions.create(stream=True, **kw):
                        for tc in ch.choices[0].delta.tool_calls or []:
                            calls[tc.index] = tc
                        finish = ch.choices[0].finish_reason or finish
                    calls = list(calls.values())
                else:
                    r = s.client.chat.completions.create(**kw)
                    calls, finish = r.choices[0].message.tool_calls, r.choices[0].finish_reason
                    assert r.choices[0].message.content is None
                if finish == "tool_calls":
                    assert len(calls) == 1 and calls[0].function.name in names, calls
                    assert isinstance(json.loads(calls[0].function.arguments), dict)
                else:
                    assert finish == "length", finish  # random weights may not close the JSON in 60 tokens
        # The conversation continues with the tool's result through the template.
        r = s.client.chat.completions.create(model="x", max_tokens=4, temperature=0, messages=msgs + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}], tools=tools)
        assert r.usage.completion_tokens >= 1
        expect_error(400, lambda: s.client.chat.completions.create(
            model="x", messages=msgs, tools=tools, tool_choice={"type": "function", "function": {"name": "nope"}}),
            param="tool_choice")
    finally:
        assert s.stop() == 0


def main():
    failures = 0
    tests = [("nano", None), ("queue_full", test_queue_full), ("api_keys", test_api_keys),
             ("sigterm", test_sigterm_finishes_running_requests),
             ("tool_calls", None), ("speculative", test_speculative)]
    if SMOLLM2.exists():
        tests.append(("smollm2", test_smollm2))
    else:
        print(f"skipping smollm2: {SMOLLM2} not fetched (scripts/fetch_smollm2.py)")
    for name, fn in tests:
        t0 = time.time()
        try:
            if name == "nano":
                s = Server(NANO)
                try:
                    test_nano(s)
                finally:
                    assert s.stop() == 0, s.output()
            elif name == "tool_calls":
                with tempfile.TemporaryDirectory() as tmp:
                    test_tool_calls(tmp)
            else:
                fn()
            print(f"ok    {name} ({time.time() - t0:.1f}s)")
        except Exception:
            failures += 1
            print(f"FAIL  {name}")
            traceback.print_exc()
    if failures:
        sys.exit(f"{failures} server test(s) failed")
    print("server tests passed")


if __name__ == "__main__":
    main()
