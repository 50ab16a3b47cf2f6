"""Targets are data: one TOML file per board type, read into `Target` objects.

Built-in targets live in the package (edgecls/builtin_targets/, package data, so a wheel carries
them). A user adds a board type by dropping
a TOML file into a folder named by `--targets-dir` or `EDGECLS_TARGETS` (several folders separated
by `:`); a file there overrides a built-in target of the same name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgecls.errors import TargetError, ToolchainError

BUILTIN_DIR = Path(__file__).resolve().parent / "builtin_targets"
LAYOUTS = ("NCHW", "NHWC")
ARCHES = ("x86_64", "aarch64")
# qemu-aarch64 7.2's CPU models (`qemu-aarch64 -cpu help`), less `max` (SVE, i8mm: no board's).
QEMU_AARCH64_CPUS = ("a64fx", "cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a76", "neoverse-n1")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    triple: str
    tvm: dict  # TVM target as a JSON dict; string targets raise in TVM 0.27
    layout: str  # preferred layout for `--layout auto`
    compiler: str  # C++ compiler for the model library and the native runner
    compiler_package: str  # Debian package that provides `compiler`
    runtimes: tuple[str, ...] = ()
    emulator: tuple[str, ...] = ()  # runs a foreign-arch binary on the workstation
    emulator_package: str = ""
    # qemu CPU models of the board's cores: the first runs verification, `run --emulate` and
    # instruction counts; every one is checked at verification (qemu's default `max` CPU has
    # SVE, dotprod and i8mm, which would hide an instruction the board cannot run).
    emulator_cpus: tuple[str, ...] = ()
    cpus: dict[str, tuple[int, ...]] = field(default_factory=dict)  # cluster name -> cpu ids
    round_to: int = 8  # pruning keeps channel counts multiples of this (SIMD lanes)
    source: str = ""  # the TOML file it came from
    sha256: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name, "description": self.description, "arch": self.arch,
            "triple": self.triple, "tvm": self.tvm, "layout": self.layout,
            "compiler": self.compiler, "compiler_package": self.compiler_package,
            "runtimes": list(self.runtimes), "emulator": list(self.emulator),
            "cpus": {k: list(v) for k, v in self.cpus.items()}, "round_to": self.round_to,
            "emulator_package": self.emulator_package, "emulator_cpus": list(self.emulator_cpus),
            "source": self.source, "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        """Inverse of to_dict (a manifest carries its target as data)."""
        return cls(
            name=d["name"], description=d.get("description", ""), arch=d["arch"],
            triple=d["triple"], tvm=dict(d["tvm"]), layout=d.get("layout", "NCHW"),
            compiler=d.get("compiler", ""), compiler_package=d.get("compiler_package", ""),
            runtimes=tuple(d.get("runtimes", ())), emulator=tuple(d.get("emulator", ())),
            emulator_package=d.get("emulator_package", ""), emulator_cpus=tuple(d.get("emulator_cpus", ())),
            cpus={k: tuple(v) for k, v in d.get("cpus", {}).items()}, round_to=d.get("round_to", 8),
            source=d.get("source", ""), sha256=d.get("sha256", ""))

    def require_compiler(self) -> str:
        """Full path of the cross compiler, or a one-line error naming the Debian package."""
        path = shutil.which(self.compiler)
        if path is None:
            raise ToolchainError(
                f"C++ compiler '{self.compiler}' for target {self.name} not found on PATH; "
                f"install it with: apt-get install {self.compiler_package}")
        return path

    def require_emulator(self) -> list[str]:
        if not self.emulator:
            raise ToolchainError(f"target {self.name} declares no emulator")
        if shutil.which(self.emulator[0]) is None:
            raise ToolchainError(
                f"emulator '{self.emulator[0]}' not found on PATH; "
                f"install it with: apt-get install {self.emulator_package or 'qemu-user'}")
        return list(self.emulator)

    def emulator_command(self, cpu: str | None = None) -> list[str]:
        """The emulator with the CPU model to emulate: `cpu`, else the target's first."""
        # A manifest written before targets named their qemu CPU: the TVM mcpu when qemu has it.
        mcpu = str(self.tvm.get("mcpu", ""))
        cpu = cpu or (self.emulator_cpus[0] if self.emulator_cpus else "") or (
            mcpu if mcpu in QEMU_AARCH64_CPUS and self.arch == "aarch64" else "")
        if not cpu:
            raise ToolchainError(f"target {self.name} names no qemu CPU model: add "
                                 f"toolchain.emulator_cpus = [\"cortex-a72\"] (or its cores) to {self.source or 'its TOML'}")
        return self.require_emulator() + ["-cpu", cpu]


