"""Locate the TVM runtime libraries (libtvm_runtime.so + libtvm_ffi.so) for a CPU architecture.

Every artifact ships these two libraries next to its native runner. For the host architecture
they come from the installed `tvm` / `tvm_ffi` packages. For a foreign architecture (aarch64 on
an x86 workstation) they come from the official manylinux wheels of the *same* versions, fetched
once with `edgecls runtimes fetch --arch aarch64` into a cache:

    $EDGECLS_CACHE (default ~/.cache/edgecls)/runtimes/<arch>/<tvm version>/
        libtvm_runtime.so  libtvm_ffi.so  source.json
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgecls.artifact.package import publish_dir, temp_dir_beside
from edgecls.errors import ToolchainError
from edgecls.hashing import sha256_file

LIB_RUNTIME = "libtvm_runtime.so"
LIB_FFI = "libtvm_ffi.so"
# Where the two libraries live inside the wheels (and inside the installed packages).
_WHEEL_MEMBERS = {LIB_RUNTIME: "tvm/lib/libtvm_runtime.so", LIB_FFI: "tvm_ffi/lib/libtvm_ffi.so"}

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}


@dataclass(frozen=True)
class RuntimeLibs:
    arch: str
    tvm_runtime: Path
    tvm_ffi: Path
    tvm_version: str
    tvm_ffi_version: str
    source: str  # human-readable: where the libraries came from

    @property
    def paths(self) -> tuple[Path, Path]:
        return (self.tvm_runtime, self.tvm_ffi)


def normalize_arch(arch: str) -> str:
    a = arch.strip().lower()
    return _ARCH_ALIASES.get(a, a)


def host_arch() -> str:
    return normalize_arch(platform.machine())


def cache_dir() -> Path:
    env = os.environ.get("EDGECLS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgecls"


def installed_versions() -> tuple[str, str]:
    """(apache-tvm version, apache-tvm-ffi version) of the installed compiler packages."""
    try:
        return importlib.metadata.version("apache-tvm"), importlib.metadata.version("apache-tvm-ffi")
    except importlib.metadata.PackageNotFoundError as e:
        raise ToolchainError(f"package {e.name} is not installed; install edgecls with its dependencies") from None


def package_dir(name: str) -> Path:
    """Directory of an installed package, found without importing it (importing tvm is slow)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(f"Python package '{name}' is not installed")
    return Path(list(spec.submodule_search_locations)[0])



def _runtime_dir(arch: str, tvm_version: str) -> Path:
    return cache_dir() / "runtimes" / arch / tvm_version


def _fetch_hint(arch: str) -> str:
    return f"run `edgecls runtimes fetch --arch {arch}`"


def runtime_libs(arch: str) -> RuntimeLibs:
    """The runtime libraries for `arch`; raises ToolchainError if a foreign arch is not fetched."""
    arch = normalize_arch(arch)
    tvm_version, ffi_version = installed_versions()
    if arch == host_arch():
        rt = package_dir("tvm") / "lib" / LIB_RUNTIME
        ffi = package_dir("tvm_ffi") / "lib" / LIB_FFI
        for p in (rt, ffi):
            if not p.is_file():
                raise ToolchainError(f"{p} is missing; reinstall apache-tvm / apache-tvm-ffi")
        return RuntimeLibs(arch, rt, ffi, tvm_version, ffi_version,
                           f"installed packages apache-tvm=={tvm_version}, apache-tvm-ffi=={ffi_version}")

    d = _runtime_dir(arch, tvm_version)
    rt, ffi, meta = d / LIB_RUNTIME, d / LIB_FFI, d / "source.json"
    if not (rt.is_file() and ffi.is_file() and meta.is_file()):
        raise ToolchainError(f"no TVM {tvm_version} runtime for {arch} in {d.parent}; {_fetch_hint(arch)}")
    try:
        src = json.loads(meta.read_text())
    except (OSError, ValueError):
        raise ToolchainError(f"{meta} is unreadable; {_fetch_hint(arch)}") from None
    if src.get("tvm_ffi_version") != ffi_version:
        # The runner is compiled against the installed tvm_ffi headers: the libs must match them.
        raise ToolchainError(f"cached {arch} runtime in {d} is for apache-tvm-ffi=={src.get('tvm_ffi_version')} "
                             f"but {ffi_version} is installed; {_fetch_hint(arch)}")
    wheels = ", ".join(w["file"] for w in src.get("wheels", []))
    return RuntimeLibs(arch, rt, ffi, tvm_version, ffi_version, f"cache {d} (from {wheels})")


def _platform_tags(arch: str) -> list[str]:
    if arch not in ("aarch64", "x86_64"):
        raise ToolchainError(f"no TVM runtime wheels are published for arch '{arch}' (supported: aarch64, x86_64)")
    return [f"manylinux_2_28_{arch}", f"manylinux2014_{arch}"]


