"""MetaSchedule tuning (edgecls.compile.tvm.tuning): records, warm database, zero-trial and tuned builds,
and measuring on a board through the real sshd fixture (RPC server over SSH, `ssh -L`).

Budgets are tiny (a few measurements per kernel): these check the plumbing, not the search.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import sshd
import torch
from conftest import ort_run

from edgecls.compile import tvm as tvm_adapter

ssh_board = sshd.ssh_board
TARGET = tvm_adapter.resolve_target({"kind": "llvm", "mcpu": "native", "num-cores": 0})


class TinyNet(torch.nn.Module):
    """conv+relu, strided conv+relu, pool, dense: five kernels in NHWC, one conv in NCHW."""

    def __init__(self, convs: int = 2):
        super().__init__()
        layers = [torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU()]
        if convs > 1:
            layers += [torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU()]
        self.features = torch.nn.Sequential(*layers)
        self.convs = convs
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x):
        y = self.features(x)
        return self.fc(y.mean((2, 3))) if self.convs > 1 else y


def _onnx(tmp_path: Path, convs: int, hw: int = 32) -> tuple[Path, object]:
    import onnx
    torch.manual_seed(0)
    path = tmp_path / f"tiny{convs}.onnx"
    torch.onnx.export(TinyNet(convs).eval(), (torch.zeros(1, 3, hw, hw),), str(path), dynamo=True,
                      external_data=False, verbose=False)
    om = onnx.load(str(path))
    return path, tvm_adapter.import_onnx(om, om.graph.input[0].name, (1, 3, hw, hw))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_target_key_separates_targets():
    x86 = tvm_adapter.target_key(TARGET)
    arm = tvm_adapter.target_key({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                                  "mattr": ["+neon"], "num-cores": 6})
    assert x86 != arm and x86 == tvm_adapter.target_key(dict(reversed(list(TARGET.items()))))
    assert "/" not in x86 + arm


def test_local_tuning_records_warm_database_and_tuned_build(tmp_path):
    onnx_path, mod = _onnx(tmp_path, convs=2)
    fused, _ = tvm_adapter.run_graph_passes(mod, TARGET, layout="NHWC")
    db = tmp_path / "db"
    events = []
    res = tvm_adapter.tune(fused, TARGET, db, trials=12, progress=events.append)
    records = res.db_dir / "database_tuning_record.json"
    assert res.stopped is None and res.measured >= len(res.tasks) > 0
    assert _lines(records) == res.measured  # every measurement is a record, written as it came
    assert {e["task"] for e in events if e["event"] == "task"} == {t.name for t in res.tasks}
    for t in res.tasks:
        assert t.best_s is not None and t.measured >= 2, t
        if t.zero_trial_s is not None:  # the database keeps the faster of zero-trial and tuned
            assert t.best_s <= t.zero_trial_s
    convs = [t for t in res.tasks if "conv2d" in t.name]
    assert convs and all(t.zero_trial_s is not None and t.gflops > 0 for t in convs)

    # Warm database: same budget again measures nothing and takes no tuning time.
    again = tvm_adapter.tune(fused, TARGET, db, trials=12)
    assert again.measured == 0 and all(t.skipped for t in again.tasks)
    assert _lines(records) == res.measured and again.seconds < 10

    # The tuned build uses a record for every kernel; the rules skip them; numerics hold.
    zero, tuned = tmp_path / "zero.so", tmp_path / "tuned.so"
    tvm_adapter.build(fused, TARGET, zero, "g++")
    _, stats = tvm_adapter.build(fused, TARGET, tuned, "g++", tuning_db=db)
    assert stats["tuning"]["hit"] == stats["tuning"]["tasks"] == len(res.tasks)
    assert stats["tuning"]["missed"] == 0 and stats["skipped_already_scheduled"] == len(res.tasks)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("float32")
    ref = ort_run(onnx_path, x)
    for lib in (zero, tuned):  # speed is benchmarks/host_latency.py's: a timed assert here was flaky
        np.testing.assert_allclose(tvm_adapter.run_host_library(lib, x), ref, atol=1e-4, rtol=0)


def test_time_budget_and_missing_database(tmp_path):
    _, mod = _onnx(tmp_path, convs=1)
    res = tvm_adapter.tune(mod, TARGET, tmp_path / "db", trials=8, time_budget_s=1e-6)
    assert res.stopped == "time budget" and res.measured == 0
    _, stats = tvm_adapter.apply_database(mod, TARGET, tmp_path / "nothing-here")
    assert stats == {"tasks": 1, "hit": 0, "missed": 1}


def test_early_stopping_ends_a_kernel_and_stays_ended(tmp_path):
    """A kernel whose search stops gaining is left with its quota unspent, and a rerun with the
    same budget does not reopen it (a larger budget would)."""
    _, mod = _onnx(tmp_path, convs=1)
    res = tvm_adapter.tune(mod, TARGET, tmp_path / "db", trials=200, early_stopping=1)
    assert res.stopped is None and 1 < res.measured < 200, res
    ledger = json.loads((res.db_dir / "edgecls-tasks.json").read_text())
    assert any(e.get("converged_at_quota") == 200 for e in ledger.values()), ledger
    again = tvm_adapter.tune(mod, TARGET, tmp_path / "db", trials=200, early_stopping=1)
    assert again.measured == 0 and all(t.skipped for t in again.tasks)


def _group_alive(pgid: int, wait_s: float = 10.0) -> list[int]:
    """Live (non-zombie) processes of a process group, after waiting up to wait_s for them."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and os.getpgid(int(entry)) == pgid and \
                        Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    alive.append(int(entry))
            except OSError:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_rpc_tuning_through_ssh_board(ssh_board, tmp_path):
    """The board's python is the one running the tests (TVM importable), runtime-only as on a board."""
    _, mod = _onnx(tmp_path, convs=1)  # NCHW: one conv+relu kernel
    spec = tvm_adapter.RpcSpec(host=ssh_board.name, ssh_config=str(ssh_board.ssh_config),
                               python=sys.executable)
    res = tvm_adapter.tune(mod, TARGET, tmp_path / "db", trials=3, runner=spec)
    assert res.stopped is None and res.measured == 3, res
    assert _lines(res.db_dir / "database_tuning_record.json") == 3
    assert res.tasks[0].best_s is not None
    pid = res.rpc["remote_pid"]
    assert not _group_alive(pid)  # the server and its popen worker: the watchdog killed the group


