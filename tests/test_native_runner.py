"""The native runner with real components: real TVM builds, real compilers, real qemu, no mocks.

The runner's logits must match ONNX Runtime, natively and under qemu-aarch64; the benchmark
harness (timing statistics, warm-up by time, on-device accuracy, options, errors, build cache,
glibc needs) is checked against numpy and ONNX Runtime. Threads, cores and system facts:
test_runner_system.py. The aarch64 tests skip (with the reason) if the cross compiler, qemu
or the aarch64 TVM runtime (needs one `pip download`) is unavailable.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from edgecls.artifact.harness.contract import INPUT_OPTIONS, MEASURE_OPTIONS, SCHEMA_VERSION, schema_problems
from edgecls.artifact.native import build_runner, elf_arch, required_glibc, required_glibcxx
from edgecls.artifact.runtime_libs import LIB_FFI, LIB_RUNTIME, host_arch, runtime_libs
from edgecls.errors import ArtifactError, ToolchainError
from runner_fixtures import SHAPE, bench_json, check_against_reference, needs_a64, run_runner
from runner_fixtures import a64_art, a64_libs, cache, host_art, model, val_set  # noqa: F401  (fixtures)


def test_host_runner_matches_onnxruntime(host_art, model, tmp_path):
    runner, model_so = host_art
    assert sorted(p.name for p in runner.parent.iterdir()) == sorted(
        ["edgecls-runner", LIB_FFI, LIB_RUNTIME, "model.so"])
    check_against_reference(runner, model_so, model, tmp_path)


@needs_a64
def test_aarch64_runner_under_qemu_matches_onnxruntime(a64_art, model, tmp_path):
    runner, model_so = a64_art
    for f in (runner, model_so, runner.parent / LIB_RUNTIME, runner.parent / LIB_FFI):
        assert elf_arch(f) == "aarch64"
    check_against_reference(runner, model_so, model, tmp_path, qemu=True)


@needs_a64
def test_aarch64_benchmark_flags_under_qemu(a64_art, model, val_set, tmp_path):
    runner, model_so = a64_art
    np.save(tmp_path / "ref.npy", model[2])
    res = bench_json(runner, "--model", model_so, "--ref-input", model[1], "--ref-output", tmp_path / "ref.npy",
                      "--val-x", val_set[0], "--val-y", val_set[1], "--warmup", 1, "--warmup-ms", 20, "--runs", 3,
                      "--min-ms", 20, "--cooldown-ms", 1, "--cores", 0, "--json-out", tmp_path / "r.json", qemu=True)
    assert json.loads((tmp_path / "r.json").read_text()) == res
    assert res["reference"]["max_abs_diff"] < 1e-4 and res["reference"]["top1_match"] is True
    assert res["accuracy"]["top1"] == pytest.approx(val_set[2]) and res["accuracy"]["top5"] == pytest.approx(val_set[3])
    tm = res["timings_ms"]
    assert sum(tm["warmup"]) >= 20 and len(tm["runs"]) >= 3 and sum(tm["runs"]) >= 20
    assert tm["min"] <= tm["median"] <= tm["p90"] <= tm["p95"] <= tm["p99"] <= tm["max"]
    assert res["cores"] == [0] and res["threads"] == 1
    assert res["device"]["uname"]["machine"] == "aarch64" and set(res["system"]) == {
        "before", "after", "peak_rss_kb", "throttled"}


def test_benchmark_statistics_and_time_driven_loops(host_art, model, tmp_path):
    runner, model_so = host_art
    report = tmp_path / "report.json"
    p = run_runner(runner, "--model", model_so, "--input", model[1], "--warmup", 2, "--warmup-ms", 60,
                  "--runs", 5, "--min-ms", 40, "--json-out", report)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["schema"] == SCHEMA_VERSION and json.loads(report.read_text()) == res  # the same report twice
    assert schema_problems(res) == []
    tm, bench = res["timings_ms"], res["bench"]
    warm, runs = tm["warmup"], tm["runs"]
    # By count AND by time, stopping as soon as both hold.
    assert len(warm) >= 2 and sum(warm) >= 60 and (len(warm) == 2 or sum(warm[:-1]) < 60)
    assert len(runs) >= 5 and sum(runs) >= 40 and (len(runs) == 5 or sum(runs[:-1]) < 40)
    assert tm["min"] <= tm["median"] <= tm["p90"] <= tm["p95"] <= tm["p99"] <= tm["max"]
    assert tm["min"] == min(runs) and tm["max"] == max(runs)
    np.testing.assert_allclose([tm["median"], tm["p90"], tm["p95"], tm["p99"]],
                               np.percentile(runs, [50, 90, 95, 99]), rtol=1e-6)
    np.testing.assert_allclose(tm["mean"], np.mean(runs), rtol=1e-6)
    np.testing.assert_allclose(tm["std"], np.std(runs), rtol=1e-4, atol=1e-6)
    assert bench["fps"] == pytest.approx(1000 / tm["mean"], rel=1e-6)
    assert (bench["warmup_runs"], bench["runs"]) == (len(warm), len(runs))
    assert bench["timed_total_ms"] == pytest.approx(sum(runs), rel=1e-6)
    assert bench["requested"] == {"warmup": 2, "warmup_ms": 60, "runs": 5, "min_ms": 40, "cooldown_ms": 0}

    res = bench_json(runner, "--model", model_so, "--input", model[1], "--warmup", 0, "--runs", 4,
                      "--cooldown-ms", 15)
    assert res["timings_ms"]["warmup"] == [] and len(res["timings_ms"]["runs"]) == 4
    assert res["bench"]["wall_ms"] >= 3 * 15 + sum(res["timings_ms"]["runs"])  # 3 sleeps between 4 runs


def test_accuracy_and_reference_on_device(host_art, model, val_set, tmp_path):
    runner, model_so = host_art
    _, x_npy, ref = model
    x_val, y_val, top1, top5 = val_set
    np.save(tmp_path / "ref.npy", ref)
    res = bench_json(runner, "--model", model_so, "--ref-input", x_npy, "--ref-output", tmp_path / "ref.npy",
                      "--val-x", x_val, "--val-y", y_val, "--val-pred", tmp_path / "pred.npy")  # --input defaults to --ref-input
    # --val-pred: each image's top-1, for paired comparisons; images of rank 0 are exactly the hits.
    pred = np.load(tmp_path / "pred.npy")
    assert pred.dtype == np.int64 and pred.shape == (14,)
    assert ((pred == np.load(y_val)) == (np.arange(14) % 7 == 0)).all()
    assert res["input"]["shape"] == list(SHAPE)
    assert res["reference"]["max_abs_diff"] < 1e-4 and res["reference"]["top1_match"] is True
    acc = res["accuracy"]
    assert acc["n"] == 14 and acc["top1"] == pytest.approx(top1) and acc["top5"] == pytest.approx(top5)
    assert len(res["timings_ms"]["warmup"]) == 1 and len(res["timings_ms"]["runs"]) == 1  # untimed
    assert schema_problems(res) == []

    wrong = ref[:, ::-1].copy()  # reversed logits: another top-1 class, a known difference
    np.save(tmp_path / "wrong.npy", wrong)
    np.save(tmp_path / "y32.npy", np.load(y_val).astype("int32"))
    res = bench_json(runner, "--model", model_so, "--input", x_npy, "--ref-input", x_npy,
                      "--ref-output", tmp_path / "wrong.npy", "--val-x", x_val, "--val-y", tmp_path / "y32.npy")
    assert res["reference"]["top1_match"] is False
    assert res["reference"]["max_abs_diff"] == pytest.approx(float(np.abs(ref - wrong).max()), abs=1e-4)
    assert res["accuracy"]["top1"] == pytest.approx(top1)

    plain = bench_json(runner, "--model", model_so, "--input", x_npy)
    assert plain["accuracy"] is None and plain["reference"] is None
    assert schema_problems(plain) == []


def test_runner_options_and_defaults_are_the_contracts(host_art):
    """runner.cc cannot import harness/contract.py: its --help must name the same options with
    the same defaults as bench_py.py and bench_trt.py take."""
    runner, _ = host_art
    p = run_runner(runner, "--help")
    assert p.returncode == 0, p.stderr
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", p.stdout))
    assert set(INPUT_OPTIONS) | set(MEASURE_OPTIONS) <= options
    defaults = dict(re.findall(r"^\s*(--[a-z-]+) \S+\s.*?\(default (\d+)", p.stdout, re.MULTILINE))
    want = {name: str(default) for name, (_, default) in MEASURE_OPTIONS.items() if default is not None}
    assert defaults == {**want, "--topk": "5"}


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
        "bad cores": (["--model", model_so, "--input", model[1], "--cores", "1-x"], "--cores"),
        "offline core": (["--model", model_so, "--input", model[1], "--cores", "1023"], "not online"),
        "bad ms": (["--model", model_so, "--input", model[1], "--min-ms", "-5"], "--min-ms"),
        "val-x alone": (["--model", model_so, "--input", model[1], "--val-x", model[1]], "--val-y"),
        "val-pred alone": (["--model", model_so, "--input", model[1], "--val-pred", tmp_path / "p.npy"], "--val-x"),
        "float labels": (["--model", model_so, "--input", model[1], "--val-x", model[1], "--val-y", model[1]],
                         "integer labels"),
        "json-out dir": (["--model", model_so, "--input", model[1], "--json-out", tmp_path / "no" / "r.json"],
                         "--json-out"),
    }
    for name, (args, needle) in cases.items():
        p = run_runner(runner, *args)
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
