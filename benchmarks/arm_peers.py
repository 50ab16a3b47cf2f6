"""Peer runtimes (LiteRT/XNNPACK, ONNX Runtime, ncnn) counted under qemu-user: an aarch64 CPython
with their official aarch64 wheels, assembled on an x86 host, and the instruction count of one of
them running a model.

No ARM board and no ARM Python here, so the guest Python is assembled once from Debian's arm64
packages (python3.11-minimal, libpython3.11-stdlib, their libc and libraries: about 10 MB of
.debs, fetched with a private apt configuration that leaves the system's apt state alone) and the
pinned wheels (pip download --platform manylinux_2_28_aarch64 ...). It is cached whole or not at
all under edgecls' cache dir, arm-peers/ (built in a temp dir beside it, then renamed).

Two things make the peers countable under qemu-user 7.2 (measured here):
- ONNX Runtime and LiteRT segfault while probing the CPU unless /proc/cpuinfo looks like an ARM
  CPU (qemu 7.2 passes the host's x86 one through). qemu-user's -L prefix is looked up before
  the real path for every absolute file the guest opens, so a prefix dir holding the Python root
  and a proc/cpuinfo for the qemu CPU model (its MIDR part number and hwcap names) fixes it with
  no root, mount namespace or bind mount.
- Repeatable counts need a guest Python that does the same work every run: -P (no script or
  working directory on sys.path: importlib re-lists a path entry whose mtime changed, and a busy
  /tmp made `import numpy` vary by 0.3 M instructions), PYTHONHASHSEED=0, and byte code compiled
  ahead (unchecked-hash .pyc: the wheels ship none and Debian's are made by postinst scripts;
  importing numpy falls from 1624 M to 307 M guest instructions).
- numpy's OpenBLAS helper thread spins on the timer and ONNX Runtime starts helper threads even
  with one intra-op thread: OPENBLAS_NUM_THREADS=1, and the figure is the main thread's own
  count (the plugin's per_thread mode, exact per thread).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgecls.artifact.package import publish_dir, temp_dir_beside  # noqa: E402
from edgecls.artifact.runtime_libs import cache_dir  # noqa: E402
from edgecls.bench.instructions import COUNTED_RUNS, count_process  # noqa: E402
from edgecls.errors import ToolchainError  # noqa: E402

PYTHON = "3.11"  # Debian bookworm's python3.11 (arm64 .debs); the wheels are cp311
DEBS = ("libc6", "libgcc-s1", "libstdc++6", "python3.11-minimal", "libpython3.11-minimal",
        "libpython3.11-stdlib", "zlib1g", "libexpat1", "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libcrypt1")
WHEELS = {"core": ("numpy==2.4.6", "onnxruntime==1.32.0", "ai-edge-litert==2.3.0"),
          "ncnn": ("ncnn==1.0.20261020",)}  # pinned: counts are comparable only for equal versions
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_24_aarch64", "manylinux2014_aarch64")
LAYOUT = 2  # bump when what a cache entry holds changes (2: with compiled byte code)
RUNNER = Path(__file__).resolve().parent / "arm_peer_runner.py"

# qemu CPU model -> (MIDR part number, /proc/cpuinfo Features of that core as Linux reports them)
CPUS = {
    "cortex-a53": ("0xd03", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a72": ("0xd08", "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                            "lrcpc dcpop asimddp"),
    "neoverse-n1": ("0xd0c", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                             "lrcpc dcpop asimddp ssbs"),
}


def _run(cmd: list[str], what: str, timeout: float = 900, cwd=None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"{what} failed: {exc}") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith(("E:", "ERROR"))]
        raise ToolchainError(f"{what} failed: {(errors or lines or ['no output'])[0].strip()[:300]}")
    return proc.stdout


def _apt_download(packages: tuple[str, ...], dest: Path, work: Path) -> None:
    """arm64 .debs of the running Debian release, through a private apt state in `work` (own lists,
    cache and status: no dpkg --add-architecture, nothing of the system's apt touched)."""
    for d in ("lists/partial", "cache/archives/partial", "parts"):
        (work / d).mkdir(parents=True, exist_ok=True)
    (work / "status").touch()
    for src in Path("/etc/apt/sources.list.d").glob("*.sources"):
        shutil.copy(src, work / "parts" / src.name)
    if Path("/etc/apt/sources.list").is_file():
        shutil.copy("/etc/apt/sources.list", work / "parts" / "main.list")
    opts = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures::=arm64", "-o", f"Dir::State::Lists={work}/lists",
            "-o", f"Dir::Cache={work}/cache", "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={work}/parts", "-o", f"Dir::State::status={work}/status",
            "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root", "-q"]
    if not shutil.which("apt-get"):
        raise ToolchainError("apt-get not found: the guest Python is assembled from Debian arm64 packages")
    _run(["apt-get", *opts, "update"], "apt-get update (arm64 package lists)")
    dest.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", *opts, "download", *packages], "apt-get download of the arm64 Python packages", cwd=dest)


