"""Shared by the native runner's tests (test_native_runner.py, test_runner_system.py): a tiny
2-conv classifier (16x16 input) exported from torch to ONNX, compiled with TVM for the host and for
aarch64, the runner built for each with a private EDGECLS_CACHE, and helpers that run it (natively
or under qemu-aarch64) and read its JSON. Two files so that pytest-xdist (--dist loadfile) can run
them on two workers; the module-scoped builds are a few seconds each.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecls.artifact.harness.contract import SCHEMA_VERSION, schema_problems
from edgecls.artifact.native import build_runner
from edgecls.artifact.runtime_libs import fetch_runtime, host_arch, runtime_libs
from edgecls.errors import ToolchainError
from edgecls.export.onnx import export_onnx

SHAPE = (1, 3, 16, 16)
A64_CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
A64_SYSROOT = Path("/usr/aarch64-linux-gnu")
_USER_CACHE = os.environ.get("EDGECLS_CACHE")


def _missing_a64_tools() -> str | None:
    missing = [t for t in (A64_CXX, QEMU) if shutil.which(t) is None]
    if not A64_SYSROOT.is_dir():
        missing.append(str(A64_SYSROOT))
    return ", ".join(missing) or None


needs_a64 = pytest.mark.skipif(host_arch() != "aarch64" and _missing_a64_tools() is not None,
                               reason=f"aarch64 cross tools missing: {_missing_a64_tools()}")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private EDGECLS_CACHE so runner builds are real and the user's cache is untouched."""
    d = tmp_path_factory.mktemp("edgecls-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGECLS_CACHE", str(d))
        yield d


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(onnx path, input .npy path, ONNX Runtime logits) for a tiny random classifier."""
    import onnxruntime as ort
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.fc = torch.nn.Linear(16, 10)

        def forward(self, x):
            x = torch.relu(self.c2(torch.relu(self.c1(x))))
            return self.fc(x.mean((2, 3)))

    d = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    onnx_path = d / "tiny.onnx"
    export_onnx(Tiny().eval(), torch.randn(*SHAPE), onnx_path, named=False)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype("float32")
    np.save(d / "x.npy", x)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    return onnx_path, d / "x.npy", ref


def _tvm_build(onnx_path: Path, arch: str, out: Path) -> Path:
    import onnx
    import tvm
    import tvm.support.cc as scc
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    om = onnx.load(str(onnx_path))
    mod = from_onnx(om, shape_dict={om.graph.input[0].name: list(SHAPE)}, keep_params_in_input=False)
    if arch == host_arch():
        tgt = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(), "num-cores": 2})
        fcompile = None
    else:
        tgt = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                                 "mattr": ["+neon"], "num-cores": 2})
        fcompile = scc.cross_compiler(A64_CXX)
    ex = tvm.compile(mod, tgt, relax_pipeline=relax.get_default_pipeline(tgt))
    ex.export_library(str(out), fcompile=fcompile)
    return out


@pytest.fixture(scope="module")
def host_art(cache, model, tmp_path_factory):
    """A host artifact dir: runner + libs + model.so."""
    d = tmp_path_factory.mktemp("host-art")
    runner = build_runner(host_arch(), "g++", d, runtime_libs(host_arch()))
    return runner, _tvm_build(model[0], host_arch(), d / "model.so")


@pytest.fixture(scope="module")
def a64_libs(cache):
    with pytest.MonkeyPatch.context() as mp:  # reuse (read-only) a runtime the user already fetched
        if _USER_CACHE is None:
            mp.delenv("EDGECLS_CACHE", raising=False)
        else:
            mp.setenv("EDGECLS_CACHE", _USER_CACHE)
        try:
            return runtime_libs("aarch64")
        except ToolchainError:
            pass
    try:  # else one real `pip download` into the private cache
        return fetch_runtime("aarch64", quiet=True)
    except ToolchainError as e:
        pytest.skip(f"aarch64 TVM runtime unavailable (pip download failed?): {e}")


@pytest.fixture(scope="module")
def a64_art(a64_libs, model, tmp_path_factory):
    d = tmp_path_factory.mktemp("a64-art")
    compiler = "g++" if host_arch() == "aarch64" else A64_CXX
    runner = build_runner("aarch64", compiler, d, a64_libs)
    return runner, _tvm_build(model[0], "aarch64", d / "model.so")


@pytest.fixture(scope="module")
def val_set(model, tmp_path_factory):
    """(X.npy, Y.npy, expected top1, expected top5) for 14 images labelled with a class of known
    rank in ONNX Runtime's scores (rank i % 7), so top-1 and top-5 hits are known in advance."""
    import onnxruntime as ort

    d = tmp_path_factory.mktemp("val")
    sess = ort.InferenceSession(str(model[0]), providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(1).standard_normal((14, *SHAPE[1:])).astype("float32")
    ranks = np.arange(len(xs)) % 7
    labels = np.array([np.argsort(-sess.run(None, {sess.get_inputs()[0].name: x[None]})[0][0],
                                  kind="stable")[r] for x, r in zip(xs, ranks)], dtype="int64")
    np.save(d / "x.npy", xs)
    np.save(d / "y.npy", labels)
    return d / "x.npy", d / "y.npy", float(np.mean(ranks == 0)), float(np.mean(ranks < 5))


def run_runner(runner: Path, *args, qemu: bool = False) -> subprocess.CompletedProcess:
    prefix = [QEMU, "-L", str(A64_SYSROOT)] if qemu and host_arch() != "aarch64" else []
    return subprocess.run([*prefix, str(runner), *map(str, args)], capture_output=True, text=True, timeout=120)


def check_against_reference(runner, model_so, model, tmp_path, qemu=False):
    _, x_npy, ref = model
    out = tmp_path / "out.npy"
    p = run_runner(runner, "--model", model_so, "--input", x_npy, "--output", out, "--topk", 5,
                  "--warmup", 2, "--runs", 3, qemu=qemu)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)  # exactly one JSON object
    assert res["schema"] == SCHEMA_VERSION and res["runner"] == "edgecls-runner"
    assert schema_problems(res) == []  # the JSON bench_py.py and bench_trt.py print too
    assert res["input"] == {"shape": list(SHAPE), "dtype": "float32"}
    assert res["output"] == {"shape": [1, 10], "dtype": "float32"}
    logits = np.load(out)
    assert logits.shape == ref.shape and logits.dtype == np.float32
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)
    top = [t["index"] for t in res["topk"]]
    assert top == list(np.argsort(-ref[0], kind="stable")[:5])
    np.testing.assert_allclose([t["score"] for t in res["topk"]], ref[0][top], atol=1e-4)
    tm = res["timings_ms"]
    assert len(tm["warmup"]) == 2 and len(tm["runs"]) == 3
    assert tm["min"] <= tm["median"] <= tm["max"] and tm["min"] <= tm["mean"] <= tm["max"]
    assert tm["std"] >= 0 and tm["load"] > 0
    return res



def bench_json(runner: Path, *args, qemu: bool = False) -> dict:
    p = run_runner(runner, *args, qemu=qemu)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
