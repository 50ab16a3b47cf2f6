"""TFLite (LiteRT) export of the trained digits model: fp32 parity and full-int8 accuracy.

Skipped unless the optional extra is installed: pip install 'edgecls[tflite]'.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert")

from edgecls.artifact.harness.contract import schema_problems  # noqa: E402
from edgecls.data import digits_dataset, split  # noqa: E402
from edgecls.export import export_tflite, run_tflite  # noqa: E402


@pytest.fixture(scope="module")
def digits(demo):
    model = torch.load(demo.module, weights_only=False).eval()
    x, y = np.load(demo.val_x), np.load(demo.val_y)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return model, x, y, ref


@pytest.fixture(scope="module")
def fp32_tflite(digits, tmp_path_factory):
    model, x, _, _ = digits
    return export_tflite(model, torch.from_numpy(x[:1]), tmp_path_factory.mktemp("tfl") / "digits.tflite")


@pytest.fixture(scope="module")
def int8_tflite(digits, tmp_path_factory):
    model, x, _, _ = digits
    calib = split(digits_dataset(), seed=0)[1].x
    return export_tflite(model, torch.from_numpy(x[:1]), tmp_path_factory.mktemp("tfl") / "digits_int8.tflite",
                         int8_calib=calib)


def _tensor_dtypes(path) -> tuple[set, np.dtype, np.dtype]:
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return ({np.dtype(t["dtype"]) for t in it.get_tensor_details()},
            np.dtype(it.get_input_details()[0]["dtype"]), np.dtype(it.get_output_details()[0]["dtype"]))


def test_fp32_matches_torch(digits, fp32_tflite):
    _, x, _, ref = digits
    assert not fp32_tflite.quantized and fp32_tflite.size_bytes == fp32_tflite.path.stat().st_size > 0
    out = run_tflite(fp32_tflite.path, x)
    assert out.shape == ref.shape
    agree = np.mean(out.argmax(1) == ref.argmax(1))
    assert agree >= 0.99, f"fp32 TFLite top-1 agrees with torch on {agree:.1%}"
    assert np.allclose(out, ref, atol=1e-3, rtol=1e-3)
    dtypes, din, dout = _tensor_dtypes(fp32_tflite.path)
    assert din == dout == np.float32 and np.dtype(np.int8) not in dtypes


def test_int8_is_int8_and_accurate(digits, int8_tflite, fp32_tflite):
    _, x, y, ref = digits
    assert int8_tflite.quantized
    assert int8_tflite.size_bytes < fp32_tflite.size_bytes / 2  # int8 weights: about 4x smaller
    dtypes, din, dout = _tensor_dtypes(int8_tflite.path)
    assert np.dtype(np.int8) in dtypes and np.dtype(np.float32) not in dtypes
    assert din == dout == np.int8
    out = run_tflite(int8_tflite.path, x)
    fp32_acc, int8_acc = np.mean(ref.argmax(1) == y), np.mean(out.argmax(1) == y)
    assert int8_acc >= fp32_acc - 0.01, f"int8 top-1 {int8_acc:.1%} vs fp32 {fp32_acc:.1%}"


def test_bad_calibration_shape_is_a_usage_error(digits, tmp_path):
    from edgecls.errors import UsageError
    model, x, _, _ = digits
    with pytest.raises(UsageError):
        export_tflite(model, torch.from_numpy(x[:1]), tmp_path / "m.tflite", int8_calib=np.zeros((4, 1, 8, 8)))


def test_bench_py_litert_output_keeps_the_harness_schema(digits, fp32_tflite, int8_tflite, tmp_path):
    """The artifact's harness/bench_py.py on both .tflite files prints the JSON edgecls-runner
    prints (harness/contract.py); the int8 model takes and returns int8, quantized in the harness."""
    _, x, y, ref = digits
    np.save(tmp_path / "x.npy", x[:1])
    np.save(tmp_path / "ref.npy", ref[:1])
    np.save(tmp_path / "vx.npy", x[:16])
    np.save(tmp_path / "vy.npy", y[:16].astype("int64"))
    harness = Path(__file__).resolve().parent.parent / "edgecls" / "artifact" / "harness" / "bench_py.py"
    for model in (fp32_tflite, int8_tflite):
        p = subprocess.run([sys.executable, str(harness), "--runtime", "tflite", "--model", str(model.path),
                            "--input", "x.npy", "--ref-input", "x.npy", "--ref-output", "ref.npy",
                            "--val-x", "vx.npy", "--val-y", "vy.npy", "--runs", "5"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert p.returncode == 0, p.stderr
        r = json.loads(p.stdout)
        assert schema_problems(r) == [] and r["runtime_version"] == "ai-edge-litert"
        assert len(r["timings_ms"]["runs"]) == 5 and r["accuracy"]["n"] == 16
    assert r["reference"]["top1_match"] and r["accuracy"]["top1"] >= 0.8  # the int8 model, dequantized
