"""Several static batch sizes in one artifact, measured with `bench --batch`, a batch recommended."""

from __future__ import annotations

import json

import pytest
from conftest import edgecls


@pytest.mark.slow
def test_batch_sizes_compile_verify_bench_and_recommend(demo, tmp_path):
    art = tmp_path / "art"
    p = edgecls("compile", demo.pt2, "--target", "x86-host", "--batch-sizes", "1,4", "--val-data", demo.dir,
                "--no-tflite", "-o", art)
    assert p.returncode == 0, p.stderr
    m = json.loads((art / "manifest.json").read_text())
    assert m["batches"] == {"1": "model.so", "4": "model_b4.so"}
    assert m["verification"]["batches"]["4"]["max_abs_diff"] < 1e-3  # every row equals ORT's batch-1 output
    p = edgecls("bench", art, "--local", "--batch", "1,4", "--latency-budget", "1000", "--runs", "5",
                "--runtime", "tvm,onnxruntime", "-o", tmp_path / "r")
    assert p.returncode == 0, p.stderr
    reports = [json.loads(f.read_text()) for f in sorted((tmp_path / "r").glob("*.json"))]
    tvm = {r["batch"]: r for r in reports if r["runtime"] == "tvm"}
    assert set(tvm) == {1, 4} and [r["batch"] for r in reports if r["runtime"] == "onnxruntime"] == [1]
    b4 = tvm[4]
    assert abs(b4["bench"]["images_per_s"] - 4 * b4["bench"]["fps"]) < 1e-2
    assert b4["reference"]["max_abs_diff"] < 1e-3 and tvm[1]["accuracy"]["top1"] is not None
    rec = b4["batch_recommendation"]
    best = max(tvm.values(), key=lambda r: r["bench"]["images_per_s"])["batch"]
    assert rec["batch"] == best and rec["latency_budget_ms"] == 1000 and "recommended batch" in p.stdout
    # A budget no batch meets: said so, not a made-up pick.
    p = edgecls("bench", art, "--local", "--batch", "1,4", "--latency-budget", "0.0001", "--runs", "3",
                "-o", tmp_path / "r2")
    assert p.returncode == 0 and "no batch size has a median within" in p.stdout, p.stdout + p.stderr
    # `edgecls report` keeps batch sizes apart (variant fp32-b4).
    p = edgecls("report", tmp_path / "r", "--csv", tmp_path / "t.csv")
    assert p.returncode == 0, p.stderr
    assert "fp32-b4" in (tmp_path / "t.csv").read_text()


def test_missing_batch_or_runtime_keeps_the_other_reports(demo, tmp_path):
    art = tmp_path / "art"
    assert edgecls("compile", demo.onnx, "--target", "x86-host", "-o", art).returncode == 0
    p = edgecls("bench", art, "--local", "--batch", "1,2", "--runs", "3", "-o", tmp_path / "r")
    assert p.returncode != 0 and "--batch-sizes 1,2" in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = edgecls("bench", art, "--local", "--runtime", "tvm,tflite", "--runs", "3", "-o", tmp_path / "r2")
    assert p.returncode != 0 and "model.tflite" in p.stderr, p.stderr  # ONNX input: no .tflite shipped
    kept = [json.loads(f.read_text())["runtime"] for f in (tmp_path / "r2").glob("*.json")]
    assert kept == ["tvm"]  # the runtime that worked still has its report