def _pip_download(requirements: tuple[str, ...], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--python-version", PYTHON, "-d", str(dest)]
    for tag in PLATFORMS:
        cmd += ["--platform", tag]
    _run(cmd + list(requirements), f"pip download of {' '.join(requirements)} for aarch64")
    return sorted(dest.glob("*.whl"))


def _cached(name: str, build) -> Path:
    """cache_dir()/arm-peers/name, made by build(tmp_dir) once; whole or absent."""
    final = cache_dir() / "arm-peers" / name
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(final, f".{name}.tmp-")
    try:
        build(tmp)
        publish_dir(tmp, final, taken=final.is_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _key(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def _compile_bytecode(tree: Path) -> None:
    """.pyc for every module of `tree`, by this host's Python when it is the guest's version (the
    byte code is the same on every platform); otherwise the guest compiles on each import."""
    if f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON:
        _run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
              str(tree)], f"compiling the byte code of {tree.name}")


def guest_python() -> Path:
    """The aarch64 Python root (root/usr/bin/python3.11, its libc and libraries under root/)."""
    def build(tmp: Path) -> None:
        _apt_download(DEBS, tmp / "debs", tmp / "apt")
        for deb in sorted((tmp / "debs").glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], f"unpacking {deb.name}")
        shutil.rmtree(tmp / "apt")
        python = tmp / "root" / "usr" / "bin" / f"python{PYTHON}"
        if not python.is_file():
            raise ToolchainError(f"the arm64 packages held no {python.name}")
        _compile_bytecode(tmp / "root" / "usr" / "lib" / f"python{PYTHON}")
    return _cached(f"python{PYTHON}-{_key(DEBS, LAYOUT)}", build) / "root"


def guest_site(group: str = "core") -> Path:
    """site-packages with the pinned aarch64 wheels of `group` (core: numpy, ORT, LiteRT; ncnn)."""
    def build(tmp: Path) -> None:
        for whl in _pip_download(WHEELS[group], tmp / "wheels"):
            with zipfile.ZipFile(whl) as z:
                z.extractall(tmp / "site")
        shutil.rmtree(tmp / "wheels")
        _compile_bytecode(tmp / "site")
    return _cached(f"site-{group}-py{PYTHON}-{_key(WHEELS[group], PLATFORMS, LAYOUT)}", build) / "site"


def fake_cpuinfo(cpu: str, processors: int = 1) -> str:
    """/proc/cpuinfo of an ARM core as Linux prints it, for the qemu CPU model `cpu`."""
    if cpu not in CPUS:
        raise ToolchainError(f"no /proc/cpuinfo known for qemu CPU '{cpu}' (known: {', '.join(CPUS)})")
    part, features = CPUS[cpu]
    block = ("processor\t: {i}\nBogoMIPS\t: 48.00\nFeatures\t: {f}\nCPU implementer\t: 0x41\n"
             "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {p}\nCPU revision\t: 0\n\n")
    return "".join(block.format(i=i, f=features, p=part) for i in range(processors))


