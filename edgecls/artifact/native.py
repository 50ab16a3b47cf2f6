"""Build the native runner (runner/*.cc) for an architecture, and inspect ELF files.

The runner links only against libtvm_runtime.so + libtvm_ffi.so, which are copied next to it;
an `$ORIGIN` rpath makes the artifact directory self-contained (no LD_LIBRARY_PATH on the board).

Why no `-static-libstdc++ -static-libgcc`: it links and runs, but measured with Debian 12's
GCC 12 it makes things worse. The TVM libraries need the board's libstdc++.so.6 anyway, so
nothing is saved; the runner grows from ~90 KB to ~1.9 MB; static libstdc++/libgcc_eh pull in
arc4random/_dl_find_object, raising the glibc requirement from 2.34 to 2.36; and the libraries
would bind to the runner's private copy of libstdc++ symbols. Dynamic linking only adds a
GLIBCXX_3.4.29 (GCC 11+) requirement, met by every distribution with glibc >= 2.34.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from edgecls.artifact.package import publish_dir, temp_dir_beside
from edgecls.artifact.runtime_libs import (
    LIB_FFI,
    LIB_RUNTIME,
    RuntimeLibs,
    cache_dir,
    normalize_arch,
    package_dir,
    sha256_file,
)
from edgecls.errors import ArtifactError, ToolchainError

RUNNER_NAME = "edgecls-runner"
RUNNER_DIR = Path(__file__).with_name("runner")
_RUNNER_PARTS = ("runner", "options", "npy", "sysinfo", "parallel", "free_cores")
RUNNER_SOURCES = [RUNNER_DIR / f"{p}.cc" for p in _RUNNER_PARTS]  # compiled
RUNNER_HEADERS = [RUNNER_DIR / f"{p}.h" for p in _RUNNER_PARTS[1:]]  # only hashed into the cache key
CXXFLAGS = ["-O2", "-std=c++17"]
LDFLAGS = ["-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN"]  # no shell: '$ORIGIN' stays literal


def _include_dirs() -> list[Path]:
    # Headers are architecture independent, so the host's installed packages serve every target.
    ffi = package_dir("tvm_ffi") / "include"  # also holds dlpack/dlpack.h
    tvm = package_dir("tvm") / "include"
    for d in (ffi, tvm):
        if not d.is_dir():
            raise ToolchainError(f"TVM headers not found at {d}; reinstall apache-tvm / apache-tvm-ffi")
    return [ffi, tvm]


def _compiler_version(compiler: str) -> str:
    try:
        proc = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ToolchainError(f"cannot run C++ compiler '{compiler}': {e}") from None
    return proc.stdout + proc.stderr


def _first_error(output: str) -> str:
    """The most telling line of compiler/linker output (collect2's summary line is not)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for pat in (r"(?<!collect2: )\berror\b", r"cannot find|undefined reference", r"incompatible", r"\berror\b"):
        for ln in lines:
            if re.search(pat, ln, re.I):
                return ln
    return lines[0] if lines else "no compiler output"


def _compiler_arch(compiler: str) -> str | None:
    try:
        proc = subprocess.run([compiler, "-dumpmachine"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    triple = proc.stdout.strip()
    return normalize_arch(triple.split("-")[0]) if proc.returncode == 0 and triple else None


def build_runner(arch: str, compiler: str, out_dir: Path, libs: RuntimeLibs) -> Path:
    """Compile the runner for `arch` into out_dir (with both TVM libraries); returns its path.

    Built runners are cached under $EDGECLS_CACHE/runners/<key>/, keyed by the source, the
    compiler identity, the flags and the library hashes, so repeated compiles only copy.
    """
    out_dir = Path(out_dir)
    if shutil.which(compiler) is None:
        raise ToolchainError(f"C++ compiler '{compiler}' not found on PATH"
                             + (" (Debian/Ubuntu: apt install g++-aarch64-linux-gnu)" if "aarch64" in compiler else ""))
    target = _compiler_arch(compiler)
    if target is not None and target != arch:
        raise ToolchainError(f"C++ compiler '{compiler}' builds for {target}, not {arch}")
    if libs.arch != arch:
        raise ToolchainError(f"runtime libraries are for {libs.arch}, not {arch}")
    for lib in libs.paths:
        got = elf_arch(lib)
        if got != arch:
            raise ToolchainError(f"{lib} is built for {got}, not {arch}")

    includes = _include_dirs()
    key = hashlib.sha256()
    sources = [p.read_bytes() for p in RUNNER_SOURCES + RUNNER_HEADERS]
    for part in (*sources, _compiler_version(compiler).encode(), arch.encode(),
                 " ".join(CXXFLAGS + LDFLAGS).encode(), sha256_file(libs.tvm_runtime).encode(),
                 sha256_file(libs.tvm_ffi).encode(), (includes[0] / "tvm" / "ffi" / "c_api.h").read_bytes()):
        key.update(hashlib.sha256(part).digest())
    cached = cache_dir() / "runners" / key.hexdigest()[:32]

    if not (cached / RUNNER_NAME).is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir_beside(cached, ".build-")
        try:
            libdir = tmp / "lib"  # link against copies under the canonical names, whatever the source
            libdir.mkdir()
            shutil.copy2(libs.tvm_runtime, libdir / LIB_RUNTIME)
            shutil.copy2(libs.tvm_ffi, libdir / LIB_FFI)
            cmd = [compiler, *CXXFLAGS, *(f"-I{d}" for d in includes), *map(str, RUNNER_SOURCES),
                   "-o", str(tmp / RUNNER_NAME), f"-L{libdir}", *LDFLAGS]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise ToolchainError(f"{compiler} failed to build the runner: {e}") from None
            if proc.returncode != 0:
                raise ToolchainError(f"{compiler} failed to build the runner: {_first_error(proc.stderr + proc.stdout)}")
            shutil.rmtree(libdir)
            if elf_arch(tmp / RUNNER_NAME) != arch:
                raise ToolchainError(f"{compiler} built the runner for {elf_arch(tmp / RUNNER_NAME)}, not {arch}")
            # A cache entry is complete or absent; when a concurrent build won the race, use theirs.
            publish_dir(tmp, cached, taken=lambda: (cached / RUNNER_NAME).is_file())
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    runner = out_dir / RUNNER_NAME
    shutil.copy2(cached / RUNNER_NAME, runner)
    shutil.copy2(libs.tvm_runtime, out_dir / LIB_RUNTIME)
    shutil.copy2(libs.tvm_ffi, out_dir / LIB_FFI)
    return runner


# ---- ELF inspection (pure Python) -----------------------------------------------------------

_EM = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv"}
_SHT_GNU_VERNEED = 0x6FFFFFFE


class _Elf:
    def __init__(self, path: Path):
        try:
            self.data = Path(path).read_bytes()
        except OSError as e:
            raise ArtifactError(f"cannot read {path}: {e.strerror}") from None
        d = self.data
        if len(d) < 64 or d[:4] != b"\x7fELF" or d[4] not in (1, 2) or d[5] not in (1, 2):
            raise ArtifactError(f"{path} is not an ELF file")
        self.is64 = d[4] == 2
        self.end = "<" if d[5] == 1 else ">"
        self.machine = self.u(18, "H")

    def u(self, off: int, fmt: str) -> int:
        return struct.unpack_from(self.end + fmt, self.data, off)[0]

    def sections(self) -> list[tuple[int, int, int, int, int]]:
        """(type, offset, size, link, info) of every section header."""
        if self.is64:
            shoff, shentsize, shnum = self.u(0x28, "Q"), self.u(0x3A, "H"), self.u(0x3C, "H")
            fmt, idx = "IIQQQQIIQQ", (1, 4, 5, 6, 7)
        else:
            shoff, shentsize, shnum = self.u(0x20, "I"), self.u(0x2E, "H"), self.u(0x30, "H")
            fmt, idx = "IIIIIIIIII", (1, 4, 5, 6, 7)
        out = []
        for i in range(shnum if shoff else 0):
            f = struct.unpack_from(self.end + fmt, self.data, shoff + i * shentsize)
            out.append(tuple(f[j] for j in idx))
        return out

    def version_needs(self) -> set[str] | None:
        """Names in .gnu.version_r (e.g. GLIBC_2.34), or None if there are no section headers."""
        secs = self.sections()
        if not secs:
            return None
        names: set[str] = set()
        for typ, off, _size, link, count in secs:
            if typ != _SHT_GNU_VERNEED:
                continue
            stroff = secs[link][1]
            pos = off
            for _ in range(count):  # Elf_Verneed: u16 version, u16 cnt, u32 file, u32 aux, u32 next
                cnt, aux, nxt = self.u(pos + 2, "H"), self.u(pos + 8, "I"), self.u(pos + 12, "I")
                apos = pos + aux
                for _ in range(cnt):  # Elf_Vernaux: u32 hash, u16 flags, u16 other, u32 name, u32 next
                    name_off = stroff + self.u(apos + 8, "I")
                    names.add(self.data[name_off:self.data.index(b"\0", name_off)].decode("ascii", "replace"))
                    apos += self.u(apos + 12, "I")
                pos += nxt
        return names


def elf_arch(path: Path) -> str:
    """Architecture of an ELF file from its e_machine field: "aarch64", "x86_64", "arm", ..."""
    elf = _Elf(Path(path))
    name = _EM.get(elf.machine, f"em{elf.machine}")
    if name == "ppc64" and elf.end == "<":
        name = "ppc64le"
    if name == "riscv":
        name = "riscv64" if elf.is64 else "riscv32"
    return name


def _max_version(paths: Iterable[Path], prefix: str) -> str | None:
    best: tuple[int, ...] | None = None
    pat = re.compile(re.escape(prefix) + r"(\d+(?:\.\d+)+)")
    for p in paths:
        elf = _Elf(Path(p))
        names = elf.version_needs()
        if names is None:  # section headers stripped (sstrip): scan the whole file for the names
            raw = re.compile(re.escape(prefix.encode()) + rb"\d+(?:\.\d+)+")
            names = {m.group(0).decode() for m in raw.finditer(elf.data)}
        for n in names:
            m = pat.fullmatch(n)
            if m:
                v = tuple(int(x) for x in m.group(1).split("."))
                best = v if best is None or v > best else best
    return ".".join(map(str, best)) if best else None


def required_glibc(paths: Iterable[Path]) -> str | None:
    """Highest glibc symbol version ("2.34") needed by the given ELF files, None if none.

    Read from the version-needed section (.gnu.version_r) by a pure-Python ELF parser, so no
    binutils for the target arch are needed; files without section headers fall back to a byte
    scan for GLIBC_x.y strings.
    """
    return _max_version(paths, "GLIBC_")


def required_glibcxx(paths: Iterable[Path]) -> str | None:
    """Highest libstdc++ symbol version ("3.4.29") needed by the given ELF files, None if none."""
    return _max_version(paths, "GLIBCXX_")
