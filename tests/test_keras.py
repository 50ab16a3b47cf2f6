"""Keras input (edgecls[keras]): TF-MOT QAT / PTQ to a full-int8 .tflite, measured in ai-edge-litert.

A small Keras CNN (conv, depthwise-separable block, dense head) is trained here on the real
scikit-learn digits (8x8, 1 channel); skipped unless the extra is installed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 for TF-MOT; read when tensorflow is imported
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest.importorskip("tensorflow")
pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")
pytest.importorskip("ai_edge_litert")

from edgecls.data import digits_dataset, split  # noqa: E402
from edgecls.errors import EdgeclsError, ModelError  # noqa: E402
from edgecls.optimize.keras_qat import KERAS_PRUNE_MESSAGE, optimize_keras  # noqa: E402


def _train_digits_cnn(tune, path):
    import tf_keras as k
    k.utils.set_random_seed(0)
    inp = k.Input((8, 8, 1))
    x = k.layers.Conv2D(32, 3, padding="same", use_bias=False)(inp)
    x = k.layers.ReLU()(k.layers.BatchNormalization()(x))
    x = k.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)  # depthwise-separable block
    x = k.layers.ReLU()(k.layers.BatchNormalization()(x))
    x = k.layers.Conv2D(64, 1, use_bias=False)(x)
    x = k.layers.ReLU()(k.layers.BatchNormalization()(x))
    x = k.layers.MaxPool2D(2)(x)
    x = k.layers.Dense(64, activation="relu")(k.layers.Flatten()(x))
    model = k.Model(inp, k.layers.Dense(10)(x))
    model.compile(optimizer=k.optimizers.Adam(1e-3),
                  loss=k.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(tune.x.transpose(0, 2, 3, 1), tune.y, batch_size=32, epochs=15, verbose=0)
    model.save(path)
    return path


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    tune, calib, val = split(digits_dataset(size=8, channels=1), seed=0)
    path = _train_digits_cnn(tune, tmp_path_factory.mktemp("keras") / "digits.keras")
    return path, tune, calib, val


@pytest.fixture(scope="module")
def results(digits, tmp_path_factory):
    path, tune, calib, val = digits
    return {q: optimize_keras(path, tune, calib, val, tmp_path_factory.mktemp(q), quantize=q, epochs=2, seed=0)
            for q in ("none", "ptq", "qat")}


def _tensor_dtypes(path):
    from ai_edge_litert.interpreter import Interpreter
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return ({np.dtype(t["dtype"]) for t in it.get_tensor_details()},
            np.dtype(it.get_input_details()[0]["dtype"]), np.dtype(it.get_output_details()[0]["dtype"]))


def test_fp32_tflite_matches_keras(results):
    r = results["none"]
    assert r.variant == "fp32" and r.tflite.name == "model.tflite" and r.layout == "NHWC"
    original, tfl = r.stages[0], r.stages[-1]
    assert [s["stage"] for s in r.stages] == ["original", "tflite"]
    assert original["top1"] >= 0.9, f"the test CNN trained to only {original['top1']:.1%}"
    assert abs(tfl["top1"] - original["top1"]) <= 0.005
    dtypes, din, dout = _tensor_dtypes(r.tflite)
    assert din == dout == np.float32 and np.dtype(np.int8) not in dtypes


@pytest.mark.parametrize("mode", ["ptq", "qat"])
def test_int8_tflite(results, mode):
    r, fp32 = results[mode], results["none"]
    assert r.variant == "int8"
    names = [s["stage"] for s in r.stages]
    assert names == (["original", "qat-fine-tuned", "quantized"] if mode == "qat" else ["original", "quantized"])
    dtypes, din, dout = _tensor_dtypes(r.tflite)
    assert din == dout == np.int8
    assert np.dtype(np.int8) in dtypes and np.dtype(np.float32) not in dtypes
    size, fp32_size = r.tflite.stat().st_size, fp32.tflite.stat().st_size
    assert r.stages[-1]["size_bytes"] == size
    assert size <= 0.35 * fp32_size, f"int8 .tflite {size} bytes vs fp32 {fp32_size}"
    original, quantized = r.stages[0], r.stages[-1]
    assert quantized["top1"] >= original["top1"] - 0.02, f"{mode} top-1 {quantized['top1']:.1%} vs {original['top1']:.1%}"
    assert quantized["top5"] is not None and quantized["params"] == original["params"] > 0


def test_corrupt_or_missing_model_is_a_model_error(digits, tmp_path):
    _, tune, calib, val = digits
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file")
    for path in (bad, tmp_path / "missing.h5"):
        with pytest.raises(ModelError) as e:
            optimize_keras(path, tune, calib, val, tmp_path, quantize="ptq", epochs=0, seed=0)
        assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_extra_names_it(digits, tmp_path, monkeypatch):
    import sys
    path, tune, calib, val = digits
    monkeypatch.setitem(sys.modules, "tensorflow_model_optimization", None)  # import -> ImportError
    with pytest.raises(EdgeclsError, match=r"pip install 'edgecls\[keras\]'"):
        optimize_keras(path, tune, calib, val, tmp_path, quantize="qat", epochs=1, seed=0)


def test_prune_message_is_one_line():
    assert "\n" not in KERAS_PRUNE_MESSAGE and "unstructured" in KERAS_PRUNE_MESSAGE


@pytest.mark.slow
def test_cli_optimize_keras_to_int8_tflite(digits, tmp_path):
    """`edgecls optimize model.keras`: TF-MOT QAT to model.tflite; --prune and compile are refused."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from edgecls.data import write_digits_image_folder
    edgecls = str(Path(sys.executable).parent / "edgecls")
    folder = write_digits_image_folder(tmp_path / "digits8", size=8, mode="L")
    pre = tmp_path / "preprocess.json"
    pre.write_text(json.dumps({"size": [8, 8], "mean": [0.5], "std": [0.5], "channel_order": "RGB",
                               "layout": "NCHW", "resize": "bilinear"}))
    out = tmp_path / "opt"
    base = [edgecls, "optimize", str(digits[0]), "--data", str(folder), "--preprocess", str(pre)]
    p = subprocess.run(base + ["--quantize", "qat", "--epochs", "1", "-o", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (out / "model.tflite").is_file() and not (out / "model.onnx").exists()
    doc = json.loads((out / "optimize.json").read_text())
    assert doc["variant"] == "int8" and doc["stages"][-1]["stage"] == "quantized"
    assert np.load(out / "val_x.npy").shape[1:] == (8, 8, 1)  # NHWC, as the .tflite takes it
    _, din, dout = _tensor_dtypes(out / "model.tflite")
    assert din == dout == np.int8
    for argv, needle in ((base + ["--prune", "0.5", "-o", str(tmp_path / "x")], "unstructured"),
                         ([edgecls, "compile", str(digits[0]), "--target", "x86-host", "--data", str(folder),
                           "--quantize", "qat", "--preprocess", str(pre), "-o", str(tmp_path / "y")], "Keras")):
        p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        assert p.returncode != 0 and "Traceback" not in p.stderr and needle in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
