"""`edgecls bench --count`: instructions per inference under qemu instead of a timed run.

A user without the board learns which model variant or target is cheaper, and, the counts being
deterministic, CI can hold them as a regression check. The report has the shape of a timed one
(same artifact, options and variant fields, so `edgecls report` compares it), with no timings and
an `instructions` section; its place is named after the emulated CPU (qemu-cortex-a72), so a count
never replaces a timed row of the same artifact.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from edgecls.bench.places import Place
from edgecls.errors import UsageError

COUNTED_RUNTIMES = ("tvm",)


def check_cpu_model(cpu: str | None, count: bool) -> str | None:
    from edgecls.targets import QEMU_AARCH64_CPUS
    if cpu is None:
        return None
    if not count:
        raise UsageError("--cpu-model goes with --count (other qemu runs use the target's CPU model)")
    if cpu not in QEMU_AARCH64_CPUS:
        raise UsageError(f"--cpu-model {cpu}: qemu-aarch64 models {', '.join(QEMU_AARCH64_CPUS)}")
    return cpu


def check_countable(place: Place, runtimes: tuple[str, ...], arch: str) -> None:
    """--count runs the artifact's own runner under qemu on this machine, and only that."""
    if place.kind != "emulated":
        raise UsageError(f"--count counts instructions under qemu: use it with --local --emulate on an "
                         f"artifact for an emulated arch (this artifact is for {arch}, this machine is "
                         f"{platform.machine()})" if place.kind == "local" else
                         "--count runs under qemu on this machine: use --local --emulate, not --board")
    if runtimes not in ((), COUNTED_RUNTIMES):
        raise UsageError("--count counts the artifact's TVM runner; ONNX Runtime and LiteRT are counted "
                         "by benchmarks/arm_instructions.py")


def count_report(artifact: Path, manifest: dict, place: Place, opts, batch: int, log) -> dict:
    """One bench report whose measurement is the instruction count of the batch's library."""
    from edgecls.artifact.batches import library_name
    from edgecls.bench.harness import make_report
    from edgecls.bench.instructions import count_artifact
    log(f"{place.name}: tvm: counting instructions of {library_name(batch)} under qemu")
    t0 = time.perf_counter()
    count = count_artifact(artifact, cpu=opts.count_cpu, model=library_name(batch), timeout=opts.timeout)
    report = make_report(artifact, manifest, place, "tvm", opts, None, {"threads": count.threads},
                         wall_s=time.perf_counter() - t0, batch=batch)
    report["board"] = {"name": f"qemu-{count.cpu}", "kind": "emulated", "host": "localhost",
                       "cpu_model": count.cpu}
    report["instructions"] = count.to_dict()
    report["batch"] = batch
    return report
