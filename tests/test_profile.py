"""`edgecls bench --profile`: time per kernel of a real x86 build, from the CLI and the Python API."""

from __future__ import annotations

import json

import pytest

import edgecls
from conftest import edgecls as edgecls_cli
from conftest import small_net_onnx
from edgecls.bench.profiled import VM_ROW, kernel_kind
from edgecls.errors import UsageError
from edgecls.pipeline import CompileRequest, compile_artifact


@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    d = tmp_path_factory.mktemp("profile")
    return compile_artifact(CompileRequest(model=small_net_onnx(d / "small.onnx", width=16), target="x86-host",
                                           out_dir=d / "small-x86"))


def test_profile_lists_every_kernel_and_adds_up(small_artifact, tmp_path):
    p = edgecls_cli("bench", small_artifact, "--local", "--profile", "--threads", "1", "--runs", "10",
                    "--top", "3", "-o", tmp_path)
    assert p.returncode == 0, p.stderr
    [path] = tmp_path.glob("*.json")
    report = json.loads(path.read_text())
    prof = report["profile"]
    assert report["board"]["name"] == "local-profile" and report["runtime"] == "tvm" and report["threads"] == 1
    names = [k["name"] for k in prof["kernels"]]
    # Two convolutions (each fused with its ReLU), the mean and the linear layer, and the VM's bookkeeping.
    assert sum(k["kind"] == "conv2d" for k in prof["kernels"]) == 2, names
    assert {"conv2d", "vm"} <= {k["kind"] for k in prof["kinds"]}
    assert VM_ROW in names and all(k["calls"] >= 1 and k["total_ms"] >= 0 for k in prof["kernels"])
    assert [k["total_ms"] for k in prof["kernels"]] == sorted((k["total_ms"] for k in prof["kernels"]), reverse=True)
    assert sum(k["share"] for k in prof["kernels"]) == pytest.approx(1, abs=0.01)
    assert sum(k["share"] for k in prof["kinds"]) == pytest.approx(1, abs=0.01)
    # The calls' time lies inside the instrumented inference, and is most of it.
    assert 0.3 * prof["instrumented_ms"] <= prof["kernels_ms"] <= 1.05 * prof["instrumented_ms"]
    assert report["timings_ms"]["median"] == pytest.approx(prof["inference_ms"], abs=1e-3) and len(report["timings_ms"]["runs"]) == 10
    assert "time per kernel per inference" in p.stdout and "more)" in p.stdout and "all conv2d" in p.stdout


def test_profile_api_and_refusals(small_artifact, tmp_path):
    [report] = edgecls.bench(small_artifact, local=True, profile=True, threads=1, runs=3, out_dir=tmp_path)
    assert report["profile"]["kernels"][0]["total_ms"] > 0
    with pytest.raises(UsageError, match="--count .* --profile"):
        edgecls.bench(small_artifact, local=True, emulate=True, count=True, profile=True, out_dir=tmp_path)
    p = edgecls_cli("bench", small_artifact, "--local", "--profile", "--runtime", "onnxruntime", "-o", tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr and "--profile times the TVM kernels" in p.stderr


def test_kernel_kinds_from_fused_names():
    assert kernel_kind("fused_conv2d25_maximum10_minimum101") == "conv2d"
    assert kernel_kind("conv2d281") == "conv2d"
    assert kernel_kind("fused_matmul4_add7_gelu1") == "matmul"
    assert kernel_kind("layer_norm2") == "layer_norm"
    assert kernel_kind("fast_softmax1") == "fast_softmax"  # softmax as fast_math._fast_softmax legalizes it
    assert kernel_kind("fused_batch_matmul3_multiply2") == "batch_matmul"
    assert kernel_kind("softmax1") == "softmax"
    assert kernel_kind(VM_ROW) == "vm"
