#!/usr/bin/env python3
"""How often drafts are accepted: `deepseek generate --json` greedy after ten short code prompts
(the list `mtp_drafts_of_the_bundled_model_are_mostly_accepted` in
crates/deepseek-engine/tests/speculative.rs uses), for each draft count K; prints tokens per
step (the prompt's step counted), the share of first drafts accepted and of all drafts.

    scripts/draft_acceptance.py [--model DIR] [--draft mtp|lookup] [--tokens 64] [K ...]
"""
import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = ["def fibonacci(n):\n", "import os\nimport sys\n\n\ndef main():\n",
           "class Stack:\n    def __init__(self):\n", "def is_prime(n):\n", "class BankAccount:\n",
           "def read_lines(path):\n", "def average(numbers):\n", "def count_words(text):\n",
           "class Point:\n    def __init__(self, x, y):\n", "def merge_sorted(a, b):\n"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ks", nargs="*", type=int, default=[1, 2, 3, 4], metavar="K")
    p.add_argument("--model", default=os.path.join(ROOT, "models/deepseek-coder-nano"))
    p.add_argument("--draft", default="mtp", choices=["mtp", "lookup"])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--deepseek", default=os.path.join(ROOT, "target/release/deepseek"))
    a = p.parse_args()
    for k in a.ks:
        tokens = steps = proposed = accepted = draft_steps = first = 0
        for prompt in PROMPTS:
            run = subprocess.run([a.deepseek, "generate", "-m", a.model, "--prompt", prompt, "-n", str(a.tokens),
                                  "--draft", a.draft, "--draft-tokens", str(k), "--json"], capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(run.stderr)
            d = json.loads(run.stdout)
            tokens += d["completion_tokens"]
            steps += d["steps"] + 1
            proposed += d["draft_proposed"]
            accepted += d["draft_accepted"]
            draft_steps += d["draft_steps"]
            first += d["first_draft_accepted"]
        print(f"K={k}: {tokens} tokens in {steps} steps = {tokens / steps:.2f} per step; first drafts accepted "
              f"{first}/{draft_steps} ({100 * first / max(1, draft_steps):.0f}%); drafts {accepted}/{proposed}")


if __name__ == "__main__":
    main()
