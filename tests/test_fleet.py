"""Tuning on a fleet of boards through TVM's RPC tracker (edgecls.compile.tvm.tuning.tracker), and the lock
that keeps two tune runs on one database from losing each other's ledger updates.

Both "boards" are the one loopback sshd of the ssh_board fixture, with the test's python (TVM
importable) as the board's python: each gets its own RPC server, registered with the tracker
under its own loopback address. Real sshd, real TVM, no mocks.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import sshd
from test_tuning import TARGET, _cli, _group_alive, _lines, _onnx

from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.tune import TuneRequest, tune_model
from edgecls.errors import UsageError
from edgecls.remote.boards import Board, add_board

ssh_board = sshd.ssh_board


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(onnx path, imported module) of a one-kernel net (NCHW conv+relu), exported once."""
    return _onnx(tmp_path_factory.mktemp("model"), convs=1)


def _spec(board, name: str, python: str = sys.executable) -> tvm_adapter.RpcSpec:
    return tvm_adapter.RpcSpec(host=board.name, name=name, ssh_config=str(board.ssh_config), python=python)


def _leftovers(board, wait_s: float = 10.0) -> list[str]:
    """Processes left behind, after waiting up to wait_s for them to go: anything under the sshd
    but sshd itself (RPC servers, watchdogs), and ssh clients here using the fixture's config
    (forwards both ways, server sessions)."""
    sshd_exe, config = os.path.realpath(sshd.SSHD), str(board.ssh_config).encode()
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        under_sshd = set(sshd.process_tree(board.proc.pid))
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                zombie = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
                exe = os.readlink(f"/proc/{entry}/exe")
            except OSError:
                continue
            if not zombie and ((int(entry) in under_sshd and exe != sshd_exe)
                               or (cmd[0].endswith(b"ssh") and config in cmd)):
                left.append(b" ".join(cmd).decode(errors="replace"))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_fleet_of_two_boards_shares_the_measurements(ssh_board, tiny, tmp_path):
    """Two boards behind the tracker: 8 measurements, both servers registered and serving."""
    mod = tiny[1]
    res = tvm_adapter.tune(mod, TARGET, tmp_path / "db", trials=8,
                           runner=[_spec(ssh_board, "a"), _spec(ssh_board, "b")])
    assert res.stopped is None and res.measured == 8, res
    assert _lines(res.db_dir / "database_tuning_record.json") == 8
    assert res.tasks[0].best_s is not None
    boards = res.rpc["boards"]
    assert set(boards) == {"a", "b"} and all(b["registered"] for b in boards.values()), boards
    assert boards["a"]["addr"] != boards["b"]["addr"]
    # The tracker hands out free servers first-in first-out and a server re-registers after each
    # session, so with 8 measurements each board serves some (deterministic, not load-dependent).
    sessions = {n: b["sessions"] for n, b in boards.items()}
    assert all(s >= 1 for s in sessions.values()) and sum(sessions.values()) <= res.measured, sessions
    # Nothing outlives the run: servers (with their popen workers), forwards, the tracker.
    for b in boards.values():
        assert not _group_alive(b["remote_pid"])
    assert not _leftovers(ssh_board)
    assert not any(t.name == "edgecls-rpc-tracker" for t in threading.enumerate())
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", res.rpc["tracker_port"])) != 0


def test_cli_fleet_takes_the_targets_boards_and_names_one_that_fails(ssh_board, tiny, tmp_path):
    """--fleet: every non-emulated inventory board of the target (a, b; not pi, not emu). Board b's
    python does not exist: the run fails with one line naming it, and a's server is stopped."""
    env = {"EDGECLS_BOARDS": str(tmp_path / "boards.toml"), "EDGECLS_SSH_CONFIG": str(ssh_board.ssh_config)}
    for name, target, python, emulator in (("a", "x86-host", sys.executable, ()),
                                           ("b", "x86-host", "/nonexistent/python3", ()),
                                           ("pi", "rpi4", sys.executable, ()),
                                           ("emu", "x86-host", sys.executable, ("true",))):
        add_board(env["EDGECLS_BOARDS"], Board(name=name, host=ssh_board.name, target=target, python=python,
                                               workdir=str(ssh_board.workdir), emulator=emulator))
    model = tiny[0]
    p = _cli("tune", model, "--target", "x86-host", "--fleet", "--trials", "8", "--tuning-db", tmp_path / "db",
             env=env)
    assert "on 2 boards (a, b) over SSH through TVM's RPC tracker" in " ".join(p.stdout.split()), p.stdout
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 7 and len(errors) == 1 and "Traceback" not in p.stderr, p.stderr
    assert errors[0].startswith("error: board b: TVM RPC server did not start"), errors
    assert not _leftovers(ssh_board)
    with pytest.raises(UsageError, match="not both"):
        tune_model(TuneRequest(model=model, target="x86-host", boards=("a",), fleet=True,
                               inventory=Path(env["EDGECLS_BOARDS"])))