def _search_dirs(extra: str | os.PathLike | None) -> list[Path]:
    dirs = [BUILTIN_DIR]
    env = os.environ.get("EDGECLS_TARGETS", "")
    dirs += [Path(p) for p in env.split(":") if p]
    if extra:
        dirs += [Path(p) for p in str(extra).split(":") if p]
    return dirs


def _require(data: dict, key: str, kind: type, path: Path):
    cur = data
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise TargetError(f"{path}: missing key '{key}'")
        cur = cur[part]
    if not isinstance(cur, kind):
        raise TargetError(f"{path}: key '{key}' must be a {kind.__name__}, got {type(cur).__name__}")
    return cur


def parse_target(path: Path) -> Target:
    """Read and validate one target TOML file; every problem names the file and the key."""
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TargetError(f"{path}: not valid TOML: {exc}") from None
    name = _require(data, "name", str, path)
    arch = _require(data, "arch", str, path)
    if arch not in ARCHES:
        raise TargetError(f"{path}: key 'arch' must be one of {', '.join(ARCHES)}, got '{arch}'")
    tvm = _require(data, "tvm.target", dict, path)
    if "kind" not in tvm:
        raise TargetError(f"{path}: key 'tvm.target' needs a 'kind' (e.g. \"llvm\")")
    layout = data.get("layout", "NCHW")
    if layout not in LAYOUTS:
        raise TargetError(f"{path}: key 'layout' must be NCHW or NHWC, got '{layout}'")
    cpus = data.get("cpus", {})
    if not isinstance(cpus, dict) or not all(
            isinstance(v, list) and all(isinstance(c, int) for c in v) for v in cpus.values()):
        raise TargetError(f"{path}: key 'cpus' must map cluster names to lists of cpu ids")
    emulator = data.get("toolchain", {}).get("emulator", [])
    if not isinstance(emulator, list):
        raise TargetError(f"{path}: key 'toolchain.emulator' must be a list of strings")
    emulator_cpus = data.get("toolchain", {}).get("emulator_cpus", [])
    if not isinstance(emulator_cpus, list) or not all(isinstance(c, str) and c for c in emulator_cpus):
        raise TargetError(f"{path}: key 'toolchain.emulator_cpus' must be a list of qemu CPU model names")
    if emulator and "-cpu" in emulator:
        raise TargetError(f"{path}: name the qemu CPU model in 'toolchain.emulator_cpus', not with -cpu in 'toolchain.emulator'")
    return Target(
        name=name,
        description=str(data.get("description", "")),
        arch=arch,
        triple=_require(data, "triple", str, path),
        tvm=dict(tvm),
        layout=layout,
        compiler=_require(data, "toolchain.compiler", str, path),
        compiler_package=str(data.get("toolchain", {}).get("debian_package", "")),
        runtimes=tuple(data.get("runtimes", ["tvm"])),
        emulator=tuple(emulator),
        emulator_package=str(data.get("toolchain", {}).get("emulator_package", "")),
        emulator_cpus=tuple(emulator_cpus),
        cpus={k: tuple(v) for k, v in cpus.items()},
        round_to=int(data.get("round_to", 8)),
        source=str(path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def load_targets(targets_dir: str | os.PathLike | None = None) -> dict[str, Target]:
    """All known targets by name; later folders override earlier ones."""
    found: dict[str, Target] = {}
    for d in _search_dirs(targets_dir):
        if not d.is_dir():
            if d != BUILTIN_DIR:
                raise TargetError(f"targets folder {d} does not exist")
            continue
        for path in sorted(d.glob("*.toml")):
            target = parse_target(path)
            found[target.name] = target
    return found


def get_target(name: str, targets_dir: str | os.PathLike | None = None) -> Target:
    # A path to a TOML file works too: handy for a one-off board description.
    if name.endswith(".toml") and Path(name).is_file():
        return parse_target(Path(name))
    known = load_targets(targets_dir)
    if name not in known:
        raise TargetError(f"unknown target '{name}'; known targets: {', '.join(sorted(known))}")
    return known[name]
