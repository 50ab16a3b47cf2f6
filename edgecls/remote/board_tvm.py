"""`edgecls boards setup`: TVM's Python runtime on a board, for tuning there (RPC server), offline.

Boards often have no internet (lab networks) and no compiler toolchain, so the wheels are
downloaded here for the board's arch and Python version (PyPI publishes aarch64 apache-tvm
wheels), copied over SSH, and installed into a venv in the board's work dir with
`pip --no-index`. The inventory then records that venv's python as the board's `tvm_python`;
`edgecls tune --board` starts `python -m tvm.exec.rpc_server` with it. The board's own python
(ONNX Runtime / LiteRT harness) is left untouched.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from edgecls.artifact.runtime_libs import cache_dir, installed_versions, normalize_arch, pip_download
from edgecls.errors import EdgeclsError
from edgecls.remote.boards import Board, add_board
from edgecls.remote.ssh import SshHost

# Imported by tvm.exec.rpc_server but not declared by the apache-tvm wheel (see pyproject.toml).
RPC_EXTRA_DEPS = ("cloudpickle", "psutil", "tornado")
VENV = "tvm-venv"

_PROBE = r"""import platform, sys
print("arch=" + platform.machine())
print("python=%d.%d" % sys.version_info[:2])
try:
    import os
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import tvm, tvm.rpc  # noqa
    print("tvm=" + tvm.__version__)
except Exception as e:
    print("tvm_error=" + str(e).splitlines()[0] if str(e) else type(e).__name__)
"""


def _probe(ssh: SshHost, python: str) -> dict:
    proc = ssh.run([python, "-c", _PROBE], timeout=120, text=True)
    if proc.returncode != 0 and "arch=" not in proc.stdout:
        raise EdgeclsError(f"{ssh.label}: cannot run {python} on the board: "
                           f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    return dict(ln.split("=", 1) for ln in proc.stdout.splitlines() if "=" in ln)


def download_wheels(arch: str, pyver: str, log=lambda m: None) -> Path:
    """apache-tvm + apache-tvm-ffi (the versions installed here) and their dependencies, as
    binary wheels for the board's arch and Python, cached in $EDGECLS_CACHE/board-wheels/."""
    arch = normalize_arch(arch)
    tvm_version, ffi_version = installed_versions()
    dest = cache_dir() / "board-wheels" / f"{arch}-py{pyver}-tvm{tvm_version}"
    if (dest / ".complete").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    log(f"downloading TVM {tvm_version} wheels for {arch} / Python {pyver}")
    pip_download(arch, pyver, [f"apache-tvm=={tvm_version}", f"apache-tvm-ffi=={ffi_version}", *RPC_EXTRA_DEPS],
                 dest, deps=True, timeout=1800, what=f"TVM wheels for {arch} / Python {pyver}",
                 hint="network, or no wheel for that Python?")
    (dest / ".complete").write_text("ok\n")
    return dest


def setup_board(board: Board, ssh: SshHost, inventory=None, force: bool = False, log=lambda m: None) -> dict:
    """Make `python -m tvm.exec.rpc_server` runnable on the board; returns what was done."""
    tvm_version, _ = installed_versions()
    current = board.extra.get("tvm_python")
    if current and not force:
        facts = _probe(ssh, current)
        if facts.get("tvm") == tvm_version:
            return {"status": "present", "tvm_python": current, "tvm": facts["tvm"]}
    facts = _probe(ssh, board.python)
    if facts.get("tvm") == tvm_version and not force:
        add_board(inventory, _with_tvm_python(board, board.python), replace=True)
        return {"status": "present", "tvm_python": board.python, "tvm": facts["tvm"]}
    wheels = download_wheels(facts["arch"], facts["python"], log)
    remote_wheels = f"{board.workdir}/.tvm-wheels"
    log(f"{board.name}: copying {len(list(wheels.glob('*.whl')))} wheels to {remote_wheels}")
    ssh.upload([(w, w.name) for w in sorted(wheels.glob("*.whl"))], remote_wheels)
    venv = f"{board.workdir}/{VENV}"
    script = (f"set -e; {shlex.quote(board.python)} -m venv {shlex.quote(venv)}; "
              f"{shlex.quote(venv)}/bin/python -m pip install -q --no-index --find-links {shlex.quote(remote_wheels)} "
              f"apache-tvm=={tvm_version} {' '.join(RPC_EXTRA_DEPS)}")
    log(f"{board.name}: installing into {venv} (pip --no-index)")
    proc = ssh.run(["sh", "-c", script], timeout=1800, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        hint = " (Debian/Ubuntu boards: apt-get install python3-venv)" if "venv" in last or "ensurepip" in last else ""
        raise EdgeclsError(f"{board.name}: installing TVM failed: {last}{hint}")
    python = f"{venv}/bin/python"
    facts = _probe(ssh, python)
    if facts.get("tvm") != tvm_version:
        raise EdgeclsError(f"{board.name}: TVM does not import in {python}: {facts.get('tvm_error', 'unknown error')}")
    add_board(inventory, _with_tvm_python(board, python), replace=True)
    return {"status": "installed", "tvm_python": python, "tvm": facts["tvm"], "wheels": str(wheels)}


def _with_tvm_python(board: Board, python: str) -> Board:
    from dataclasses import replace
    return replace(board, extra={**board.extra, "tvm_python": python})


def tvm_python(board: Board) -> str:
    """The python that runs TVM's RPC server on the board (after `boards setup`), else the board's."""
    return str(board.extra.get("tvm_python") or board.python)