def test_two_tune_runs_on_one_database_wait_for_each_other(tiny, tmp_path):
    """Run A holds the database lock (its progress callback waits until B says it is waiting);
    B then measures what A left: records and ledger add up to both runs."""
    fused, _ = tvm_adapter.run_graph_passes(tiny[1], TARGET, layout=None)
    db = tmp_path / "db"
    waiting, started, results, errors = threading.Event(), threading.Event(), {}, []

    class Watch(logging.Handler):
        def emit(self, record):
            if f"waiting for tuning database lock held by pid {os.getpid()}" in record.getMessage():
                waiting.set()  # A's pid: both runs are threads of this process

    def progress_a(event):
        started.set()
        waiting.wait(60)  # keeps the lock until B has asked for it

    def run(name, trials, progress=lambda e: None):
        try:
            results[name] = tvm_adapter.tune(fused, TARGET, db, trials=trials, progress=progress)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    watch = Watch()
    logging.getLogger("edgecls.compile.tvm.tuning.tuner").addHandler(watch)
    try:
        a = threading.Thread(target=run, args=("a", 2, progress_a))
        a.start()
        assert started.wait(120), errors
        b = threading.Thread(target=run, args=("b", 4))
        b.start()
        a.join(300)
        b.join(300)
    finally:
        logging.getLogger("edgecls.compile.tvm.tuning.tuner").removeHandler(watch)
    assert not errors and waiting.is_set(), errors
    a, b = results["a"], results["b"]
    assert a.measured == 2 and b.measured == 2, (a, b)  # B only tops up to its quota of 4
    ledger = json.loads((a.db_dir / "edgecls-tasks.json").read_text())
    assert sum(e["measured"] for e in ledger.values()) == 4 == _lines(a.db_dir / "database_tuning_record.json")


# What TVM's server does when it loses a port race, for real: it binds with SO_REUSEADDR and logs
# "bind to"; a rival that bound the same port then listens first, so its own listen() fails.
_LOSE_THE_PORT_RACE = """
import socket, sys
def reusing():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); return s
mine, rival = reusing(), reusing()
mine.bind(("127.0.0.1", 0)); port = mine.getsockname()[1]
rival.bind(("127.0.0.1", port))
print(f"INFO bind to 127.0.0.1:{port}", file=sys.stderr, flush=True)
rival.listen(1)
mine.listen(1)
"""


def test_a_server_that_loses_the_port_race_is_started_again(ssh_board, tmp_path):
    """Two servers starting at once on one host can both bind port 9090; the one that listens
    second logs its bind and dies. The board's first start here loses that race; the server is
    started again and the yielded port reaches a live TVM RPC server."""
    from tvm import rpc

    from edgecls.compile.tvm.tuning.rpc_server import rpc_server
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nif mkdir "$0.lost" 2>/dev/null; then exec {sys.executable} -c \'{_LOSE_THE_PORT_RACE}\'; fi\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    info: dict = {}
    with rpc_server(_spec(ssh_board, "a", str(python)), info) as port:
        assert (tmp_path / "python.lost").is_dir()  # the first start did run and lose
        session = rpc.connect("127.0.0.1", port)
        assert session.cpu(0).exist
    assert 9090 <= info["remote_port"] < 9199 and info["sessions"] == 1, info
    assert not _leftovers(ssh_board)
