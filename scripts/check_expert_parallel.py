#!/usr/bin/env python3
"""Expert parallelism over MPI gives the single process's logits and greedy tokens (#33).

For every MoE checkpoint (tests/fixtures, ../shared/fixtures where present, the bundled model):
`deepseek forward` in prefill and in decode mode, and greedy `deepseek generate` (with and
without MTP drafts where the model has a module), alone and under `mpirun -np 2` and `-np 4`
with --expert-parallel (each placement). Logits must agree within 1e-5
(float32; the ranks' partial sums add in another order), tokens exactly.

usage: scripts/check_expert_parallel.py [BIN]   (run by scripts/test_mpi.sh; BIN defaults to
target/release/deepseek built with --features mpi)
"""
import array
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/release/deepseek"
TOL = 1e-5
MPIRUN = ["mpirun", "--oversubscribe", "--bind-to", "none", "-np"]


def moe_dirs():
    dirs = []
    for root in [ROOT / "tests/fixtures", ROOT.parent / "shared/fixtures"]:
        for d in sorted(root.glob("*/config.json")) if root.exists() else []:
            if json.loads(d.read_text()).get("n_routed_experts"):
                dirs.append(d.parent)
    dirs.append(ROOT / "models/deepseek-coder-nano")
    return dirs


def prompt_of(d):
    p = d / "prompts.json"
    if p.exists():
        return max(json.loads(p.read_text())["prompts"], key=len)[:40]
    return [0] + [(i * 7919 + 13) % 4000 + 1 for i in range(30)]


def logits(path):
    b = path.read_bytes()
    n = struct.unpack("<Q", b[:8])[0]
    t = json.loads(b[8 : 8 + n])["logits"]
    s, e = t["data_offsets"]
    a = array.array("f")
    a.frombytes(b[8 + n + s : 8 + n + e])
    return a


def run(ranks, placement, args):
    cmd = [str(BIN), "--threads", "1"]
    if ranks:
        cmd = MPIRUN + [str(ranks)] + cmd + ["--expert-parallel", "--expert-placement", placement]
    r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        sys.exit(f"FAILED: {' '.join(cmd + args)}\n{r.stderr[-3000:]}")
    return r.stdout


def main():
    dirs = moe_dirs()
    assert len(dirs) >= 5, dirs
    setups = [(2, "contiguous"), (4, "contiguous"), (2, "even"), (4, "round-robin")]
    worst = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for d in dirs:
            ids = ",".join(map(str, prompt_of(d)))
            has_mtp = json.loads(run(0, "", ["info", "--model", str(d), "--json"]))["mtp_module"]

            def outputs(ranks, placement):
                got = {}
                for mode in ["prefill", "decode"]:
                    out = tmp / f"{mode}-{ranks}.safetensors"
                    run(ranks, placement, ["forward", "--model", str(d), "--token-ids", ids,
                                           "--mode", mode, "--out", str(out)])
                    got[mode] = logits(out)
                gen = ["generate", "--model", str(d), "--token-ids", ids, "-n", "12",
                       "--temperature", "0", "--json"]
                got["tokens"] = json.loads(run(ranks, placement, gen))["token_ids"]
                if has_mtp:
                    drafted = json.loads(run(ranks, placement, gen + ["--draft", "mtp"]))
                    got["mtp_tokens"] = drafted["token_ids"]
                return got

            want = outputs(0, "contiguous")
            for ranks, placement in setups:
                got = outputs(ranks, placement)
                what = f"{d.name}, mpirun -np {ranks} ({placement})"
                for mode in ["prefill", "decode"]:
                    diff = max(abs(x - y) for x, y in zip(want[mode], got[mode]))
                    worst = max(worst, diff)
                    if diff > TOL:
                        sys.exit(f"FAILED: {what}: {mode} logits differ by {diff:.3g}")
                for k in ["tokens", "mtp_tokens"]:
                    if want.get(k) != got.get(k):
                        sys.exit(f"FAILED: {what}: greedy {k}: {got.get(k)} != {want.get(k)}")
            print(f"ok  {d.name}: {len(setups)} setups, prefill/decode logits and greedy tokens equal")
    print(f"expert parallelism: {len(dirs)} checkpoints, largest logit difference {worst:.2g} (bound {TOL})")

    # More ranks than the bundled model's 8 experts: one line naming the counts, a prompt exit.
    r = subprocess.run(MPIRUN + ["9", str(BIN), "--expert-parallel", "--threads", "1", "generate",
                                 "--prompt", "def f(", "-n", "2"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode == 0 or "9 ranks for 8 routed experts" not in r.stderr:
        sys.exit(f"FAILED: mpirun -np 9 on 8 experts: exit {r.returncode}\n{r.stderr[-2000:]}")
    print("ok  more ranks than experts: refused, naming the counts")


if __name__ == "__main__":
    main()
