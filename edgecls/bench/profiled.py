"""`edgecls bench --profile`: where an inference's time goes, kernel by kernel, on this machine.

The artifact's model.so runs in TVM's Relax VM with an instrument around every call
(edgecls/compile/tvm/profile.py, in its own process so the thread count is fixed first). The
report has the shape of a timed one; its place is named `<place>-profile` (the plain runs are the
in-process VM's, not the native runner's, so they never replace a timed row) and its `profile`
section lists every kernel: calls and milliseconds per inference (instrumented), and its share of
all the calls' time (the shares add up to 1). VM bookkeeping (vm.builtin.*: allocations, shape
checks) is one row: with the instrument's ~0.5-3 us per call it is what a tiny model's profile
is made of, and next to nothing at 224x224. The plain (uninstrumented) median is reported too. Under qemu, time says nothing about a board: `--count` lists instructions per
kernel there instead.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from edgecls.bench.places import Place
from edgecls.errors import ArtifactError, UsageError

VM_ROW = "(vm builtins: allocation, shape checks)"
MULTI_WORD_OPS = ("layer_norm", "group_norm", "rms_norm", "batch_matmul", "adaptive_avg_pool", "avg_pool",
                  "max_pool", "log_softmax", "fast_softmax", "strided_slice")


def check_profilable(place: Place, runtimes: tuple[str, ...]) -> None:
    if place.kind != "local":
        raise UsageError("--profile times kernels on this machine (--local, an artifact for this arch); under "
                         "qemu time means nothing: use --local --emulate --count for instructions per kernel")
    if runtimes not in ((), ("tvm",)):
        raise UsageError("--profile times the TVM kernels of the artifact; drop --runtime or give --runtime tvm")


def kernel_kind(name: str) -> str:
    """What a kernel computes, from TVM's fused name: fused_conv2d25_add3_relu1 -> conv2d,
    fused_matmul4_add7 -> matmul, layer_norm2 -> layer_norm, vm.builtin.* -> vm."""
    if name == VM_ROW:
        return "vm"
    body = name.removeprefix("fused_")
    for words in MULTI_WORD_OPS:  # ops whose own name has an underscore
        if body.startswith(words):
            return words
    return re.sub(r"\d+$", "", body.split("_")[0]) or name


def summarize(raw: dict) -> dict:
    """The worker's raw calls -> per-inference rows (sorted, most time first) and totals."""
    runs = raw["runs"]
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for symbol, (calls, ns) in raw["calls"].items():
        row = per_kernel[VM_ROW if symbol.startswith("vm.builtin.") else symbol]
        row[0] += calls
        row[1] += ns
    timed_ns = sum(ns for _, ns in per_kernel.values()) or 1
    kernels = [{"name": name, "kind": kernel_kind(name), "calls": round(calls / runs),
                "total_ms": round(ns / runs / 1e6, 4), "share": round(ns / timed_ns, 4)}
               for name, (calls, ns) in per_kernel.items()]
    kernels.sort(key=lambda k: -k["total_ms"])
    kinds: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for k in kernels:
        kinds[k["kind"]][0] += k["calls"]
        kinds[k["kind"]][1] += k["total_ms"]
    kernels_ms = timed_ns / runs / 1e6
    by_kind = sorted(({"kind": kind, "calls": c, "total_ms": round(ms, 4), "share": round(ms / kernels_ms, 4)}
                      for kind, (c, ms) in kinds.items()), key=lambda k: -k["total_ms"])
    return {"runs": runs, "inference_ms": round(statistics.median(raw["plain_ms"]), 4),
            "instrumented_ms": round(statistics.median(raw["instrumented_ms"]), 4),
            "kernels_ms": round(sum(k["total_ms"] for k in kernels), 4), "kernels": kernels, "kinds": by_kind}


def _timings(plain_ms: list[float]) -> dict:
    ordered = sorted(plain_ms)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"median": statistics.median(ordered), "mean": statistics.fmean(ordered), "min": ordered[0],
            "max": ordered[-1], "p90": pick(0.9), "p99": pick(0.99), "runs": plain_ms}


def profile_report(artifact: Path, manifest: dict, place: Place, opts, cores, remote_dir: str, batch: int,
                   log) -> dict:
    """One bench report whose measurement is the per-kernel profile of the batch's library."""
    from edgecls.artifact.batches import input_name, library_name
    from edgecls.bench.harness import _fail_line, make_report
    argv = [sys.executable, "-m", "edgecls.compile.tvm.profile", "--model", library_name(batch),
            "--input", input_name(batch), "--runs", str(max(opts.runs, 1)), "--warmup", str(opts.warmup),
            "--threads", str(opts.threads or 0), "--cores", ",".join(map(str, cores or []))]
    log(f"{place.name}: tvm: profiling the kernels of {library_name(batch)}")
    t0 = time.perf_counter()
    proc = place.run(argv, cwd=remote_dir, timeout=opts.timeout)
    if proc.returncode != 0:
        raise ArtifactError(f"profiling {library_name(batch)} failed: {_fail_line(proc)}")
    raw = json.loads(proc.stdout)
    measured = {"threads": raw.get("threads"), "timings_ms": _timings(raw["plain_ms"]),
                "bench": {"fps": round(1000 / statistics.median(raw["plain_ms"]), 3)}}
    report = make_report(artifact, manifest, place, "tvm", opts, cores, measured,
                         wall_s=time.perf_counter() - t0, batch=batch)
    report["board"] = {**place.describe(), "name": f"{place.name}-profile"}
    report["runtime_version"] = "tvm relax vm (python, instrumented)"
    report["profile"] = summarize(raw)
    report["batch"] = batch
    return report
