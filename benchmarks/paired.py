"""Paired A/B timing of host model.so builds: is a schedule change faster, on a noisy machine?

Why paired: on the shared 2-CPU AMD EPYC the same build's median moves by 15-40% from one second
to the next (rounds of 4.5 ms and 7 ms for one MobileNetV2 build at 2 threads), more than the
change being judged. Each build runs in its own kept process (timing.Worker, stopped while
another is timed); every round times each build once, in turn, and the figure is the median over
rounds of each build's round median divided by the first build's median of the same round, so a
slow second hits both sides of the ratio alike.

    .venv/bin/python benchmarks/paired.py --threads 2 --rounds 10 --input x.npy before/model.so after/model.so
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import Worker  # noqa: E402


def paired_ratios(libs: list[Path], threads: int, rounds: int, xnpy: Path, calls: int = 15) -> dict:
    """{lib: {"median_ms", "min_ms", "round_ms": [...], "paired_ratio"}}; ratios against libs[0]."""
    workers = {lib: Worker("tvm", lib, threads, xnpy) for lib in libs}
    rounds_ms = {lib: [] for lib in libs}
    every = {lib: [] for lib in libs}
    try:
        for _ in range(rounds):
            for lib, w in workers.items():
                w.time(2)  # warm the caches after the other build's turn
                ms = w.time(calls)
                every[lib] += ms
                rounds_ms[lib].append(statistics.median(ms))
    finally:
        for w in workers.values():
            w.close()
    base = rounds_ms[libs[0]]
    return {lib: {"median_ms": round(statistics.median(every[lib]), 3), "min_ms": round(min(every[lib]), 3),
                  "round_ms": [round(x, 2) for x in rounds_ms[lib]],
                  "paired_ratio": round(statistics.median(a / b for a, b in zip(rounds_ms[lib], base)), 3)}
            for lib in libs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("libs", nargs="+", type=Path, help="model.so files; ratios are against the first")
    ap.add_argument("--input", type=Path, required=True, help="input tensor (.npy) every build takes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    for lib, r in paired_ratios(args.libs, args.threads, args.rounds, args.input).items():
        print(f"{args.threads} thread(s)  median {r['median_ms']:8.3f} ms  min {r['min_ms']:8.3f}  "
              f"paired ratio {r['paired_ratio']:.3f}  {lib}", flush=True)


if __name__ == "__main__":
    main()
