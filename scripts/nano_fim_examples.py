#!/usr/bin/env python3
"""The model card's fourteen hand-written fill-in-the-middle holes, run through the engine.

Prints each greedy fill (`deepseek generate --suffix`, 30 tokens at most) and counts the holes
whose fill starts with the expected line. The first six are the holes the twelfth-session model
was shown with; none is taken from the training data.

    cargo build --release && python3 scripts/nano_fim_examples.py [MODEL] [--bin target/release/deepseek]
"""
import argparse
import json
import os
import subprocess

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# (prefix, suffix, the line that belongs in the hole)
CASES = [
    ("import os\n\n\ndef read_file(path):\n    with open(path) as f:\n        ", "\n    return data\n", "data = f.read()"),
    ("def add(a, b):\n    ", "\n\n\ndef sub(a, b):\n    return a - b\n", "return a + b"),
    ("def total(items):\n    result = 0\n    for item in items:\n        ", "\n    return result\n", "result += item"),
    ("class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n        ",
     "\n\n    def pop(self):\n        return self.items.pop()\n", "self.items.append(item)"),
    ("def count_words(text):\n    counts = {}\n    for word in text.split():\n        ", "\n    return counts\n",
     "counts[word] = counts.get(word, 0) + 1"),
    ("def factorial(n):\n    if n == 0:\n        return 1\n    ", "\n", "return n * factorial(n - 1)"),
    ("import json\n\n\ndef read_config(path):\n    with open(path) as f:\n        ", "\n    return config\n",
     "config = json.load(f)"),
    ("def squares(n):\n    return [", "]\n", "i * i for i in range(n)"),
    ("def max_value(values):\n    best = values[0]\n    for v in values:\n        if v > best:\n            ",
     "\n    return best\n", "best = v"),
    ("class Point:\n    def __init__(self, x, y):\n        ", "\n        self.y = y\n", "self.x = x"),
    ("def average(numbers):\n    ", "\n", "return sum(numbers) / len(numbers)"),
    ("def is_palindrome(s):\n    ", "\n", "return s == s[::-1]"),
    ("def greet(name):\n    return ", "\n\n\nprint(greet('world'))\n", "f'Hello, {name}!'"),
    ("def evens(numbers):\n    result = []\n    for n in numbers:\n        if n % 2 == 0:\n            ", "\n    return result\n",
     "result.append(n)"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=os.path.join(ROOT, "models", "deepseek-coder-nano"))
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "deepseek"))
    args = ap.parse_args()
    right = 0
    for prefix, suffix, want in CASES:
        out = subprocess.run([args.bin, "generate", "-m", args.model, "--prompt", prefix, "--suffix", suffix, "-n", "30", "--json"],
                             capture_output=True, text=True, check=True)
        fill = json.loads(out.stdout)["text"]
        ok = fill.split("\n")[0].strip() == want
        right += ok
        print(f"{'right' if ok else 'wrong'}  {prefix.strip().splitlines()[-1]!r:45} → {fill!r}")
    print(f"{right} of {len(CASES)} holes filled with the expected line")


if __name__ == "__main__":
    main()
