"""benchmarks/timing.py: each runtime timed in its own child process, stopped between its turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from timing import Worker  # noqa: E402

from edgecls.artifact.reference import onnx_reference  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A MatMul + Relu ONNX file and its input as .npy."""
    work = tmp_path_factory.mktemp("timing")
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, work / "tiny.onnx")
    np.save(work / "x.npy", np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32))
    return work / "tiny.onnx", work / "x.npy"


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_worker_times_in_its_own_stopped_process(tiny, tmp_path):
    model, x = tiny
    worker = Worker("ort", model, 1, x, warmup=1)
    try:
        assert worker.proc.pid != os.getpid()
        assert _state(worker.proc.pid) == "T"  # stopped while it is not its turn
        ms = worker.time(5)
        assert len(ms) == 5 and all(t > 0 for t in ms)
        assert _state(worker.proc.pid) == "T"
        out = worker.output(tmp_path / "out.npy")
        np.testing.assert_allclose(out, onnx_reference(model, np.load(x)), rtol=1e-6)
    finally:
        worker.close()
    assert worker.proc.returncode == 0


def test_one_shot_time_prints_per_call_ms(tiny, tmp_path):
    model, x = tiny
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "timing.py"), "time", "--kind", "ort",
                           "--path", str(model), "--threads", "1", "--input", str(x), "--runs", "4",
                           "--save-output", str(tmp_path / "o.npy")], capture_output=True, text=True, check=True)
    assert len(json.loads(done.stdout.strip().splitlines()[-1])) == 4
    assert np.load(tmp_path / "o.npy").shape == (1, 8)


def test_stopped_child_dies_with_its_parent(tiny):
    """A parent killed outright leaves no stopped child behind."""
    model, x = tiny
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from timing import Worker; "
            f"w = Worker('ort', {str(model)!r}, 1, {str(x)!r}, warmup=1); print(w.proc.pid, flush=True); "
            "import time; time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    for _ in range(100):
        if not Path(f"/proc/{child}").exists() or _state(child) == "Z":
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or _state(child) == "Z"
