"""int8 quantization of the digits demo: real ONNX Runtime calibration, real TVM build, real QAT.

Calibration images come from the calibration split of the digits, which shares no image with
the validation split the accuracies are measured on. "1 point" of top-1 is 0.01.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgecls.artifact.manifest import read_manifest
from edgecls.compile.tvm import run_host_library
from edgecls.data import digits_dataset, split
from edgecls.errors import UsageError
from edgecls.optimize.qat import qat_pt2e
from edgecls.optimize.quantize import MIN_CALIBRATION_IMAGES, ptq_onnx, weight_dtypes
from edgecls.pipeline import CompileRequest, compile_artifact

from conftest import ort_run

POINT = 0.01
MAX_SIZE_RATIO = 0.35


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean())


@pytest.fixture(scope="module")
def splits():
    return split(digits_dataset())  # (fine-tune, calibration, validation), as the demo trains


@pytest.fixture(scope="module")
def val(demo):
    return np.load(demo.val_x), np.load(demo.val_y)


@pytest.fixture(scope="module")
def calib(splits, val):
    x = splits[1].x
    # Calibration must not see a validation image.
    val_rows = {row.tobytes() for row in val[0]}
    assert not any(row.tobytes() in val_rows for row in x)
    return x


@pytest.fixture(scope="module")
def fp32(demo, val):
    return top1(ort_run(demo.onnx, val[0]), val[1])


@pytest.fixture(scope="module")
def ptq(demo, calib, val, tmp_path_factory):
    res = ptq_onnx(demo.onnx, tmp_path_factory.mktemp("ptq") / "digits.int8.onnx", calib, "minmax")
    return res, ort_run(res.path, val[0])


def check_int8_file(res, onnx_in_size: int):
    model = onnx.load(str(res.path))
    n_weight_ops = sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in model.graph.node)
    assert n_weight_ops == 6 and len(res.weight_dtypes) == n_weight_ops
    assert set(res.weight_dtypes.values()) == {"INT8"}, res.weight_dtypes
    assert weight_dtypes(res.path) == res.weight_dtypes
    inits = {i.name: i for i in model.graph.initializer}
    assert all(inits[name].data_type == onnx.TensorProto.INT8 for name in res.weight_dtypes)
    # No float copy of a weight is left behind: float initializers are only biases/scales (1-D).
    assert all(len(i.dims) <= 1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert res.size_bytes_before == onnx_in_size and res.size_bytes_after == res.path.stat().st_size
    assert res.size_bytes_after <= MAX_SIZE_RATIO * res.size_bytes_before, res.to_dict()


def test_ptq_int8_weights_size_and_accuracy(demo, ptq, val, fp32):
    res, logits = ptq
    check_int8_file(res, demo.onnx.stat().st_size)
    assert res.method == "minmax" and res.per_channel and res.calibration_images == 269
    assert fp32 >= 0.97  # a real classifier, so a 1-point bound means something
    assert top1(logits, val[1]) >= fp32 - POINT


def test_ptq_int8_compiles_with_tvm(demo, ptq, val, fp32, tmp_path):
    res, ort_logits = ptq
    art = compile_artifact(CompileRequest(model=res.path, target="x86-host", out_dir=tmp_path / "int8"))
    tvm_logits = run_host_library(art / "model.so", val[0])
    assert tvm_logits.shape == ort_logits.shape
    assert top1(tvm_logits, val[1]) >= fp32 - POINT
    agree = float((tvm_logits.argmax(1) == ort_logits.argmax(1)).mean())
    assert agree >= 0.99, agree


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_ptq_calibration_methods(method, demo, calib, val, fp32, tmp_path):
    res = ptq_onnx(demo.onnx, tmp_path / f"{method}.onnx", calib, method)
    assert res.method == method
    check_int8_file(res, demo.onnx.stat().st_size)
    assert top1(ort_run(res.path, val[0]), val[1]) >= fp32 - POINT


def test_ptq_refuses_too_few_calibration_images(demo, calib, tmp_path):
    out = tmp_path / "few.onnx"
    with pytest.raises(UsageError, match="too few calibration images: 15 given") as exc:
        ptq_onnx(demo.onnx, out, calib[:MIN_CALIBRATION_IMAGES - 1])
    assert "\n" not in str(exc.value) and exc.value.exit_code == 2
    with pytest.raises(UsageError, match="at least 300 needed"):
        ptq_onnx(demo.onnx, out, calib, min_images=300)
    with pytest.raises(UsageError, match="the model expects"):
        ptq_onnx(demo.onnx, out, calib[:, :, :16, :16])
    with pytest.raises(UsageError, match="unknown calibration method"):
        ptq_onnx(demo.onnx, out, calib, "kl")
    assert not out.exists()


@pytest.fixture(scope="module")
def qat(demo, splits, val, tmp_path_factory):
    from edgecls.models import DigitsCNN
    model = DigitsCNN()
    model.load_state_dict(torch.export.load(demo.pt2).state_dict)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = qat_pt2e(model, splits[0], val, 2, tmp_path_factory.mktemp("qat") / "digits.qat.onnx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # input untouched
    return res, ort_run(res.path, val[0])


def test_qat_int8_onnx(demo, qat, val, fp32, tmp_path):
    res, ort_logits = qat
    check_int8_file(res, demo.onnx.stat().st_size)
    assert res.method == "qat" and res.extra["epochs"] == 2
    assert res.extra["fake_quant_accuracy"] >= fp32 - POINT
    assert top1(ort_logits, val[1]) >= fp32 - POINT
    # compile's own check compares with ORT with graph optimisations off (exact QDQ semantics;
    # ORT's fused int8 kernels differ by ~0.01 here), then top-1 over real images:
    art = compile_artifact(CompileRequest(model=res.path, target="x86-host", out_dir=tmp_path / "qat"))
    v = read_manifest(art)["verification"]
    assert v["max_abs_diff"] < 5e-2 and v["tolerance"] == 5e-2
    tvm_logits = run_host_library(art / "model.so", val[0])
    assert top1(tvm_logits, val[1]) >= fp32 - POINT
    assert float((tvm_logits.argmax(1) == ort_logits.argmax(1)).mean()) >= 0.99
