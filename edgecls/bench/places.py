"""Where a benchmark runs: this machine (native or under qemu) or an SSH board.

Each place answers the same two questions: make the artifact available there (a local path, or
an atomic verified deploy), and run an argv inside it. The harness never knows which it has.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgecls.artifact.execute import runner_prefix
from edgecls.artifact.manifest import require_intact
from edgecls.errors import ArtifactError


@dataclass
class Place:
    name: str
    kind: str  # "local" | "emulated" | "board"
    host: str = "localhost"

    def prepare(self, artifact: Path, log) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def run(self, argv: list[str], cwd: str, timeout: float) -> subprocess.CompletedProcess:
        raise NotImplementedError  # pragma: no cover - interface

    def binary_prefix(self) -> list[str]:
        """What runs a binary of the artifact's arch here (qemu for an emulated arch)."""
        return []

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "host": self.host}

    def cpu_count(self) -> int:
        """The CPUs a process may run on here (its affinity: a taskset or cpuset narrows it)."""
        import os
        return len(os.sched_getaffinity(0))


class LocalPlace(Place):
    """This workstation; an aarch64 artifact runs under the target's emulator when emulate=True."""

    def __init__(self, emulate: bool = False):
        super().__init__(name="local-emulated" if emulate else "local",
                         kind="emulated" if emulate else "local")
        self.emulate = emulate
        self._prefix: list[str] = []

    def prepare(self, artifact: Path, log) -> str:
        manifest = require_intact(artifact)  # a tampered artifact never runs
        self._prefix = runner_prefix(artifact, manifest, self.emulate)
        if not self._prefix:
            self.kind, self.name = "local", "local"
        return str(Path(artifact).resolve())

    def binary_prefix(self) -> list[str]:
        return list(self._prefix)

    def run(self, argv, cwd, timeout):
        try:
            return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ArtifactError(f"benchmark on {self.name} did not finish within {timeout:.0f} s") from None


class BoardPlace(Place):
    """A board reached over SSH: deploy (atomic, verified) then run in the deployed directory."""

    def __init__(self, board, ssh):
        super().__init__(name=board.name, kind="board", host=board.host)
        self.board, self.ssh = board, ssh
        self._cpus: list[str] = []  # the artifact's qemu CPU models, known once it is prepared

    def prepare(self, artifact: Path, log) -> str:
        from edgecls.remote.deploy import deploy, verify_remote
        result = deploy(Path(artifact), self.board, self.ssh, log=log)
        manifest = require_intact(artifact)
        problems = verify_remote(self.board, self.ssh, result.remote_path, manifest)
        if problems:  # a corrupted file on the board refuses to run
            raise ArtifactError(f"artifact on {self.board.name} fails its checksums: {'; '.join(problems[:3])}")
        self._cpus = list(manifest["target"].get("emulator_cpus") or [])
        return result.remote_path

    def binary_prefix(self) -> list[str]:
        """The board's emulator (an emulated board), given the target's CPU model when it is qemu
        and names none: qemu's default `max` CPU would run instructions the board lacks."""
        emulator = list(self.board.emulator)
        if emulator and Path(emulator[0]).name.startswith("qemu-") and "-cpu" not in emulator \
                and self._cpus:
            emulator += ["-cpu", self._cpus[0]]
        return emulator

    def run(self, argv, cwd, timeout):
        return self.ssh.run(argv, cwd=cwd, timeout=timeout, text=True)

    def cpu_count(self) -> int:
        """`nproc` on the board: the CPUs its processes may run on."""
        proc = self.ssh.run(["nproc"], timeout=60, text=True)
        if proc.returncode != 0 or not proc.stdout.strip().isdigit():
            raise ArtifactError(f"cannot count the CPUs of {self.board.name} (nproc: {proc.stderr.strip()[:100]}); "
                                f"pass --threads")
        return int(proc.stdout.strip())

    def describe(self) -> dict:
        return {"name": self.board.name, "kind": "board", "host": self.board.host,
                "target": self.board.target, "emulator": list(self.board.emulator)}
