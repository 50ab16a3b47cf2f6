"""The native runner with real components: real TVM builds, real compilers, real qemu, no mocks.

A tiny 2-conv classifier (16x16 input) is exported from torch to ONNX, compiled with TVM for the
host and for aarch64, and run by `edgecls-runner` natively and under qemu-aarch64; the logits
must match ONNX Runtime. The aarch64 tests skip (with the reason) if the cross compiler, qemu
or the aarch64 TVM runtime (needs one `pip download`) is unavailable.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgecls.artifact.native import build_runner, elf_arch, required_glibc, required_glibcxx
from edgecls.artifact.runtime_libs import LIB_FFI, LIB_RUNTIME, fetch_runtime, host_arch, runtime_libs
from edgecls.errors import ArtifactError, ToolchainError

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
    torch.onnx.export(Tiny().eval(), (torch.randn(*SHAPE),), str(onnx_path), dynamo=True, external_data=False)
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


def _run(runner: Path, *args, qemu: bool = False) -> subprocess.CompletedProcess:
    prefix = [QEMU, "-L", str(A64_SYSROOT)] if qemu and host_arch() != "aarch64" else []
    return subprocess.run([*prefix, str(runner), *map(str, args)], capture_output=True, text=True, timeout=120)


def _check_against_reference(runner, model_so, model, tmp_path, qemu=False):
    _, x_npy, ref = model
    out = tmp_path / "out.npy"
    p = _run(runner, "--model", model_so, "--input", x_npy, "--output", out, "--topk", 5,
             "--warmup", 2, "--runs", 3, qemu=qemu)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)  # exactly one JSON object
    assert res["schema"] == 1 and res["runner"] == "edgecls-runner"
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


def test_host_runner_matches_onnxruntime(host_art, model, tmp_path):
    runner, model_so = host_art
    assert sorted(p.name for p in runner.parent.iterdir()) == sorted(
        ["edgecls-runner", LIB_FFI, LIB_RUNTIME, "model.so"])
    _check_against_reference(runner, model_so, model, tmp_path)


@needs_a64
def test_aarch64_runner_under_qemu_matches_onnxruntime(a64_art, model, tmp_path):
    runner, model_so = a64_art
    for f in (runner, model_so, runner.parent / LIB_RUNTIME, runner.parent / LIB_FFI):
        assert elf_arch(f) == "aarch64"
    _check_against_reference(runner, model_so, model, tmp_path, qemu=True)


def test_threads_option_sizes_the_tvm_thread_pool(host_art, model):
    runner, model_so = host_art
    cpus = len(os.sched_getaffinity(0))
    for n in (1, 2):
        p = _run(runner, "--model", model_so, "--input", model[1], "--threads", n)
        assert p.returncode == 0, p.stderr
        # Read back from TVM's runtime.NumThreads; TVM caps the pool at the available cores.
        assert json.loads(p.stdout)["threads"] == min(n, cpus)


def test_runner_errors_are_one_line_exit_2(host_art, model, tmp_path):
    runner, model_so = host_art
    (tmp_path / "garbage.npy").write_bytes(b"not a numpy file")
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 8, 8), "float32"))
    np.save(tmp_path / "u8.npy", np.zeros(SHAPE, "uint8"))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((2, 3), "float32")))
    np.save(tmp_path / "complex.npy", np.zeros(3, "complex64"))
    (tmp_path / "fake.so").write_text("not a library")
    cases = {
        "missing model": (["--model", tmp_path / "nope.so", "--input", model[1]], "cannot open model"),
        "not a library": (["--model", tmp_path / "fake.so", "--input", model[1]], "not a shared library"),
        "missing input": (["--model", model_so, "--input", tmp_path / "nope.npy"], "cannot open input"),
        "bad npy": (["--model", model_so, "--input", tmp_path / "garbage.npy"], "not a .npy file"),
        "wrong shape": (["--model", model_so, "--input", tmp_path / "small.npy"], "mismatch"),
        "wrong dtype": (["--model", model_so, "--input", tmp_path / "u8.npy"], "uint8"),
        "fortran order": (["--model", model_so, "--input", tmp_path / "fortran.npy"], "Fortran order"),
        "bad dtype": (["--model", model_so, "--input", tmp_path / "complex.npy"], "unsupported npy dtype"),
        "bad option": (["--model", model_so, "--input", model[1], "--runs", "0"], "--runs"),
        "missing args": (["--input", model[1]], "required"),
    }
    for name, (args, needle) in cases.items():
        p = _run(runner, *args)
        assert p.returncode == 2, (name, p.stdout, p.stderr)
        assert p.stdout == "", name
        lines = p.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgecls-runner: error: "), (name, p.stderr)
        assert needle in lines[0], (name, lines[0])


def test_runner_build_is_cached(host_art, cache, tmp_path):
    runner, _ = host_art
    before = sorted((cache / "runners").iterdir())
    again = build_runner(host_arch(), "g++", tmp_path, runtime_libs(host_arch()))
    assert sorted((cache / "runners").iterdir()) == before  # no new build
    assert again.read_bytes() == runner.read_bytes()
    assert (tmp_path / LIB_RUNTIME).is_file() and (tmp_path / LIB_FFI).is_file()


def test_build_runner_missing_compiler(cache, tmp_path):
    with pytest.raises(ToolchainError, match="no-such-g\\+\\+"):
        build_runner(host_arch(), "no-such-g++", tmp_path, runtime_libs(host_arch()))


def test_foreign_runtime_missing_tells_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_CACHE", str(tmp_path))
    foreign = "x86_64" if host_arch() == "aarch64" else "aarch64"
    with pytest.raises(ToolchainError, match=f"edgecls runtimes fetch --arch {foreign}"):
        runtime_libs(foreign)


def test_host_runtime_libs():
    libs = runtime_libs(host_arch())
    assert libs.arch == host_arch()
    assert libs.tvm_runtime.name == LIB_RUNTIME and libs.tvm_ffi.name == LIB_FFI
    assert all(p.is_file() for p in libs.paths)


def test_elf_arch(host_art, tmp_path):
    runner, model_so = host_art
    assert elf_arch(runner) == host_arch()
    assert elf_arch(model_so) == host_arch()
    (tmp_path / "text").write_text("hello")
    with pytest.raises(ArtifactError):
        elf_arch(tmp_path / "text")


def _readelf_max(paths, prefix):
    """Reference value from binutils, independent of our pure-Python parser."""
    best = None
    for p in paths:
        out = subprocess.run(["readelf", "-V", "--wide", str(p)], capture_output=True, text=True).stdout
        section = out.split(".gnu.version_r", 1)[-1] if ".gnu.version_r" in out else ""
        for v in re.findall(rf"Name: {prefix}(\d+(?:\.\d+)+)", section):
            t = tuple(map(int, v.split(".")))
            best = t if best is None or t > best else best
    return ".".join(map(str, best)) if best else None


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_required_glibc_matches_readelf(host_art):
    runner, model_so = host_art
    files = [runner, model_so, runner.parent / LIB_RUNTIME, runner.parent / LIB_FFI]
    for f in files:
        assert required_glibc([f]) == _readelf_max([f], "GLIBC_")
        assert required_glibcxx([f]) == _readelf_max([f], "GLIBCXX_")
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", required_glibc(files))


@needs_a64
@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_required_glibc_aarch64(a64_art):
    runner, model_so = a64_art
    files = [runner, model_so, runner.parent / LIB_RUNTIME, runner.parent / LIB_FFI]
    assert required_glibc(files) == _readelf_max(files, "GLIBC_")
    # The prebuilt TVM libraries are manylinux_2_28: they must never raise the bar above 2.28.
    libs = [runner.parent / LIB_RUNTIME, runner.parent / LIB_FFI]
    assert tuple(map(int, required_glibc(libs).split("."))) <= (2, 28)
