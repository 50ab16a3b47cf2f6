"""`--runtime tensorrt`: the Jetson harness (harness/bench_trt.py) without a GPU.

- its parsers on trtexec / tegrastats / nvpmodel / jetson_clocks output in the real formats
  (tests/data/trtexec, tests/data/jetson; see the READMEs there for the TensorRT versions);
- its whole flow (engine build and cache, timing run, Jetson sampling) against a stand-in
  trtexec that replays those files, so every argument edgecls passes to trtexec is checked, and
  the JSON it prints keeps the harness schema of contract.py;
- end to end over a real sshd on a board without TensorRT: one clear error line, no traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import edgecls
from sshd import ssh_board  # noqa: F401  (fixture)

from edgecls.artifact.harness.contract import schema_problems, timing_stats

ROOT = Path(__file__).resolve().parent.parent
HARNESS_DIR = ROOT / "edgecls" / "artifact" / "harness"
HARNESS = HARNESS_DIR / "bench_trt.py"
TRT = Path(__file__).parent / "data" / "trtexec"
JET = Path(__file__).parent / "data" / "jetson"
NOT_FOUND = "TensorRT not found on board (no trtexec in PATH or /usr/src/tensorrt/bin)"
HAS_TRTEXEC = bool(shutil.which("trtexec") or os.path.exists("/usr/src/tensorrt/bin/trtexec"))


def _load_harness(name: str):
    """A harness file as the board's python3 runs it: by path, its siblings importable."""
    spec = importlib.util.spec_from_file_location(name, HARNESS_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bt, tp = _load_harness("bench_trt"), _load_harness("trt_parse")


# ---- parsers on real-format files ---------------------------------------------------------------

def test_run_log_performance_summary_and_device():
    log = tp.parse_trtexec_log((TRT / "orin-nano-trt8.6.2-fp16.run.log").read_text())
    assert log["status"] == "PASSED" and log["tensorrt_version"] == "8.6.2"
    assert log["device"] == {"name": "Orin", "compute_capability": "8.7", "sms": 8, "memory_mib": 7620,
                             "compute_clock_ghz": 0.624, "memory_clock_ghz": 0.624}
    assert log["throughput_qps"] == pytest.approx(5215.94)
    assert log["warmup"] == {"queries": 1183, "ms": 200.0} and log["trace"]["queries"] == 50
    assert log["engine_load_s"] == pytest.approx(0.0382471) and log["engine_build_s"] is None
    s = log["summary"]
    assert set(s) == {"latency", "enqueue", "h2d", "gpu_compute", "d2h"}
    assert set(s["latency"]) == {"min", "max", "mean", "median", "p50", "p90", "p99"}
    assert s["latency"]["median"] == pytest.approx(0.142146) and s["gpu_compute"]["p99"] == pytest.approx(0.212)
    assert log["total_host_walltime_s"] == pytest.approx(0.009586)
    assert log["gpu_compute_cv_pct"] == pytest.approx(10.0894)
    assert any("useCudaGraph" in w for w in log["warnings"]) and not log["errors"]


def test_build_log_and_failed_trt10_log():
    build = tp.parse_trtexec_log((TRT / "orin-nano-trt8.6.2-fp16.build.log").read_text())
    assert build["engine_build_s"] == pytest.approx(39.6483) and build["precision"] == "FP32+FP16"
    assert build["status"] == "PASSED" and "--skipInference" in build["command"]
    text = (TRT / "orin-nano-trt10.3.0-stale-engine.log").read_text()
    failed = tp.parse_trtexec_log(text)
    assert failed["status"] == "FAILED" and failed["tensorrt_version"] == "10.3.0"
    assert failed["device"]["name"] == "Orin" and len(failed["errors"]) == 4
    assert "Version tag does not match" in bt.last_error(text)  # the cause, not 'Inference set up failed'
    assert tp.version_from_banner_number(8602) == "8.6.2" and tp.version_from_banner_number(100300) == "10.3.0"
    assert tp.version_from_banner_number(8401) == "8.4.1"


def test_export_times_agree_with_the_printed_summary():
    records = json.loads((TRT / "orin-nano-trt8.6.2-fp16.times.json").read_text())
    assert set(records[0]) == {"startEnqMs", "endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs",
                               "startD2hMs", "endD2hMs", "h2dMs", "computeMs", "d2hMs", "latencyMs"}
    times = tp.parse_export_times(records, warmup_ms=200)
    assert times["count"] == 50 and len(times["latency"]) == 50 and len(times["enqueue"]) == 50
    summary = tp.parse_trtexec_log((TRT / "orin-nano-trt8.6.2-fp16.run.log").read_text())["summary"]
    for ours, theirs in (("latency", "latency"), ("gpu_compute", "gpu_compute"), ("h2d", "h2d"), ("d2h", "d2h")):
        st = timing_stats(times[ours])
        for k in ("min", "max", "mean", "median"):
            assert st[k] == pytest.approx(summary[theirs][k], rel=2e-4), (ours, k)
    lat = timing_stats(times["latency"])
    assert lat["min"] <= lat["median"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # 8.4 also wrote its warm-up queries: trtexec's rule (compute started before warmUp ended) drops them
    old = json.loads((TRT / "xavier-nx-trt8.4.1-times-with-warmup.json").read_text())
    kept = tp.parse_export_times(old, warmup_ms=5)
    assert len(old) == 12 and kept["count"] == 8 and max(kept["gpu_compute"]) < 0.5


def test_export_profile_output_and_lenient_json():
    prof = tp.parse_export_profile(json.loads((TRT / "orin-nano-trt8.6.2-fp16.profile.json").read_text()))
    assert prof["iterations"] == 1207 and prof["layers"] == 8
    assert prof["top_layers"][0]["name"] == "/conv2/Conv + /relu2/Relu"
    assert prof["avg_ms_per_iteration"] == pytest.approx(0.0944)
    out = tp.parse_export_output(json.loads((TRT / "orin-nano-trt8.6.2-fp16.output.json").read_text()))
    dims, values = out["logits"]
    assert dims == [1, 10] and len(values) == 10 and max(range(10), key=values.__getitem__) == 3
    weird = tp.load_json_lenient('[ { "name" : "y", "dimensions" : "1x3", "values" : [ 1, inf, -nan ] } ]')
    assert weird[0]["values"][0] == 1


def test_tegrastats_orin_xavier_nano():
    orin = tp.summarize_tegrastats((JET / "tegrastats-orin-nano-r36.txt").read_text().splitlines(), 100)
    assert orin["samples"] == 3
    assert set(orin["rails_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert orin["rails_mw"]["VDD_IN"] == {"mean": 7490.0, "min": 7412, "max": 7568}
    assert orin["gr3d_pct"]["max"] == 74 and orin["gpu_mhz"]["max"] == 624
    assert orin["emc_mhz"]["mean"] == 2133 and orin["emc_pct"]["min"] == 11
    assert orin["temps_c"]["gpu"]["max"] == 50.75 and orin["temps_c"]["cpu"]["min"] == 51.218
    assert orin["ram_total_mb"] == 7620 and orin["ram_used_mb_max"] == 2876
    line = tp.parse_tegrastats_line((JET / "tegrastats-orin-nano-r36.txt").read_text().splitlines()[0])
    assert line["rails_avg_mw"]["VDD_IN"] == 6982 and line["cpu_load_pct"] == [14, 3, 0, 1, 0, 2]
    assert "RAM" not in line["rails_mw"] and "SWAP" not in line["rails_mw"]
    xavier = tp.summarize_tegrastats((JET / "tegrastats-xavier-nx-r32.txt").read_text().splitlines())
    assert xavier["rails_mw"]["VDD_CPU_GPU_CV"]["max"] == 3412  # r32: '3412/3002' without a unit
    assert xavier["gpu_mhz"]["mean"] == 1109 and xavier["temps_c"]["gpu"]["max"] == 42.5
    nano = tp.summarize_tegrastats((JET / "tegrastats-nano-r32.txt").read_text().splitlines())
    assert set(nano["rails_mw"]) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}  # IRAM 0/252kB is no rail
    assert nano["gr3d_pct"]["mean"] == 96 and nano["temps_c"]["pmic"]["max"] == 100
    assert tp.parse_tegrastats_line("NVPM WARN: something") is None


def test_nvpmodel_jetson_clocks_l4t():
    assert tp.parse_nvpmodel((JET / "nvpmodel-q-orin-nano.txt").read_text()) == {"mode": "15W", "id": 0}
    clocks = tp.parse_jetson_clocks((JET / "jetson_clocks-show-orin-nano.txt").read_text())
    assert clocks["soc_family"] == "tegra234" and clocks["machine"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert len(clocks["cpus"]) == 6 and clocks["cpus"]["cpu0"]["max_khz"] == 1510400
    assert clocks["gpu"] == {"min_hz": 624750000, "max_hz": 624750000, "cur_hz": 624750000}
    assert clocks["gpu_at_max"] and clocks["emc_at_max"] and clocks["power_mode"] == "15W"
    assert tp.parse_tegra_release((JET / "nv_tegra_release-r36.3.txt").read_text()) == "R36.3.0"
    assert tp.parse_tegra_release("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref") == "R32.7.1"


def test_precision_rules_and_engine_key():
    assert bt.resolve_precision("auto", qdq=True)[0] == "int8"
    assert bt.resolve_precision("auto", qdq=False)[0] == "fp32"
    prec, notes = bt.resolve_precision("int8", qdq=False)
    assert prec == "int8" and any("no Q/DQ" in n or "without Q/DQ" in n for n in notes)
    assert any("--int8" in n for n in bt.resolve_precision("fp16", qdq=True)[1])
    facts = {"soc": "NVIDIA Jetson Orin Nano Developer Kit", "l4t": "R36.3.0", "tensorrt": "8.6.2",
             "model_sha256": "ab" * 32, "precision": "fp16", "machine": "aarch64"}
    key = bt.engine_key(facts)
    assert key.startswith("abababababababab-fp16-")
    for k, v in (("soc", "NVIDIA Jetson Xavier NX"), ("l4t", "R36.4.0"), ("tensorrt", "10.3.0"), ("precision", "int8")):
        assert bt.engine_key({**facts, k: v}) != key  # engines are not portable across any of them


# ---- the harness flow against a stand-in trtexec replaying the real-format files -----------------

FAKE_TRTEXEC = r'''#!{python}
import json, os, shutil, sys
D = {data!r}
args = sys.argv[1:]
with open(os.environ["FAKE_TRT_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\n")
opt = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
if "--help" in args:
    print("&&&& RUNNING TensorRT.trtexec [TensorRT v8602] # trtexec --help")
    print("=== Model Options ===")
    sys.exit(0)
if "onnx" in opt:
    with open(opt["saveEngine"], "wb") as f:
        f.write(b"engine:" + " ".join(a for a in args if a in ("--fp16", "--int8", "--best")).encode())
    sys.stdout.write(open(D + "/orin-nano-trt8.6.2-fp16.build.log").read())
    sys.exit(0)
if open(opt["loadEngine"], "rb").read() == b"stale":
    sys.stdout.write(open(D + "/orin-nano-trt10.3.0-stale-engine.log").read())
    sys.exit(1)
for k, name in (("exportTimes", "times"), ("exportOutput", "output"), ("exportProfile", "profile")):
    if k in opt:
        shutil.copy(D + "/orin-nano-trt8.6.2-fp16." + name + ".json", opt[k])
sys.stdout.write(open(D + "/orin-nano-trt8.6.2-fp16.run.log").read())
'''

FAKE_TEGRASTATS = r'''#!{python}
import sys, time
lines = open({path!r}).read().splitlines()
i = 0
while True:
    print(lines[i % len(lines)], flush=True)
    i += 1
    time.sleep(0.02)
'''


@pytest.fixture()
def jetson_bin(tmp_path):
    """A bin dir with a trtexec that replays tests/data/trtexec and Jetson tools replaying tests/data/jetson."""
    b = tmp_path / "bin"
    b.mkdir()
    scripts = {"trtexec": FAKE_TRTEXEC.format(python=sys.executable, data=str(TRT)),
               "tegrastats": FAKE_TEGRASTATS.format(python=sys.executable,
                                                    path=str(JET / "tegrastats-orin-nano-r36.txt")),
               "nvpmodel": f"#!/bin/sh\ncat '{JET / 'nvpmodel-q-orin-nano.txt'}'\n",
               "jetson_clocks": f"#!/bin/sh\ncat '{JET / 'jetson_clocks-show-orin-nano.txt'}'\n"}
    for name, text in scripts.items():
        (b / name).write_text(text)
        (b / name).chmod(0o755)
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PATH": f"{b}:/usr/bin:/bin", "FAKE_TRT_CALLS": str(calls),
           "EDGECLS_TRT_CACHE": str(tmp_path / "trt-cache")}
    return SimpleNamespace(dir=b, env=env, calls=calls, cache=tmp_path / "trt-cache")


def _calls(calls: Path) -> list[list[str]]:
    return [json.loads(ln) for ln in calls.read_text().splitlines()] if calls.exists() else []


def _mini_artifact(d: Path, qdq: bool = False) -> Path:
    (d / "reference").mkdir(parents=True)
    (d / "model.onnx").write_bytes(b"\x08\x08pytorch" + (b"QuantizeLinear DequantizeLinear" if qdq else b"Conv Relu"))
    np.save(d / "reference" / "input.npy", np.zeros((1, 3, 32, 32), np.float32))
    values = json.loads((TRT / "orin-nano-trt8.6.2-fp16.output.json").read_text())[0]["values"]
    np.save(d / "reference" / "output.npy", np.asarray(values, np.float32).reshape(1, 10))
    return d


def _harness(art: Path, env, *extra):
    return subprocess.run([sys.executable, str(HARNESS), "--model", "model.onnx", "--input-name", "input",
                           "--input", "reference/input.npy", "--ref-input", "reference/input.npy",
                           "--ref-output", "reference/output.npy", "--warmup", "5", "--runs", "50", *extra],
                          cwd=art, env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.skipif(HAS_TRTEXEC, reason="a real trtexec is installed here")
def test_harness_flow_build_cache_rebuild(jetson_bin, tmp_path):
    art = _mini_artifact(tmp_path / "art")
    p = _harness(art, jetson_bin.env, "--precision", "fp16")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert schema_problems(r) == []  # the JSON edgecls-runner and bench_py.py print too
    calls = _calls(jetson_bin.calls)
    assert calls[0] == ["--help"]
    build, run = calls[1], calls[2]
    assert build[0] == "--onnx=model.onnx" and "--fp16" in build and "--skipInference" in build
    assert build[1].startswith(f"--saveEngine={jetson_bin.cache}/") and ".engine.partial-" in build[1]
    assert any(a.startswith("--timingCacheFile=") for a in build)
    engine = next(a.split("=", 1)[1] for a in run if a.startswith("--loadEngine="))
    assert engine.endswith("-fp16-" + engine.rsplit("-", 1)[1]) and Path(engine).is_file()
    for flag in ("--warmUp=200", "--iterations=50", "--duration=0", "--percentile=50,90,99"):
        assert flag in run, run
    assert any(a.startswith("--exportTimes=") for a in run) and any(a.startswith("--exportOutput=") for a in run)
    assert any(a.startswith("--loadInputs=input:") for a in run)

    t = r["timings_ms"]
    assert len(t["runs"]) == 50 and t["min"] <= t["median"] <= t["p90"] <= t["p99"] <= t["max"]
    assert t["median"] == pytest.approx(0.1421465) and t["load"] == pytest.approx(38.2471)
    assert r["bench"]["fps"] == pytest.approx(1000 / t["mean"]) and r["bench"]["runs"] == 50
    assert r["runtime_version"] == "TensorRT 8.6.2" and r["device"]["gpu"]["name"] == "Orin"
    assert r["reference"]["top1_match"] and r["reference"]["max_abs_diff"] < 1e-5
    trt = r["tensorrt"]
    assert trt["precision"] == "fp16" and trt["precision_flags"] == ["--fp16"] and not trt["qdq_model"]
    assert trt["precision_reported"] == "FP32+FP16"
    assert trt["engine"]["cache_hit"] is False and trt["engine"]["build_s"] == pytest.approx(39.6483)
    assert trt["throughput_qps"] == pytest.approx(5215.94)
    assert trt["gpu_compute_ms"]["median"] < trt["latency_ms"]["median"]
    assert 0.8 < trt["gpu_compute_share_of_latency"] < 0.95
    j = r["jetson"]
    assert j["nvpmodel"] == {"mode": "15W", "id": 0} and j["clocks"]["gpu_at_max"] is True
    assert j["tegrastats"]["samples"] >= 1 and "VDD_IN" in j["tegrastats"]["rails_mw"]
    assert j["energy_mj_per_query"] == pytest.approx(j["tegrastats"]["rails_mw"]["VDD_IN"]["mean"] / 5215.94, rel=1e-3)
    assert j["tools_missing"] == []

    # again: the cached engine is reused, nothing is built
    n = len(calls)
    r2 = json.loads(_harness(art, jetson_bin.env, "--precision", "fp16").stdout)
    again = _calls(jetson_bin.calls)[n:]
    assert not any(a.startswith("--onnx=") for c in again for a in c)
    assert r2["tensorrt"]["engine"]["cache_hit"] is True and r2["tensorrt"]["engine"]["key"] == trt["engine"]["key"]
    assert r2["tensorrt"]["precision_reported"] == "FP32+FP16"  # from the sidecar the build wrote
    assert schema_problems(r2) == []

    # a cached engine that TensorRT refuses (updated in place) is rebuilt once
    Path(engine).write_bytes(b"stale")
    n = len(_calls(jetson_bin.calls))
    p3 = _harness(art, jetson_bin.env, "--precision", "fp16")
    assert p3.returncode == 0, p3.stderr
    r3 = json.loads(p3.stdout)
    assert r3["tensorrt"]["engine"]["cache_hit"] is False and schema_problems(r3) == []
    assert sum(any(a.startswith("--onnx=") for a in c) for c in _calls(jetson_bin.calls)[n:]) == 1

    # another precision is another engine
    r4 = json.loads(_harness(art, jetson_bin.env, "--precision", "best").stdout)
    assert r4["tensorrt"]["engine"]["key"] != trt["engine"]["key"] and r4["tensorrt"]["precision_flags"] == ["--best"]


@pytest.mark.skipif(HAS_TRTEXEC, reason="a real trtexec is installed here")
def test_harness_qdq_auto_int8_and_missing_tools(jetson_bin, tmp_path):
    art = _mini_artifact(tmp_path / "art", qdq=True)
    for tool in ("tegrastats", "nvpmodel", "jetson_clocks"):
        (jetson_bin.dir / tool).unlink()
    p = _harness(art, jetson_bin.env, "--layer-profile")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert schema_problems(r) == []
    assert r["tensorrt"]["qdq_model"] and r["tensorrt"]["precision"] == "int8"
    assert r["tensorrt"]["precision_flags"] == ["--int8"]
    build = next(c for c in _calls(jetson_bin.calls) if any(a.startswith("--onnx=") for a in c))
    assert "--int8" in build
    run = _calls(jetson_bin.calls)[-1]
    assert "--separateProfileRun" in run and any(a.startswith("--exportProfile=") for a in run)
    assert r["tensorrt"]["layer_profile"]["layers"] == 8
    j = r["jetson"]  # absent tools are skipped, not errors
    assert sorted(j["tools_missing"]) == ["jetson_clocks", "nvpmodel", "tegrastats"]
    assert j["tegrastats"] is None and j["nvpmodel"] is None and j["energy_mj_per_query"] is None


@pytest.mark.skipif(HAS_TRTEXEC, reason="a real trtexec is installed here")
def test_harness_without_trtexec_one_line(tmp_path):
    art = _mini_artifact(tmp_path / "art")
    p = _harness(art, {**os.environ, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [f"bench_trt: error: {NOT_FOUND}"]


def test_runtime_argv_and_precision_option():
    from edgecls.bench.harness import BenchOptions, parse_runtimes, runtime_argv
    from edgecls.bench.tensorrt import check_precision
    from edgecls.errors import ArtifactError, UsageError
    manifest = {"files": {"harness/bench_trt.py": {}, "model.onnx": {}, "reference/val_x.npy": {}},
                "model": {"input": {"name": "input", "shape": [1, 3, 32, 32]}}}
    place = SimpleNamespace(board=SimpleNamespace(python="/opt/py/bin/python3"), binary_prefix=list)
    opts = BenchOptions(runtimes=parse_runtimes("tvm,tensorrt"), runs=20, extra={"precision": "fp16"})
    argv = runtime_argv("tensorrt", manifest, place, opts, None)
    assert argv[:2] == ["/opt/py/bin/python3", "harness/bench_trt.py"]
    assert argv[argv.index("--precision") + 1] == "fp16" and argv[argv.index("--input-name") + 1] == "input"
    assert argv[argv.index("--runs") + 1] == "20" and "--ref-output" in argv
    assert runtime_argv("tensorrt", manifest, place, BenchOptions(), None)[5] == "auto"
    with pytest.raises(ArtifactError, match="no TensorRT harness"):
        runtime_argv("tensorrt", {"files": {"model.onnx": {}}}, place, opts, None)
    with pytest.raises(UsageError, match="--runtime tensorrt only"):
        check_precision("fp16", ("tvm",))
    p = edgecls("bench", "nowhere", "--local", "--precision", "int8", timeout=120)
    assert p.returncode != 0 and "--precision applies to --runtime tensorrt only" in p.stderr
    assert "Traceback" not in p.stderr


# ---- end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_artifact(tmp_path_factory):
    """A real x86-host artifact of a small CNN (1x3x32x32 -> 10), compiled in ~6 s. The digits demo
    (conftest `artifacts`) would first train for ~50 s when this file runs alone."""
    import torch
    from conftest import export_onnx

    from edgecls.pipeline import CompileRequest, compile_artifact
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    d = tmp_path_factory.mktemp("trt-model")
    onnx_path = export_onnx(net, (1, 3, 32, 32), d / "small.onnx", keep_bn=True)
    return compile_artifact(CompileRequest(model=onnx_path, target="x86-host", out_dir=d / "small-x86-host"))


@pytest.mark.skipif(HAS_TRTEXEC, reason="a real trtexec is installed here")
def test_bench_board_without_tensorrt_one_clear_error(small_artifact, ssh_board, tmp_path):  # noqa: F811
    art = small_artifact
    assert (art / "harness" / "bench_trt.py").is_file()  # shipped in every artifact
    env = {"EDGECLS_BOARDS": str(tmp_path / "boards.toml"), "EDGECLS_SSH_CONFIG": str(ssh_board.ssh_config),
           "PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent), "HOME": os.environ.get("HOME", "/root")}
    p = edgecls("boards", "add", "jet1", "--host", ssh_board.name, "--target", "jetson-orin-nano",
                "--workdir", ssh_board.workdir, "--python", sys.executable, env=env, inherit_env=False, timeout=120)
    assert p.returncode == 0, p.stderr
    p = edgecls("bench", art, "--board", "jet1", "--runtime", "tensorrt", "--precision", "fp16", "--runs", "5",
                "-o", tmp_path / "r", env=env, inherit_env=False, timeout=300)
    assert p.returncode != 0
    assert "Traceback" not in p.stderr + p.stdout
    err = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert err == [f"error: tensorrt harness failed on jet1: {NOT_FOUND}"], p.stderr
    assert not list((tmp_path / "r").glob("*.json"))  # no report for a run that did not happen


@pytest.mark.skipif(HAS_TRTEXEC, reason="a real trtexec is installed here")
def test_bench_local_report_with_tensorrt_and_jetson_sections(small_artifact, jetson_bin, tmp_path):
    art = small_artifact
    env = {**jetson_bin.env, "PATH": f"{jetson_bin.dir}:/usr/bin:/bin:{Path(sys.executable).parent}"}
    p = edgecls("bench", art, "--local", "--runtime", "tensorrt", "--precision", "fp16", "--runs", "50",
                "-o", tmp_path / "r", env=env, inherit_env=False, timeout=300)
    assert p.returncode == 0, p.stderr
    [path] = (tmp_path / "r").glob("*.json")
    r = json.loads(path.read_text())
    assert r["schema"] == 1 and r["kind"] == "edgecls-bench-report" and r["runtime"] == "tensorrt"
    assert r["runtime_version"] == "TensorRT 8.6.2" and len(r["timings_ms"]["runs"]) == 50
    assert r["tensorrt"]["precision"] == "fp16" and r["tensorrt"]["engine"]["cache_hit"] is False
    assert r["jetson"]["nvpmodel"]["mode"] == "15W" and r["jetson"]["tegrastats"]["samples"] >= 1
    assert r["artifact"]["model_sha256"] and r["board"]["kind"] == "local"
