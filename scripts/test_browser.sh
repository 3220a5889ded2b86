#!/usr/bin/env bash
# The chat page in a real browser: headless Chromium through chromedriver, driven by selenium
# (scripts/test_chat_page.py) against `deepseek serve` on the bundled model. Installs Debian's
# chromium and chromium-driver where missing; where they cannot be installed it says so and
# exits 0, so the rest of the test run does not depend on a browser. Saves a screenshot of the
# page to target/chat-page.png.
#
# Usage: scripts/test_browser.sh   (after `cargo build --release` and with target/py-serve made)
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "test_browser: SKIPPED ($1)"; exit 0; }

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo -n"
  { $sudo_cmd apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 ||
    { $sudo_cmd apt-get update -q >/dev/null 2>&1 &&
      $sudo_cmd apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; } ||
    skip "apt cannot install chromium and chromium-driver"
fi
if [ ! -x target/py-serve/bin/python ]; then
  python3 -m venv target/py-serve
fi
target/py-serve/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-browser.txt
# selenium must not try to fetch a browser or driver of its own: the system's are named.
SE_OFFLINE=true target/py-serve/bin/python scripts/test_chat_page.py
