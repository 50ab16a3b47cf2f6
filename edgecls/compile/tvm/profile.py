"""Time per kernel of a host-arch model.so: the Relax VM with an instrument around every call.

TVM 0.27 dropped the Relax VM's profiler (VirtualMachine(profile=True) and vm.profile are gone);
what is left is `set_instrument`, a function the VM calls before and after each Call instruction
with the callee's symbol. Timing between those two calls gives each kernel's time, plus the
instrument's own cost: measured on a 64x64 MobileNetV2 (AMD Zen 5, 1 thread), about 0.5 us per
call (the floor of vm.builtin.null_value), and the instrumented run takes ~2x the plain run at
0.7 ms per inference, ~1.1x at 20 ms. So the plain run's median is the figure shares are taken
of, and the instrumented run is reported beside it.

Run as a worker process (`python -m edgecls.compile.tvm.profile ...`, printing JSON), so that the
thread count is fixed before TVM's thread pool exists, as the native runner fixes it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

VM_BUILTIN = "vm.builtin."


def _timed_runs(main, x, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        main(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def profile_library(lib_path: str, x: np.ndarray, runs: int = 20, warmup: int = 3) -> dict:
    """Per-kernel time of model.so on input x: {"plain_ms": [...], "instrumented_ms": [...],
    "calls": {symbol: [calls, total ns]}} over `runs` instrumented inferences (after `warmup`)."""
    from edgecls.compile.tvm.core import load_tvm
    tvm = load_tvm()
    from tvm import relax
    vm = relax.VirtualMachine(tvm.runtime.load_module(lib_path), tvm.cpu())
    main, arg = vm["main"], tvm.runtime.tensor(np.ascontiguousarray(x))
    _timed_runs(main, arg, warmup)
    plain = _timed_runs(main, arg, runs)
    calls: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    clock, started = time.perf_counter_ns, [0]

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[0] = clock()
        else:
            entry = calls[symbol]
            entry[0] += 1
            entry[1] += clock() - started[0]
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    vm.set_instrument(instrument)
    _timed_runs(main, arg, 1)  # the first instrumented call pays for wrapping the function
    calls.clear()
    instrumented = _timed_runs(main, arg, runs)
    return {"plain_ms": plain, "instrumented_ms": instrumented, "runs": runs, "calls": dict(calls)}


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m edgecls.compile.tvm.profile")
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cores", default="")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.threads > 0:  # read when TVM creates its pool, i.e. before the first parallel kernel
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    result = profile_library(args.model, np.load(args.input, allow_pickle=False), args.runs, args.warmup)
    result["threads"] = args.threads or None
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
