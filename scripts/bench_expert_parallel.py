#!/usr/bin/env python3
"""Expert parallelism on one machine, side by side (#33): `deepseek bench` in one process with
T threads against `mpirun -np N deepseek --expert-parallel --threads 1 bench` on the same file,
alternating, with each process's peak RSS (GNU time). On one machine the ranks share one memory
bus, so this measures the cost of the split (the exchanges, the serial part on rank 0, the
imbalance per token), not the gain of separate machines (EXPERT_PARALLEL.md has that
arithmetic).

usage: scripts/bench_expert_parallel.py MODEL [--ranks 2] [--threads 2] [--rounds 3]
       [--placement contiguous] [--bin target/release/deepseek]   (a build with --features mpi)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd, rss_file):
    return ["/usr/bin/time", "-f", "%M", "-o", rss_file] + cmd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--placement", default="contiguous")
    ap.add_argument("--bin", default=str(ROOT / "target/release/deepseek"))
    ap.add_argument("--bench-args", default="--prompt 64 --gen 32 -r 3")
    a = ap.parse_args()
    bench = ["bench", "--model", a.model, "--json"] + a.bench_args.split()
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    single, split = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            rss = f"{tmp}/single"
            out = subprocess.run(timed([a.bin, "--threads", str(a.threads)] + bench, rss),
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(out.stderr)
            d = json.loads(out.stdout)
            single.append((d, int(open(rss).read().split()[-1]) * 1024))
            # Each rank writes its own peak RSS file, named by its rank.
            rank_cmd = ("exec /usr/bin/time -f %M -o " + tmp + "/rank.$OMPI_COMM_WORLD_RANK "
                        + " ".join([a.bin, "--expert-parallel", "--expert-placement", a.placement,
                                    "--threads", "1"] + bench))
            out = subprocess.run(["mpirun", "--oversubscribe", "--bind-to", "none", "-np",
                                  str(a.ranks), "sh", "-c", rank_cmd],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(out.stderr)
            d = json.loads(out.stdout)
            ranks = [int(open(f"{tmp}/rank.{r}").read().split()[-1]) * 1024 for r in range(a.ranks)]
            split.append((d, ranks))
    med = lambda v: statistics.median(v)
    tg1 = [d["decode_tok_s"] for d, _ in single]
    tgn = [d["decode_tok_s"] for d, _ in split]
    pp1 = [d["prefill_tok_s"] for d, _ in single]
    ppn = [d["prefill_tok_s"] for d, _ in split]
    rss1 = med([r for _, r in single])
    rssn = [med([r[i] for _, r in split]) for i in range(a.ranks)]
    ep = split[-1][0]["expert_parallel"]
    print(f"model: {a.model}")
    print(f"one process, {a.threads} threads: decode {med(tg1):.1f} tok/s [{min(tg1):.1f}-{max(tg1):.1f}], "
          f"prefill {med(pp1):.0f} tok/s, peak RSS {rss1 / 2**30:.2f} GiB")
    print(f"mpirun -np {a.ranks}, 1 thread each ({a.placement}): decode {med(tgn):.1f} tok/s "
          f"[{min(tgn):.1f}-{max(tgn):.1f}] = {med(tgn) / med(tg1):.2f}x, prefill {med(ppn):.0f} tok/s "
          f"= {med(ppn) / med(pp1):.2f}x")
    for r, b in enumerate(rssn):
        print(f"  rank {r}: peak RSS {b / 2**30:.2f} GiB = {b / rss1:.2f}x one process")
    print(f"  per decoded token: {ep['moe_layers_per_token']:.0f} MoE layers, "
          f"{ep['messages_per_token']:.1f} messages to the other ranks (as many back), "
          f"{ep['bytes_sent_per_token'] / 1e3:.1f} KB out, {ep['bytes_received_per_token'] / 1e3:.1f} KB back, "
          f"rank 0 waits {ep['exchange_s_per_token'] * 1e3:.2f} ms for them")


if __name__ == "__main__":
    main()