def _cli(*args, env=None):
    import subprocess
    exe = str(Path(sys.executable).parent / "edgecls")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


def test_cli_tune_then_compile_applies_database(ssh_board, tmp_path):
    """`edgecls tune` here and on a board from the inventory, then `compile` hits every kernel."""
    import json
    model, _ = _onnx(tmp_path, convs=2)
    db = tmp_path / "db"
    p = _cli("tune", model, "--target", "x86-host", "--trials", "12", "--tuning-db", db, "--json")
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["measured"] >= len(summary["tasks"]) and summary["where"] == "this machine"
    assert all(t["best_ms"] is not None for t in summary["tasks"] if t["flops"])
    p = _cli("tune", model, "--target", "x86-host", "--trials", "12", "--tuning-db", db, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["measured"] == 0, p.stderr  # resumed: nothing left
    p = _cli("compile", model, "--target", "x86-host", "--tuning-db", db, "-o", tmp_path / "art")
    assert p.returncode == 0, p.stderr
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert m["stats"]["tuning"]["hit"] == m["stats"]["tuning"]["tasks"] > 0 and m["stats"]["tuning"]["missed"] == 0
    assert m["verification"]["max_abs_diff"] < 1e-4
    # On a board of the inventory: the RPC server is started over SSH and reached through `ssh -L`.
    env = {"EDGECLS_BOARDS": str(tmp_path / "boards.toml"), "EDGECLS_SSH_CONFIG": str(ssh_board.ssh_config)}
    p = _cli("boards", "add", "lb", "--host", ssh_board.name, "--target", "x86-host", "--python", sys.executable,
             "--workdir", ssh_board.workdir, env=env)
    assert p.returncode == 0, p.stderr
    p = _cli("tune", model, "--target", "x86-host", "--board", "lb", "--trials", "3", "--tuning-db",
             tmp_path / "db-board", "--json", env=env)
    assert p.returncode == 0, p.stderr
    summary = json.loads(p.stdout)
    assert summary["where"].startswith("board lb") and summary["measured"] >= 1
    # Errors users meet: an ARM target with nothing to measure on, a board of another target.
    for args, needle in ((["--target", "rk3399"], "--board"), (["--target", "rpi4", "--board", "lb"], "not a rpi4")):
        p = _cli("tune", model, *args, "--trials", "3", "--tuning-db", db, env=env)
        assert p.returncode != 0 and needle in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_boards_setup_pushes_tvm_then_tunes_on_the_board(ssh_board, tmp_path):
    """A board python without TVM: wheels are downloaded here, copied, installed in a board venv."""
    import json
    import shutil
    import subprocess

    import pytest
    bare = shutil.which("python3.11", path="/root/.pyenv/versions/3.11.7/bin:/usr/local/bin:/usr/bin") or ""
    if not bare or subprocess.run([bare, "-c", "import tvm"], capture_output=True).returncode == 0:
        pytest.skip("no python3.11 without TVM on this machine to play the board's python")
    env = {"EDGECLS_BOARDS": str(tmp_path / "boards.toml"), "EDGECLS_SSH_CONFIG": str(ssh_board.ssh_config)}
    p = _cli("boards", "add", "fresh", "--host", ssh_board.name, "--target", "x86-host", "--python", bare,
             "--workdir", ssh_board.workdir, env=env)
    assert p.returncode == 0, p.stderr
    model, _ = _onnx(tmp_path, convs=1)
    p = _cli("tune", model, "--target", "x86-host", "--board", "fresh", "--trials", "2", "--tuning-db", tmp_path / "db", env=env)
    assert p.returncode != 0 and "TVM RPC server did not start" in p.stderr, p.stderr  # no TVM there yet
    p = _cli("boards", "setup", "fresh", env=env)
    assert p.returncode == 0 and "installed" in p.stdout, p.stdout + p.stderr
    assert (ssh_board.workdir / "tvm-venv" / "bin" / "python").exists()
    p = _cli("boards", "setup", "fresh", env=env)  # again: nothing to do
    assert p.returncode == 0 and "present" in p.stdout, p.stdout + p.stderr
    p = _cli("tune", model, "--target", "x86-host", "--board", "fresh", "--trials", "2", "--tuning-db",
             tmp_path / "db", "--json", env=env)
    assert p.returncode == 0 and json.loads(p.stdout)["measured"] >= 1, p.stderr
