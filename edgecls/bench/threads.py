"""How many threads a benchmark uses when `--threads` is not given: every core of the target's
big cluster (or every core), so a report compares with what users of the board get.

Left to themselves the runtimes disagree: TVM's pool takes half the CPUs on x86 (it assumes
hyper-threading: 1 thread on a 2-core machine, which the reports then showed as `thr 1`), ONNX
Runtime the physical cores, LiteRT one thread. So the count is decided here and passed to every
runtime, and the report states it and why (`options.threads`, `options.threads_how`).

- `--threads N`: N. `--cores LIST`: one thread per listed core; `--cores all`: one per CPU.
- A board of a target with a `big` cluster (else an `all` cluster) in its TOML: one thread per core
  of it, pinned there (on an RK3399 the two A72s, not the four A53s).
- An emulated place (qemu here, or an emulated board): as many threads as the cluster, unpinned
  (the host's CPUs are not the board's).
- A target with no clusters (x86-host): every CPU the place may run on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ThreadChoice:
    threads: int | None
    cores: list[int] | None  # pinning; None: none
    how: str


def _cluster(target: dict) -> tuple[str, list[int]] | None:
    clusters = target.get("cpus") or {}
    for name in ("big", "all"):
        if clusters.get(name):
            return name, list(clusters[name])
    return None


def choose_threads(threads: int | None, cores: list[int] | None, target: dict, place,
                   cores_spec: str | None = None) -> ThreadChoice:
    """The threads (and pinning) a benchmark on `place` uses; see the module doc."""
    if threads:
        return ThreadChoice(threads, cores, "given (--threads)")
    if cores:
        return ThreadChoice(len(cores), cores, f"one per core given (--cores {','.join(map(str, cores))})")
    cluster = None if cores_spec == "all" else _cluster(target)
    emulated = place.kind == "emulated" or bool(place.binary_prefix()) or bool(
        getattr(getattr(place, "board", None), "emulator", None))
    if cluster is not None:
        name, ids = cluster
        where = f"{target['name']}'s {name} cluster (cpus {','.join(map(str, ids))})"
        if emulated:
            return ThreadChoice(len(ids), None, f"default: one per core of {where}, unpinned under emulation")
        return ThreadChoice(len(ids), ids, f"default: one per core of {where}, pinned there")
    count = place.cpu_count()
    return ThreadChoice(count, None, f"default: one per CPU of {place.name} ({count})")