def prefix_dir(root: Path, cpu: str, work: Path) -> Path:
    """A qemu -L prefix: the guest Python's root (linked) plus proc/cpuinfo for `cpu`."""
    prefix = work / f"prefix-{cpu}"
    (prefix / "proc").mkdir(parents=True, exist_ok=True)
    for top in ("lib", "usr", "etc"):
        if not (prefix / top).exists():
            (prefix / top).symlink_to(root / top)
    (prefix / "proc" / "cpuinfo").write_text(fake_cpuinfo(cpu, os.cpu_count() or 1))
    return prefix


def count_peer(runtime: str, model: Path, cpu: str, *, qemu: str = "qemu-aarch64", timeout: float = 3600) -> dict:
    """Instructions per inference of `runtime` (litert | onnxruntime | ncnn) running `model` with one
    thread on qemu CPU `cpu`: the main thread's (count of 3 - count of 1) / 2, in a process each."""
    root = guest_python()
    sites = [guest_site("core")] + ([guest_site("ncnn")] if runtime == "ncnn" else [])
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C", "PYTHONHASHSEED": "0",
           "PYTHONPATH": ":".join(map(str, sites)), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    counts, outputs = {}, {}
    with tempfile.TemporaryDirectory(prefix="edgecls-peer-") as tmp:
        prefix = prefix_dir(root, cpu, Path(tmp))
        for n in COUNTED_RUNS:
            argv = [qemu, "-cpu", cpu, "-L", str(prefix), str(root / "usr" / "bin" / f"python{PYTHON}"), "-s", "-B",
                    "-P", str(RUNNER), runtime, str(model), str(n)]
            blocks, proc = count_process(argv, env=env, cwd=str(prefix), timeout=timeout, per_thread=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
                raise ToolchainError(f"{runtime} on {model.name} failed under {qemu} -cpu {cpu}: {tail[:300]}")
            counts[str(n)] = blocks.main_thread
            outputs[str(n)] = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    lo, hi = COUNTED_RUNS
    return {"per_inference": (counts[str(hi)] - counts[str(lo)]) // (hi - lo), "main_thread_totals": counts,
            "cpu": cpu, "output": outputs[str(hi)]}


PNNX = "pnnx==20261020"  # x86-64 converter ONNX -> ncnn .param/.bin, the same release as the ncnn wheel
NCNN_INT8_SKIPPED = "ncnn int8 needs ncnn2table + ncnn2int8, which neither the ncnn nor the pnnx wheel ships"


def pnnx_tool() -> Path:
    """The pnnx converter binary from its pinned (host) wheel, cached."""
    def build(tmp: Path) -> None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", str(tmp / "wheels"), PNNX]
        _run(cmd, f"pip download of {PNNX}")
        with zipfile.ZipFile(next((tmp / "wheels").glob("*.whl"))) as z:
            z.extract("pnnx/pnnx", tmp)
        shutil.rmtree(tmp / "wheels")
        os.chmod(tmp / "pnnx" / "pnnx", 0o755)
    return _cached(f"{PNNX.replace('==', '-')}", build) / "pnnx" / "pnnx"


def ncnn_files(models: Path, nets=("mobilenet_v2", "resnet18"), size: int = 224) -> dict:
    """{net}.ncnn.param (.bin beside it) for each fp32 {net}.onnx in `models`, converted by pnnx."""
    out: dict = {"ncnn_skipped": NCNN_INT8_SKIPPED}
    for net in nets:
        param = models / f"{net}.ncnn.param"
        if not (param.is_file() and param.with_suffix(".bin").is_file()):
            with tempfile.TemporaryDirectory(prefix="edgecls-pnnx-") as tmp:
                shutil.copy(models / f"{net}.onnx", tmp)
                _run([str(pnnx_tool()), f"{net}.onnx", f"inputshape=[1,3,{size},{size}]"], f"pnnx on {net}.onnx",
                     cwd=tmp)
                os.replace(Path(tmp) / f"{net}.ncnn.bin", param.with_suffix(".bin"))
                os.replace(Path(tmp) / f"{net}.ncnn.param", param)
        out[param.name] = param
    return out
