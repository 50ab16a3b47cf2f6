"""Instructions per inference under qemu-user: the ARM speed figure that needs no board.

qemu time says nothing about a board, but the number of guest instructions a runner executes is
exact and repeatable. The project's own TCG plugin (qemu/insn_count.c, built here with the host C
compiler) counts executed instructions per translated block; the artifact's runner runs once with
1 inference and once with 3 under the target's qemu CPU model, and

    per inference = (count of 3 - count of 1) / 2

so loading, set-up and the first (cold) run cancel out. Measured: repeat counts agree to a few
hundred instructions (the runner formats its timings and reads /proc outside the inferences).
The runner dumps its memory map (EDGECLS_RUNNER_MAPS), so each block's address is named by the
model.so kernel (or library) it lies in: the top kernels by instructions come with the total.

Counting is exact with one guest thread (the plugin's inline adds are not atomic): the runner runs
with --threads 1. Runtimes that start helper threads anyway (ONNX Runtime) are counted with
count_process(per_thread=True): the plugin then also counts each guest thread exactly on its own,
and a thread's count (the main thread is vcpu 0) is the figure. An instruction count is not a cycle count (no caches, no pipeline): compare
variants and targets by it, not boards.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecls.artifact.package import temp_dir_beside
from edgecls.artifact.runtime_libs import cache_dir
from edgecls.errors import ArtifactError, ToolchainError

PLUGIN_SOURCE = Path(__file__).resolve().parent / "qemu" / "insn_count.c"
CFLAGS = ["-O2", "-shared", "-fPIC", "-Wall"]
MAPS_ENV = "EDGECLS_RUNNER_MAPS"  # the runner copies /proc/self/maps there after loading the model
COUNTED_RUNS = (1, 3)


def plugin_path(cc: str = "gcc") -> Path:
    """The built plugin, compiled into the cache on first use (keyed by source and compiler)."""
    if shutil.which(cc) is None:
        raise ToolchainError(f"C compiler '{cc}' not found; instruction counts need it to build their "
                             f"qemu plugin (apt-get install gcc)")
    source = PLUGIN_SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / "qemu-plugins" / f"insn_count-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out, ".build-")
    try:
        built = tmp / out.name
        proc = subprocess.run([cc, *CFLAGS, "-o", str(built), str(PLUGIN_SOURCE)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ToolchainError(f"{cc} failed to build the qemu plugin: {(proc.stderr or proc.stdout).strip()[:300]}")
        os.replace(built, out)  # atomic: a cache entry is whole or absent
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@dataclass
class BlockCounts:
    """One counted process: its total and (vaddr, instructions, executions) per block; with
    per-thread counting also each guest thread's exact count (vcpu index -> instructions)."""

    total: int
    vaddr: np.ndarray
    insns: np.ndarray  # instructions executed in each block: size x executions
    threads: dict[int, int] = field(default_factory=dict)  # empty unless counted per thread

    @classmethod
    def read(cls, path: Path) -> "BlockCounts":
        lines = path.read_text().splitlines()
        if not lines or not lines[0].startswith("total "):
            raise ArtifactError(f"the instruction counter wrote no total to {path}")
        threads = {int(ln.split()[1]): int(ln.split()[2]) for ln in lines[1:] if ln.startswith("vcpu ")}
        rows = [ln.split() for ln in lines[1 + len(threads):]]
        vaddr = np.array([int(r[0], 16) for r in rows], dtype=np.uint64)
        insns = np.array([int(r[1]) * int(r[2]) for r in rows], dtype=np.int64)
        # The plugin's total and block counters are inline adds, which race when guest threads run
        # at once (measured: 18.1 M counted of 24.1 M executed by two threads); the per-thread
        # counts are exact, so their sum is the total when there are some.
        total = sum(threads.values()) if threads else int(lines[0].split()[1])
        return cls(total, vaddr, insns, threads)

    @property
    def main_thread(self) -> int:
        """The main thread's count (vcpu 0 in qemu-user); needs per-thread counting."""
        if 0 not in self.threads:
            raise ArtifactError("no per-thread counts: count the process with per_thread=True")
        return self.threads[0]


