"""The runner's launcher follows the cores other processes leave free (runner/free_cores.cc):
a real edgecls artifact (MobileNetV2 at 64x64: its kernels have parallel loops), a real busy
process pinned to one of two cores, the counts the report records."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from runner_fixtures import bench_json

BUSY = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True:\n    pass\n"


def _stats(res: dict) -> dict:
    stats = res["affinity"]["launcher_stats"]
    assert set(stats) == {"follow_free_cores", "other_busy_cores", "loops_by_threads"}
    return stats


@pytest.fixture(scope="module")
def mnv2(artifacts):
    """(runner, model.so, input .npy, its reference output .npy) of the x86-host artifact."""
    art = artifacts.get("mobilenet_v2", "x86-host")
    return art / "edgecls-runner", art / "model.so", art / "reference" / "input.npy", art / "reference" / "output.npy"


def test_two_threads_drop_to_one_beside_a_busy_core(mnv2):
    """A busy process (same priority) on one of the runner's two cores: after the first 100 ms
    sample most parallel loops run on one thread, the estimate sees about one busy core (more
    when other work shares the machine), and results stay right."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    runner, model_so, x, ref = mnv2
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(cpus[1])])
    try:
        res = bench_json(runner, "--model", model_so, "--ref-input", x, "--ref-output", ref, "--threads", 2,
                         "--cores", f"{cpus[0]},{cpus[1]}", "--warmup-ms", 300, "--min-ms", 700)
    finally:
        busy.kill()
        busy.wait()
    stats = _stats(res)
    assert res["threads"] == 2 and res["reference"]["max_abs_diff"] < 1e-4
    assert stats["follow_free_cores"] is True and stats["other_busy_cores"] >= 0.6
    loops = stats["loops_by_threads"]
    assert set(loops) <= {"1", "2"} and loops.get("1", 0) > 2 * loops.get("2", 0)


def test_fixed_thread_count_on_request(mnv2, monkeypatch):
    """EDGECLS_RUNNER_FOLLOW_FREE=0 runs every loop on --threads threads, busy or not; one thread
    never follows anything."""
    runner, model_so, x, ref = mnv2
    monkeypatch.setenv("EDGECLS_RUNNER_FOLLOW_FREE", "0")
    res = bench_json(runner, "--model", model_so, "--ref-input", x, "--ref-output", ref, "--threads", 2, "--runs", 20)
    stats = _stats(res)
    assert stats["follow_free_cores"] is False and stats["other_busy_cores"] is None
    assert list(stats["loops_by_threads"]) == ["2"] and res["reference"]["max_abs_diff"] < 1e-4
    monkeypatch.delenv("EDGECLS_RUNNER_FOLLOW_FREE")
    stats = _stats(bench_json(runner, "--model", model_so, "--input", x, "--threads", 1, "--runs", 5))
    assert stats["follow_free_cores"] is False and list(stats["loops_by_threads"]) == ["1"]
