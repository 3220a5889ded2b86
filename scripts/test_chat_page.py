#!/usr/bin/env python3
"""The chat page at `/`, driven in a real browser (headless Chromium through chromedriver)
against `deepseek serve` on the bundled model with an API key:

- the page asks for the key; a wrong key is refused with the server's message shown, and a
  message sent with it shows the error in the reply (its text returns to the input box);
- with the right key the model's name appears, a reply streams in (text grows while the request
  runs) and ends with tokens/s; a second turn sends the history (more prompt tokens);
- a long reply, on a throttled connection so it streams for seconds, stops on "Stop": the text
  stops growing, the reply says "stopped", the server's batch empties, and the next message works;
- the system prompt and max tokens settings reach the request; code blocks render as code and
  model text never becomes markup; the conversation survives a reload;
- a screenshot is saved for a reader (target/chat-page.png).

Usage: scripts/test_chat_page.py [--binary target/release/deepseek] [--screenshot PATH]
Needs: chromium, chromium-driver (Debian) and selenium (scripts/requirements-browser.txt).
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
KEY = "page-test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def health(base):
    with urllib.request.urlopen(base + "health", timeout=5) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=str(ROOT / "target/release/deepseek"))
    ap.add_argument("--screenshot", default=str(ROOT / "target/chat-page.png"))
    args = ap.parse_args()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        sys.exit("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")

    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen(
        [args.binary, "serve", "--port", str(port), "--api-key", KEY, "--threads", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    driver = None
    try:
        deadline = time.time() + 60
        while True:
            try:
                health(base)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("server exited: " + server.stderr.read().decode(errors="replace"))
                if time.time() > deadline:
                    sys.exit("server did not start in 60 s")
                time.sleep(0.2)

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for a in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                  "--disable-gpu", "--no-first-run", "--disable-extensions"]:
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(service=Service(driver_bin), options=opts)
        run(driver, base, args.screenshot)
        print(f"chat page test passed (screenshot: {args.screenshot})")
    except Exception:
        if driver is not None:
            try:
                driver.save_screenshot(args.screenshot)
                print(f"screenshot of the failure: {args.screenshot}", file=sys.stderr)
                for entry in driver.get_log("browser"):
                    print("browser console:", entry.get("message"), file=sys.stderr)
            except Exception:
                pass
        raise
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def run(d, base, screenshot):
    wait = WebDriverWait(d, 30)
    el = lambda css: d.find_element(By.CSS_SELECTOR, css)
    els = lambda css: d.find_elements(By.CSS_SELECTOR, css)

    def replies():
        return els(".msg.assistant")

    def send(text):
        box = el("#input")
        box.clear()
        box.send_keys(text)
        # After the key dialog closes the page gives the box back its caret (Chrome can leave
        # the restored focus without one, so typing went nowhere).
        assert box.get_attribute("value") == text, "typing did not reach the message box"
        el("#send").click()

    def wait_reply_done(n):
        wait.until(lambda _: len(els(".msg.assistant.done")) >= n)
        return replies()[n - 1]

    # The page comes with a policy that lets only its own script run and talk to this server.
    with urllib.request.urlopen(base, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/html"), resp.headers["Content-Type"]
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp, csp
    d.get(base)

    # 1. The server wants a key: the page asks for it.
    wait.until(lambda _: el("#key-dialog").get_attribute("open") is not None)
    assert "API key" in el("#model").text, el("#model").text
    # A wrong key: refused, with the server's message.
    el("#key-input").send_keys("wrong-key")
    el("#key-ok").click()
    wait.until(lambda _: "refused" in el("#key-why").text)
    assert el("#key-dialog").get_attribute("open") is not None
    el("#key-cancel").click()
    wait.until(lambda _: el("#key-dialog").get_attribute("open") is None)
    # A message sent with the wrong key: the reply shows the error, the text comes back.
    send("def add(a, b):")
    r = wait_reply_done(1)
    err = r.find_element(By.CSS_SELECTOR, ".error").text
    assert "401" in err, err
    wait.until(lambda _: el("#key-dialog").get_attribute("open") is not None)
    assert el("#input").get_attribute("value") == "def add(a, b):"

    # 2. The right key: the model's name, a streamed reply with tokens/s.
    el("#key-input").send_keys(KEY)
    el("#key-ok").click()
    wait.until(lambda _: el("#model").text == "deepseek-coder-nano")
    el("#send").click()
    r = wait_reply_done(2)
    text1 = r.find_element(By.CSS_SELECTOR, ".content").text
    stats1 = r.find_element(By.CSS_SELECTOR, ".stats").text
    assert text1.strip(), "empty reply"
    assert "tok/s" in stats1 and "prompt" in stats1, stats1
    assert not r.find_elements(By.CSS_SELECTOR, ".error")
    prompt1 = prompt_tokens(stats1)

    # A second turn carries the first (the failed one is left out): more prompt tokens.
    send("Now write a test for it")
    r = wait_reply_done(3)
    prompt2 = prompt_tokens(r.find_element(By.CSS_SELECTOR, ".stats").text)
    assert prompt2 > prompt1 + 5, (prompt1, prompt2)

    # 3. Settings: a system prompt adds prompt tokens; max tokens caps the reply.
    el("#toggle-settings").click()
    el("#system").send_keys("You are a careful Python programmer who writes short functions.")
    mt = el("#max-tokens")
    mt.clear()
    mt.send_keys("5")
    el("#toggle-settings").click()
    send("Write a function")
    r = wait_reply_done(4)
    stats4 = r.find_element(By.CSS_SELECTOR, ".stats").text
    assert prompt_tokens(stats4) > prompt2 + 10, (prompt2, stats4)
    assert tokens(stats4) <= 5, stats4

    # 4. Stop a long reply. The connection is throttled so the reply streams for many seconds.
    el("#toggle-settings").click()
    mt.clear()
    mt.send_keys("2000")
    el("#toggle-settings").click()
    el("#new-chat").click()
    assert not replies()
    d.set_network_conditions(offline=False, latency=5, download_throughput=1500, upload_throughput=1 << 20)
    send("Write a long Python module with many functions")
    wait.until(lambda _: replies() and len(replies()[0].find_element(By.CSS_SELECTOR, ".content").text) > 0)
    content = lambda: replies()[0].find_element(By.CSS_SELECTOR, ".content").text
    first = content()
    wait.until(lambda _: len(content()) > len(first))  # still streaming: the text grows
    assert el("#stop").is_displayed() and not el("#send").is_displayed()
    el("#stop").click()
    r = wait_reply_done(1)
    stopped = r.find_element(By.CSS_SELECTOR, ".stats").text
    assert "stopped" in stopped, stopped
    length = len(content())
    time.sleep(1.0)
    assert len(content()) == length, "text kept growing after Stop"
    assert el("#send").is_displayed() and not el("#stop").is_displayed()
    d.delete_network_conditions()
    deadline = time.time() + 10
    while health(base)["running"] != 0:
        assert time.time() < deadline, "the server kept the stopped request running"
        time.sleep(0.1)

    # 5. The next message after a stop works.
    el("#toggle-settings").click()
    mt.clear()
    mt.send_keys("48")
    el("#toggle-settings").click()
    send("def fibonacci(n):")
    r = wait_reply_done(2)
    assert not r.find_elements(By.CSS_SELECTOR, ".error")

    # 6. Code blocks render as code; model text never becomes markup.
    d.execute_script(
        "const div = document.createElement('div'); div.id = 'render-check';"
        "document.body.appendChild(div);"
        "renderContent(div, 'Here:\\n```python\\ndef f(x):\\n    return x\\n```\\n<img src=x onerror=alert(1)> and `y`');"
    )
    check = el("#render-check")
    code = check.find_element(By.CSS_SELECTOR, ".codeblock pre code").text
    assert code == "def f(x):\n    return x", repr(code)
    assert check.find_element(By.CSS_SELECTOR, ".codeblock .lang").text == "python"
    assert not check.find_elements(By.TAG_NAME, "img"), "model text became markup"
    assert "<img src=x" in check.text
    d.execute_script("document.getElementById('render-check').remove()")

    # 7. The conversation survives a reload (and the key is not asked again).
    n = len(els(".msg"))
    d.refresh()
    wait.until(lambda _: el("#model").text == "deepseek-coder-nano")
    assert len(els(".msg")) == n, (len(els(".msg")), n)
    assert el("#key-dialog").get_attribute("open") is None

    # A reader's look: a short exchange with a code block.
    el("#new-chat").click()
    send("def is_prime(n):")
    wait_reply_done(1)
    d.save_screenshot(screenshot)

    console_errors = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                      and "401" not in e.get("message", "")]
    assert not console_errors, console_errors


def prompt_tokens(stats):
    import re
    m = re.search(r"prompt (\d+) tokens", stats)
    assert m, stats
    return int(m.group(1))


def tokens(stats):
    import re
    m = re.search(r"^(\d+) tokens?", stats)
    assert m, stats
    return int(m.group(1))


if __name__ == "__main__":
    main()
