"""The harness contract (edgecls/artifact/harness/contract.py) against the harnesses themselves.

- bench_py.py's real output (ONNX Runtime on a small ONNX model) keeps the report schema, and its
  statistics are numpy's; edgecls-runner's and bench_trt.py's real output are checked in
  tests/test_native_runner.py and tests/test_tensorrt.py, LiteRT's in tests/test_tflite.py;
- every option the workstation passes is one the harnesses take, with the contract's defaults;
- the contract and the files bench_trt.py imports run on a board's bare python3 (stdlib only).
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgecls.artifact.harness import contract
from edgecls.artifact.harness.contract import MEASURE_OPTIONS, SCHEMA_VERSION, schema_problems, timing_stats

HARNESS_DIR = Path(__file__).resolve().parent.parent / "edgecls" / "artifact" / "harness"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HARNESS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A 12 -> 10 MatMul classifier written with onnx.helper (no torch export), its input, its
    ONNX Runtime output and an 8-image validation batch labelled with its own top-1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((12, 10)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, d / "model.onnx")
    x = rng.standard_normal((1, 3, 2, 2)).astype("float32")
    vx = rng.standard_normal((8, 3, 2, 2)).astype("float32")
    np.save(d / "x.npy", x)
    np.save(d / "ref.npy", x.reshape(1, -1) @ w)
    np.save(d / "vx.npy", vx)
    np.save(d / "vy.npy", (vx.reshape(8, -1) @ w).argmax(1).astype("int64"))
    return d


def bench_py(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HARNESS_DIR / "bench_py.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120, check=False)


def test_bench_py_onnxruntime_output_keeps_the_schema(tiny_onnx):
    p = bench_py(tiny_onnx, "--runtime", "onnxruntime", "--model", "model.onnx", "--input", "x.npy",
                 "--ref-input", "x.npy", "--ref-output", "ref.npy", "--val-x", "vx.npy", "--val-y", "vy.npy",
                 "--warmup", 2, "--runs", 7)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert schema_problems(r) == []
    assert r["schema"] == SCHEMA_VERSION and r["runner"] == "bench_py"
    # Unpinned: the CPUs the process had, as edgecls-runner reports them (one vocabulary).
    assert r["runtime_version"].startswith("onnxruntime ") and r["threads"] is None
    assert r["cores"] == sorted(os.sched_getaffinity(0))
    assert r["reference"] == {"max_abs_diff": pytest.approx(0, abs=1e-5), "top1_match": True}
    assert r["accuracy"] == {"n": 8, "top1": 1.0, "top5": 1.0}
    t = r["timings_ms"]
    assert len(t["warmup"]) == 2 and len(t["runs"]) == 7 and r["bench"]["runs"] == 7
    np.testing.assert_allclose([t["median"], t["p90"], t["p95"], t["p99"]],
                               np.percentile(t["runs"], [50, 90, 95, 99]), rtol=1e-9)
    np.testing.assert_allclose([t["mean"], t["std"]], [np.mean(t["runs"]), np.std(t["runs"])], rtol=1e-9)
    assert r["bench"]["fps"] == pytest.approx(1000 / t["mean"])
    assert list(t) == ["load", "warmup", "runs", *contract.STAT_KEYS]
    # Without --ref-*/--val-*: no reference or accuracy keys at all (the schema allows their absence).
    p = bench_py(tiny_onnx, "--runtime", "onnxruntime", "--model", "model.onnx", "--input", "x.npy")
    r = json.loads(p.stdout)
    assert schema_problems(r) == [] and "reference" not in r and "accuracy" not in r


def test_bench_py_errors_are_the_contract_line(tiny_onnx):
    p = bench_py(tiny_onnx, "--runtime", "onnxruntime", "--model", "nope.onnx", "--input", "x.npy")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == ["bench_py: error: nope.onnx not found"]
    assert contract.error_message(p.stderr.strip()) == "nope.onnx not found"


def _parser_defaults(parser: argparse.ArgumentParser) -> dict:
    return {a.option_strings[0]: (a.type, a.default) for a in parser._actions if a.option_strings}


def test_python_harnesses_take_the_contract_options():
    py, trt = _load("bench_py").build_parser(), _load("bench_trt").build_parser()
    for parser, runs in ((py, 1), (trt, 50)):
        got = _parser_defaults(parser)
        for name, (kind, default) in MEASURE_OPTIONS.items():
            assert got[name] == (kind, runs if name == "--runs" else default), name
        assert all(name in got for name in contract.INPUT_OPTIONS)
    assert [c for a in trt._actions if a.dest == "precision" for c in a.choices] == list(contract.PRECISIONS)


def test_workstation_passes_only_contract_options():
    from edgecls.bench.harness import BenchOptions, runtime_argv
    files = {f: {} for f in ("model.so", "model.onnx", "model.tflite", "harness/bench_py.py", "harness/bench_trt.py",
                             "reference/val_x.npy")}
    manifest = {"files": files, "model": {"input": {"name": "input"}}}
    place = SimpleNamespace(board=SimpleNamespace(python="python3"), binary_prefix=list)
    opts = BenchOptions(threads=2, warmup_ms=5, min_ms=10, cooldown_ms=1)
    parsers = {"onnxruntime": _load("bench_py").build_parser(), "tensorrt": _load("bench_trt").build_parser()}
    for runtime in ("tvm", "onnxruntime", "tflite", "tensorrt"):
        argv = runtime_argv(runtime, manifest, place, opts, [0, 1])
        flags = [a for a in argv if a.startswith("--")]
        assert set(flags) - {"--runtime", "--precision", "--input-name"} <= set(MEASURE_OPTIONS) | set(
            contract.INPUT_OPTIONS), runtime
        parser = parsers.get("tensorrt" if runtime == "tensorrt" else "onnxruntime")
        if runtime != "tvm":  # edgecls-runner: tests/test_native_runner.py reads its --help
            args = parser.parse_args(argv[2:])
            assert (args.runs, args.warmup_ms, args.threads, args.cores) == (50, 5.0, 2, "0,1")
    with pytest.raises(ValueError, match="--topk"):
        contract.harness_flags(topk=5)


def test_timing_stats_are_numpys():
    runs = [3.0, 1.0, 2.5, 9.0, 4.25, float("nan"), None, 0.5]
    s = timing_stats(runs)
    finite = [3.0, 1.0, 2.5, 9.0, 4.25, 0.5]
    np.testing.assert_allclose([s[k] for k in contract.STAT_KEYS],
                               [np.mean(finite), np.median(finite), *np.percentile(finite, [90, 95, 99]),
                                min(finite), max(finite), np.std(finite)], rtol=1e-12)
    assert timing_stats([]) is None and timing_stats([None]) is None
    assert contract.fps_from_mean(4.0) == 250.0 and contract.fps_from_mean(None) is None


def test_schema_problems_name_the_place():
    good = {"schema": SCHEMA_VERSION, "runner": "x", "model": "m",
            "device": {"uname": None, "cpu_model": None, "online_cpus": 2, "mem_total_kb": None, "glibc": None},
            "cores": None, "threads": None,
            "timings_ms": {"load": 1.0, "warmup": [], "runs": [1.0], **timing_stats([1.0])},
            "bench": {"fps": 1000.0, "runs": 1}, "system": {"before": None, "after": None, "peak_rss_kb": None,
                                                           "throttled": None}}
    assert schema_problems(good) == []
    bad = json.loads(json.dumps(good))
    bad["schema"] = 1
    del bad["timings_ms"]["p99"]
    bad["bench"]["runs"] = "1"
    bad["cores"] = [0, True]
    bad["system"]["before"] = {"cpus": {"0": {"governor": None, "cur_khz": 1.5, "max_khz": None}},
                               "thermal": {}, "loadavg_1m": None}
    assert sorted(schema_problems(bad)) == sorted([
        "report.schema: 1, not 2", "report.timings_ms.p99: missing", "report.bench.runs: str, not int or NoneType",
        "report.cores[1]: bool, not int", "report.system.before.cpus.0.cur_khz: float, not int or NoneType"])
    assert schema_problems([]) == ["report: list, not an object"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_harness_files_run_on_a_bare_python():
    """A board has the standard library (and numpy, onnxruntime or LiteRT for bench_py.py only)
    plus the sibling files of harness/, which the artifact ships: nothing from edgecls."""
    siblings = {p.stem for p in HARNESS_DIR.glob("*.py")}
    assert {"contract", "bench_py", "bench_trt", "trt_parse", "jetson"} <= siblings
    for path in HARNESS_DIR.glob("*.py"):
        foreign = _imports(path) - set(sys.stdlib_module_names) - siblings - {"__future__"}
        allowed = {"numpy", "onnxruntime", "ai_edge_litert"} if path.stem == "bench_py" else set()
        assert foreign <= allowed, (path.name, foreign)
    assert _imports(HARNESS_DIR / "contract.py") <= set(sys.stdlib_module_names) | {"__future__"}
