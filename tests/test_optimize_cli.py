"""prune -> fine-tune -> quantize -> compile from the command line, accuracy checked per stage."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from conftest import edgecls

from edgecls.data import write_digits_image_folder
from edgecls.optimize.quantize import weight_dtypes
from edgecls.optimize.run import tflite_available

HAS_TFLITE = tflite_available()


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return write_digits_image_folder(tmp_path_factory.mktemp("imgs") / "digits")


@pytest.mark.slow
def test_compile_with_prune_and_ptq_records_every_stage(demo, digits_folder, tmp_path):
    out = tmp_path / "art"
    p = edgecls("compile", demo.module, "--target", "x86-host", "--data", digits_folder, "--prune", "0.5",
                "--quantize", "ptq", "--epochs", "4", "--preprocess", demo.preprocess,
                "--max-accuracy-drop", "2.0", "-o", out)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in m["stages"]}
    assert list(stages) == ["original", "pruned", "fine-tuned", "quantized"] + ["tflite"] * HAS_TFLITE + ["compiled"]
    assert stages["fine-tuned"]["macs"] <= 0.55 * stages["original"]["macs"]
    assert stages["fine-tuned"]["params"] <= 0.55 * stages["original"]["params"]
    assert stages["quantized"]["size_bytes"] <= 0.35 * stages["original"]["size_bytes"]
    # Every stage, the artifact included, on the same full validation split; boards get 64 of it.
    assert {s["n"] for s in m["stages"]} == {270} and stages["compiled"]["carried"]["n"] == 64
    assert stages["compiled"]["how"] == "edgecls-runner (native)" and m["acceptance"]["n"] == 270
    assert (stages["original"]["top1"] - stages["compiled"]["top1"]) * 100 <= 2.0
    # The variant read from the graph: ORT's static QDQ, int8 weights per channel, uint8 activations.
    assert m["variant"] == "pruned50-int8-static-perchannel-u8" and m["acceptance"]["accepted"]
    assert m["graph"]["macs"] <= 0.55 * stages["original"]["macs"] and m["graph"]["params"] > 0
    assert set(weight_dtypes(out / "model.onnx").values()) == {"INT8"}
    assert "accuracy at every stage" in p.stdout
    if not HAS_TFLITE:
        return
    # The artifact ships the same variant for LiteRT: full-int8 .tflite, within 1 point of ORT int8,
    # and the board harness runs all three runtimes on the carried validation batch.
    assert stages["tflite"]["dtype"] == "int8" and "model.tflite" in m["files"]
    assert abs(stages["tflite"]["top1"] - stages["quantized"]["top1"]) * 100 <= 1.0
    assert m["runtimes_shipped"] == ["tvm", "onnxruntime", "tflite"]
    p = edgecls("bench", out, "--local", "--runtime", "tvm,onnxruntime,tflite", "--runs", "5", "--warmup", "1",
                "-o", tmp_path / "reports")
    assert p.returncode == 0, p.stderr
    top1 = {r["runtime"]: r["accuracy"]["top1"] for r in
            (json.loads(f.read_text()) for f in (tmp_path / "reports").glob("*.json"))}
    assert set(top1) == {"tvm", "onnxruntime", "tflite"}
    assert abs(top1["tflite"] - top1["onnxruntime"]) <= 1 / 64 + 1e-9, top1  # at most one image of 64


def test_fp16_halves_the_file_and_compiles(demo, digits_folder, tmp_path):
    out = tmp_path / "art"
    p = edgecls("compile", demo.module, "--target", "x86-host", "--data", digits_folder, "--quantize", "fp16",
                "--no-tflite", "--preprocess", demo.preprocess, "--max-accuracy-drop", "1.5", "-o", out)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in m["stages"]}
    assert m["variant"] == "fp16" and "model.tflite" not in m["files"]
    assert stages["quantized"]["method"] == "fp16-weights"
    assert stages["quantized"]["size_bytes"] <= 0.55 * stages["original"]["size_bytes"]
    assert abs(stages["original"]["top1"] - stages["quantized"]["top1"]) * 100 <= 0.5
    model = onnx.load(str(out / "model.onnx"))
    big = [i for i in model.graph.initializer if len(i.dims) > 1]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float I/O kept
    assert m["verification"]["max_abs_diff"] < 1e-3  # same fp16-rounded weights, fp32 arithmetic


@pytest.mark.slow
def test_optimize_qat_stops_before_tvm(demo, digits_folder, tmp_path):
    out = tmp_path / "opt"
    p = edgecls("optimize", demo.module, "--data", digits_folder, "--quantize", "qat", "--epochs", "2",
                "--preprocess", demo.preprocess, "-o", out)
    assert p.returncode == 0, p.stderr
    doc = json.loads((out / "optimize.json").read_text())
    stages = {s["stage"]: s for s in doc["stages"]}
    first, last = stages["original"], stages["quantized"]
    assert last["method"] == "qat" and list(stages) == ["original", "quantized"] + ["tflite"] * HAS_TFLITE
    assert (first["top1"] - last["top1"]) * 100 <= 1.0
    assert (out / "model.tflite").is_file() == HAS_TFLITE
    onnx.checker.check_model(str(out / "model.onnx"))
    assert set(weight_dtypes(out / "model.onnx").values()) == {"INT8"}


def test_accuracy_gate_keeps_artifact_but_marks_it_rejected(demo, digits_folder, tmp_path):
    out = tmp_path / "art"
    # -2: the artifact must gain 2 points (270 images can tell that); an fp32 build gains nothing.
    p = edgecls("compile", demo.onnx, "--target", "x86-host", "--val-data", demo.dir,
                "--preprocess", demo.preprocess, "--max-accuracy-drop", "-2", "-o", out)
    assert p.returncode != 0 and "REJECTED" in p.stderr and "Traceback" not in p.stderr
    assert "(95 % CI -1.02 to 1.02) on 270 validation images" in p.stderr, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["acceptance"]["accepted"] is False and m["stages"][-1]["stage"] == "compiled"
    assert m["acceptance"]["n"] == m["stages"][-1]["n"] == m["stages"][0]["n"] == 270


def _one_line_error(p, needle):
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, p.stderr


def test_bad_optimize_inputs(demo, digits_folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = ["optimize", demo.module, "--preprocess", demo.preprocess, "-o", tmp_path / "o"]
    _one_line_error(edgecls(*base, "--data", empty, "--quantize", "ptq"), "")
    (empty / "cat").mkdir()
    _one_line_error(edgecls(*base, "--data", empty, "--quantize", "ptq"), "cat")
    _one_line_error(edgecls(*base, "--data", digits_folder, "--prune", "1.2"), "--prune 1.2")
    _one_line_error(edgecls("optimize", demo.onnx, "--data", digits_folder, "--prune", "0.5",
                            "-o", tmp_path / "o"), "torch.save")
    _one_line_error(edgecls("optimize", demo.module, "--data", digits_folder, "--quantize", "ptq",
                            "--preprocess", demo.preprocess, "--input-shape", "1,1,32,32", "-o", tmp_path / "o"),
                    "pass --input-shape 1,3,32,32")
    small = tmp_path / "small"  # 20 images: the calibration split is far below what PTQ needs
    for d in sorted(digits_folder.iterdir()):
        (small / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:2]:
            shutil.copy(f, small / d.name / f.name)
    _one_line_error(edgecls(*base, "--data", small, "--quantize", "ptq"), "calibration")
    assert not (tmp_path / "o").exists()


def test_separate_train_calib_val_folders(demo, digits_folder, tmp_path):
    parts = [tmp_path / n for n in ("train", "calib", "val")]
    for d in sorted(digits_folder.iterdir()):
        for i, f in enumerate(sorted(d.iterdir())[:60]):  # 20 per class per folder
            dest = parts[i % 3] / d.name
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest / f.name)
    out = tmp_path / "opt"
    p = edgecls("optimize", demo.module, "--train", parts[0], "--calib", parts[1], "--val", parts[2],
                "--quantize", "ptq", "--no-tflite", "--preprocess", demo.preprocess, "-o", out)
    assert p.returncode == 0, p.stderr
    stages = json.loads((out / "optimize.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["original", "quantized"]
    assert (stages[0]["top1"] - stages[1]["top1"]) * 100 <= 1.0
    p = edgecls("optimize", demo.module, "--train", parts[0], "--quantize", "ptq", "-o", tmp_path / "x")
    _one_line_error(p, "--calib")


@pytest.mark.slow
def test_prune_and_qat_together_for_rk3399_measured_under_qemu(demo, digits_folder, tmp_path):
    out = tmp_path / "art"
    p = edgecls("compile", demo.module, "--target", "rk3399", "--data", digits_folder, "--prune", "0.5",
                "--quantize", "qat", "--epochs", "4", "--preprocess", demo.preprocess,
                "--max-accuracy-drop", "2.0", "-o", out)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "manifest.json").read_text())
    stages = {s["stage"]: s for s in m["stages"]}
    assert stages["quantized"]["method"] == "qat"
    assert stages["compiled"]["how"] == "edgecls-runner (emulated)" and stages["compiled"]["n"] == 270
    assert (stages["original"]["top1"] - stages["compiled"]["top1"]) * 100 <= 2.0 and m["acceptance"]["accepted"]
    assert m["target"]["round_to"] == 8 and m["variant"].startswith("pruned50-int8-qat-")
