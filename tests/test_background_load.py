"""bench --background-load: real busy processes beside each runtime, on this machine and on a
board over a real sshd; always stopped (success, a failing benchmark, Ctrl-C), ending by
themselves when nothing stops them; recorded in the reports and shown by report as a variant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import EDGECLS, edgecls
from edgecls.bench.load import MARKER, background_load, check_background_load, start_load
from edgecls.bench.places import BoardPlace, LocalPlace
from edgecls.errors import UsageError
from edgecls.remote.boards import Board, connect
from sshd import ssh_board  # noqa: F401  (fixture)


def load_pids() -> set[int]:
    """Live (not zombie) busy loops: processes whose command line carries the load's marker, less
    their own children (each `$(date +%s)` forks a subshell that carries the same command line
    until it execs date: seen as a third process under a loaded CI run)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if MARKER.encode() in (d / "cmdline").read_bytes():
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if stat[0] != "Z":
                    found[int(d.name)] = int(stat[1])  # pid -> parent pid
        except OSError:  # it just ended
            pass
    return {pid for pid, parent in found.items() if parent not in found}


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(stat[11]) + int(stat[12])  # utime + stime


def wait_for(pred, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


@pytest.fixture(autouse=True)
def nothing_left_over():
    assert not load_pids(), "a background load from elsewhere is running"
    yield
    left = load_pids()
    for pid in left:  # leave the machine clean for the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert not left, f"background load left running: {left}"


def test_local_load_burns_cpu_during_the_body_and_is_stopped():
    with background_load(LocalPlace(), 2, bound_s=120) as record:
        pids = load_pids()
        assert len(pids) == 2
        before = {p: cpu_ticks(p) for p in pids}
        assert wait_for(lambda: all(cpu_ticks(p) > before[p] for p in pids), 30)  # busy, not asleep
        assert record == {"processes": 2, "kind": "shell busy loop", "bound_s": 121, "stopped": False}
    assert record["stopped"] is True and not load_pids()
    with pytest.raises(RuntimeError, match="the benchmark broke"):
        with background_load(LocalPlace(), 1, bound_s=120):
            assert len(load_pids()) == 1
            raise RuntimeError("the benchmark broke")
    assert not load_pids()
    with background_load(LocalPlace(), 0, bound_s=120) as record:  # none asked: nothing starts
        assert record is None and not load_pids()


def test_load_ends_by_itself_after_its_bound():
    """What a killed edgecls leaves behind (nothing stops the loops) ends within its bound."""
    pids = start_load(LocalPlace(), 1, bound_s=1)
    assert set(pids) == load_pids()
    assert wait_for(lambda: not load_pids(), 30)


def test_load_over_ssh_on_a_real_sshd(ssh_board, tmp_path):  # noqa: F811
    b = Board(name="b1", host=ssh_board.name, target="x86-host", workdir=str(ssh_board.workdir))
    host = connect(b, ssh_config=ssh_board.ssh_config, connect_timeout=5)
    try:
        with background_load(BoardPlace(b, host), 2, bound_s=120) as record:
            # the board is this machine: its loops are visible here, children of the board's sshd session
            assert len(load_pids()) == 2
        assert record["stopped"] is True and not load_pids()
    finally:
        host.close()


def test_bad_counts_are_usage_errors():
    assert check_background_load(None) == 0 and check_background_load(3) == 3
    with pytest.raises(UsageError, match="0..64"):
        check_background_load(65)
    with pytest.raises(UsageError, match="--count"):
        check_background_load(1, count=True)


def reports_in(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


def test_bench_records_the_load_and_report_shows_it_as_a_variant(artifacts, tmp_path):
    art = artifacts.get("digits", "x86-host")
    out = tmp_path / "reports"
    p = edgecls("bench", art, "--local", "--runtime", "tvm,onnxruntime", "--runs", "3", "--warmup", "1",
                "--background-load", "2", "-o", out)
    assert p.returncode == 0, p.stderr
    assert "2 busy process(es) beside each runtime" in " ".join(p.stdout.split())
    loaded = reports_in(out)
    assert {r["runtime"] for r in loaded} == {"tvm", "onnxruntime"}
    for r in loaded:
        assert r["background_load"] == {"processes": 2, "kind": "shell busy loop", "bound_s": 1831, "stopped": True}
        assert r["options"]["background_load"] == 2
    p = edgecls("bench", art, "--local", "--runtime", "tvm", "--runs", "3", "--warmup", "1", "-o", out)
    assert p.returncode == 0, p.stderr
    quiet = [r for r in reports_in(out) if r not in loaded]
    assert [r["background_load"] for r in quiet] == [None] and quiet[0]["options"]["background_load"] == 0

    from edgecls import report
    rows = report(out)
    assert sorted((r["runtime"], r["variant"]) for r in rows) == [
        ("onnxruntime", "fp32-load2"), ("tvm", "fp32"), ("tvm", "fp32-load2")]
    p = edgecls("report", out, "--baseline", "local:tvm:fp32")
    assert p.returncode == 0, p.stderr
    assert "fp32-load2" in p.stdout


def test_failing_benchmark_stops_the_load(artifacts, tmp_path):
    art = artifacts.get("digits", "x86-host")
    p = edgecls("bench", art, "--local", "--runtime", "tvm", "--cores", "4095", "--threads", "1",
                "--background-load", "2", "-o", tmp_path / "r")
    assert p.returncode != 0 and "error" in p.stderr.lower() and "Traceback" not in p.stderr
    # (the autouse fixture checks that no loop survived)


def test_ctrl_c_stops_the_load(artifacts, tmp_path):
    art = artifacts.get("digits", "x86-host")
    proc = subprocess.Popen([EDGECLS, "bench", str(art), "--local", "--runtime", "tvm", "--runs", "1",
                             "--min-ms", "120000", "--background-load", "2", "-o", str(tmp_path / "r")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as in a terminal: pytest-xdist's workers ignore SIGINT, and an ignored
                            # signal stays ignored across exec (the bench then ran its full 120 s)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert wait_for(lambda: len(load_pids()) == 2, 120), "the load never started"
        assert proc.poll() is None, "the bench ended before Ctrl-C"
        time.sleep(1)  # the harness is running now
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends: the whole foreground group
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "Traceback" not in err


def test_reports_of_one_second_never_overwrite_each_other(tmp_path):
    """A quiet bench right after a loaded one can finish within the same second (seen under CI
    load: the loaded TVM report vanished); each report keeps its own file."""
    from edgecls.bench.harness import write_report
    report = {"created": "2026-12-03T14:17:06+00:00", "board": {"name": "local"}, "artifact": {"name": "art"},
              "runtime": "tvm", "batch": 1, "background_load": None}
    loaded = {**report, "background_load": {"processes": 2}}
    paths = [write_report(tmp_path, r) for r in (loaded, report, report)]
    assert [p.name for p in paths] == ["local-art-tvm-load2-20261203T141706.json", "local-art-tvm-20261203T141706.json",
                                       "local-art-tvm-20261203T141706-2.json"]
    assert [json.loads(p.read_text()) for p in paths] == [loaded, report, report]