def _pip_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    return (errors or lines or ["pip failed without output"])[0]


def fetch_runtime(arch: str = "aarch64", quiet: bool = False) -> RuntimeLibs:
    """Download the runtime libraries for `arch` into the cache (idempotent) and return them.

    The libraries come from the official apache-tvm / apache-tvm-ffi wheels of exactly the
    installed versions, so they match the compiler that produces the model libraries.
    """
    arch = normalize_arch(arch)
    if arch == host_arch():
        return runtime_libs(arch)
    try:
        return runtime_libs(arch)
    except ToolchainError:
        pass  # absent or stale: fetch below

    tvm_version, ffi_version = installed_versions()
    final = _runtime_dir(arch, tvm_version)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgecls-wheels-") as wheel_dir:
        if not quiet:
            print(f"fetching TVM runtime for {arch}: apache-tvm=={tvm_version} "
                  f"apache-tvm-ffi=={ffi_version} ...", file=sys.stderr)
        wheels = _download_wheels(arch, tvm_version, ffi_version, Path(wheel_dir))
        # Build the new cache entry in a sibling temp dir, then rename it into place in one step,
        # so an interrupted fetch never leaves a half-written runtime behind.
        tmp = temp_dir_beside(final, f".{tvm_version}.tmp-")
        try:
            records = _extract_libs(arch, wheels, tmp)
            (tmp / "source.json").write_text(json.dumps(
                {"arch": arch, "tvm_version": tvm_version, "tvm_ffi_version": ffi_version,
                 "python_version": _python_version(), "wheels": records}, indent=2) + "\n")
            # Replaces a stale entry; losing a race to a concurrent fetch keeps theirs.
            publish_dir(tmp, final, replace=True, taken=lambda: (final / "source.json").is_file())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    libs = runtime_libs(arch)
    if not quiet:
        print(f"TVM runtime for {arch} cached in {final}", file=sys.stderr)
    return libs


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _download_wheels(arch: str, tvm_version: str, ffi_version: str, wheel_dir: Path) -> dict[str, Path]:
    """{file name: path} of the apache-tvm and apache-tvm-ffi wheels for `arch`, from pip."""
    pip_download(arch, _python_version(), [f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}"],
                 wheel_dir, deps=False, timeout=900, what=f"the {arch} TVM runtime",
                 hint="network or index problem?")
    return {w.name: w for w in wheel_dir.glob("*.whl")}


def pip_download(arch: str, pyver: str, requirements: list[str], dest: Path, *, deps: bool, timeout: float,
                 what: str, hint: str) -> None:
    """`pip download` of binary wheels for another arch and Python into dest (the runtime here,
    a board's TVM in remote/board_tvm.py); a failure is one ToolchainError line naming `what`."""
    cmd = [sys.executable, "-m", "pip", "download", *([] if deps else ["--no-deps"]), "--only-binary=:all:"]
    for tag in _platform_tags(arch):
        cmd += ["--platform", tag]
    cmd += ["--python-version", pyver, "--disable-pip-version-check", *requirements, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolchainError(f"pip download of {what} failed: {e}") from None
    if proc.returncode != 0:
        raise ToolchainError(f"pip download of {what} failed ({hint}): {_pip_error(proc.stderr + proc.stdout)}")


def _extract_libs(arch: str, wheels: dict[str, Path], tmp: Path) -> list[dict]:
    """Copies each runtime library out of its wheel into tmp, checks its ELF machine; returns
    the provenance records (wheel file and hash, member, library hash)."""
    records = []
    for lib, member in _WHEEL_MEMBERS.items():
        dist = "apache_tvm_ffi-" if lib == LIB_FFI else "apache_tvm-"
        matches = [w for n, w in wheels.items() if n.startswith(dist)]
        if len(matches) != 1:
            raise ToolchainError(f"pip download did not produce one {dist}*.whl for {arch} "
                                 f"(got: {', '.join(sorted(wheels)) or 'nothing'})")
        whl = matches[0]
        try:
            with zipfile.ZipFile(whl) as z, z.open(member) as src, open(tmp / lib, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (KeyError, zipfile.BadZipFile) as e:
            raise ToolchainError(f"{whl.name} has no usable {member}: {e}") from None
        os.chmod(tmp / lib, 0o755)
        records.append({"file": whl.name, "sha256": sha256_file(whl), "member": member,
                        "lib": lib, "lib_sha256": sha256_file(tmp / lib)})
    from edgecls.artifact.native import elf_arch  # local import: native imports this module

    for lib in _WHEEL_MEMBERS:
        got = elf_arch(tmp / lib)
        if got != arch:
            raise ToolchainError(f"downloaded {lib} is for {got}, expected {arch}")
    return records