def count_process(argv: list[str], *, env: dict | None = None, cwd: str | None = None,
                  timeout: float = 3600, per_thread: bool = False) -> tuple[BlockCounts, subprocess.CompletedProcess]:
    """Run a qemu-user command line (argv[0] is qemu) with the counter loaded; `per_thread` also
    counts each guest thread exactly (BlockCounts.threads, .main_thread), at some speed cost."""
    if not argv or not Path(argv[0]).name.startswith("qemu-"):
        raise ToolchainError(f"instruction counts run under qemu-user; '{argv[0] if argv else ''}' is not qemu")
    with tempfile.TemporaryDirectory(prefix="edgecls-count-") as tmp:
        out = Path(tmp) / "blocks.txt"
        args = f"{plugin_path()},out={out}" + (",per_thread=on" if per_thread else "")
        cmd = [argv[0], "-plugin", args, *argv[1:]]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        except FileNotFoundError as exc:
            raise ToolchainError(f"cannot start {argv[0]}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"counted run did not finish within {timeout:.0f} s") from None
        if not out.is_file():
            raise ArtifactError(f"counted run wrote no counts (exit {proc.returncode}): "
                                f"{(proc.stderr.strip().splitlines() or [''])[-1][:200]}")
        return BlockCounts.read(out), proc


@dataclass
class Mapping:
    start: int
    end: int
    path: str
    bias: int  # load address of the file's offset 0: symbol value + bias = runtime address


def read_maps(text: str) -> list[Mapping]:
    """Executable file mappings of a /proc/self/maps dump, with each file's load bias."""
    rows = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            rows.append((lo, hi, parts[1], int(parts[2], 16), parts[5].strip()))
    bias = {}
    for lo, _hi, _perms, offset, path in rows:
        if offset == 0:
            bias[path] = min(bias.get(path, lo), lo)
    return [Mapping(lo, hi, path, bias.get(path, lo - offset))
            for lo, hi, perms, offset, path in rows if "x" in perms]


def nm_tool(triple: str = "") -> str:
    for tool in ([f"{triple}-nm"] if triple else []) + ["llvm-nm", "nm"]:
        if shutil.which(tool):
            return tool
    raise ToolchainError("no 'nm' found to name the counted kernels; apt-get install binutils")


@functools.lru_cache(maxsize=8)
def function_symbols(lib: Path, nm: str) -> tuple[np.ndarray, list[str]]:
    """(sorted addresses, names) of the functions a library defines; read once for both counted
    runs of an artifact."""
    proc = subprocess.run([nm, "--defined-only", "-n", str(lib)], capture_output=True, text=True, timeout=120)
    addrs, names = [], []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    return np.array(addrs, dtype=np.uint64), names


def kernel_name(symbol: str) -> str:
    """A TVM kernel's parallel body is its own function: count it with the kernel."""
    for suffix in ("_compute___tvm_parallel_lambda", "___tvm_parallel_lambda", "_compute_"):
        if suffix in symbol:
            return symbol.split(suffix)[0]
    return symbol


def split_by_function(counts: BlockCounts, maps: list[Mapping], symbolize: dict[str, Path], nm: str) -> Counter:
    """Instructions per name: a kernel of a library in `symbolize` (by file name), else the library."""
    by_name: Counter = Counter()
    owner = np.full(len(counts.vaddr), -1)
    for i, m in enumerate(maps):
        owner[(counts.vaddr >= m.start) & (counts.vaddr < m.end)] = i
    by_name["[unmapped]"] += int(counts.insns[owner == -1].sum())
    for i, m in enumerate(maps):
        sel = owner == i
        if not sel.any():
            continue
        name = Path(m.path).name
        if name not in symbolize:
            by_name[name] += int(counts.insns[sel].sum())
            continue
        addrs, names = function_symbols(symbolize[name], nm)
        offsets = counts.vaddr[sel] - np.uint64(m.bias)
        idx = np.searchsorted(addrs, offsets, side="right") - 1
        for j, n in zip(idx, counts.insns[sel]):
            by_name[f"{name}:{kernel_name(names[j])}" if j >= 0 else name] += int(n)
    return by_name


@dataclass
class InstructionCount:
    """Instructions per inference of one artifact on one qemu CPU model."""

    per_inference: int
    cpu: str
    qemu: str
    totals: dict[str, int]  # "1", "3": whole-process counts of the two runs
    kernels: list[dict] = field(default_factory=list)  # top names by instructions per inference
    threads: int = 1
    method: str = "(count of 3 inferences - count of 1) / 2, qemu-user TCG plugin, one guest thread"

    def to_dict(self) -> dict:
        return asdict(self)


def qemu_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return ""
    return out.splitlines()[0] if out else ""


def count_artifact(artifact: str | Path, *, cpu: str | None = None, top: int = 10,
                   model: str = "model.so", timeout: float = 3600) -> InstructionCount:
    """Instructions per inference of an emulated-arch artifact's runner, on its target's qemu CPU
    model (or `cpu`), one thread, on the artifact's stored reference input."""
    from edgecls.artifact.execute import RUNNER, emulator_command
    from edgecls.artifact.manifest import require_intact
    from edgecls.targets import Target

    artifact = Path(artifact).resolve()
    manifest = require_intact(artifact)
    target = Target.from_dict(manifest["target"])
    prefix = emulator_command(target, cpu)
    cpu = prefix[prefix.index("-cpu") + 1]
    symbolize = {model: artifact / model}
    totals, by_run = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgecls-count-") as tmp:
        for n in COUNTED_RUNS:
            maps = Path(tmp) / f"maps-{n}.txt"
            env = dict(os.environ, TVM_NUM_THREADS="1", **{MAPS_ENV: str(maps)})
            argv = prefix + [str(artifact / RUNNER), "--model", str(artifact / model), "--input",
                             str(artifact / "reference" / "input.npy"), "--warmup", "0", "--runs", str(n),
                             "--threads", "1"]
            counts, proc = count_process(argv, env=env, timeout=timeout)
            if proc.returncode != 0:
                raise ArtifactError(f"runner failed under {prefix[0]} -cpu {cpu}: "
                                    f"{(proc.stderr.strip().splitlines() or ['exit ' + str(proc.returncode)])[-1]}")
            totals[str(n)] = counts.total
            by_run[n] = (split_by_function(counts, read_maps(maps.read_text()), symbolize, nm_tool(target.triple))
                         if maps.is_file() else Counter())
    lo, hi = COUNTED_RUNS
    per_inference = (totals[str(hi)] - totals[str(lo)]) // (hi - lo)
    diff = {k: (by_run[hi][k] - by_run[lo].get(k, 0)) // (hi - lo) for k in by_run[hi]}
    ranked = sorted(((k, v) for k, v in diff.items() if v > 0), key=lambda kv: -kv[1])[:top]
    kernels = [{"name": k, "per_inference": v, "share": round(v / per_inference, 4) if per_inference else None}
               for k, v in ranked]
    return InstructionCount(per_inference=per_inference, cpu=cpu, qemu=qemu_version(prefix[0]),
                            totals=totals, kernels=kernels)
