"""The native runner with real components: real TVM builds, real compilers, real qemu, no mocks.

A tiny 2-conv classifier (16x16 input) is exported from torch to ONNX, compiled with TVM for the
host and for aarch64, and run by `edgecls-runner` natively and under qemu-aarch64; the logits
must match ONNX Runtime. The benchmark harness (timing statistics, warm-up by time, core pinning,
system facts, on-device accuracy) is checked against numpy, ONNX Runtime and /proc read from
Python. The aarch64 tests skip (with the reason) if the cross compiler, qemu
or the aarch64 TVM runtime (needs one `pip download`) is unavailable.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgecls.artifact.harness.contract import INPUT_OPTIONS, MEASURE_OPTIONS, SCHEMA_VERSION, schema_problems
from edgecls.artifact.native import build_runner, elf_arch, required_glibc, required_glibcxx
from edgecls.artifact.runtime_libs import LIB_FFI, LIB_RUNTIME, fetch_runtime, host_arch, runtime_libs
from edgecls.errors import ArtifactError, ToolchainError
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


@needs_a64
def test_aarch64_benchmark_flags_under_qemu(a64_art, model, val_set, tmp_path):
    runner, model_so = a64_art
    np.save(tmp_path / "ref.npy", model[2])
    res = _bench(runner, "--model", model_so, "--ref-input", model[1], "--ref-output", tmp_path / "ref.npy",
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


def test_threads_option_sizes_the_runners_pool_unpinned(host_art, model, tmp_path):
    """--threads N: N threads run the kernels' parallel loops (the runner's launcher, parallel.cc),
    none pinned to one core without --cores; 3 threads on fewer cores still give right results."""
    runner, model_so = host_art
    cpus = sorted(os.sched_getaffinity(0))
    np.save(tmp_path / "ref.npy", model[2])
    for n in (1, 2, 3):
        res = _bench(runner, "--model", model_so, "--ref-input", model[1], "--ref-output", tmp_path / "ref.npy",
                     "--threads", n)
        assert res["threads"] == n and res["affinity"]["launcher"] == "edgecls"
        assert res["reference"]["max_abs_diff"] < 1e-4
        assert [allowed for allowed, _ in _tasks(res)] == [cpus] * n


def test_tvm_pool_on_request_unpinned(host_art, model, tmp_path, monkeypatch):
    """EDGECLS_RUNNER_LAUNCHER=tvm (and any model whose kernels use TVM's parallel barrier) runs
    on TVM's own pool, sized by --threads, its workers not pinned to single cores."""
    runner, model_so = host_art
    cpus = sorted(os.sched_getaffinity(0))
    np.save(tmp_path / "ref.npy", model[2])
    monkeypatch.setenv("EDGECLS_RUNNER_LAUNCHER", "tvm")
    res = _bench(runner, "--model", model_so, "--ref-input", model[1], "--ref-output", tmp_path / "ref.npy",
                 "--threads", 2)
    assert res["affinity"]["launcher"] == "tvm" and res["affinity"]["tvm_bind_threads"] == "0"
    assert res["threads"] == 2 and res["reference"]["max_abs_diff"] < 1e-4
    assert all(allowed == cpus for allowed, _ in _tasks(res))


def _bench(runner: Path, *args, qemu: bool = False) -> dict:
    p = _run(runner, *args, qemu=qemu)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_benchmark_statistics_and_time_driven_loops(host_art, model, tmp_path):
    runner, model_so = host_art
    report = tmp_path / "report.json"
    p = _run(runner, "--model", model_so, "--input", model[1], "--warmup", 2, "--warmup-ms", 60,
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

    res = _bench(runner, "--model", model_so, "--input", model[1], "--warmup", 0, "--runs", 4,
                 "--cooldown-ms", 15)
    assert res["timings_ms"]["warmup"] == [] and len(res["timings_ms"]["runs"]) == 4
    assert res["bench"]["wall_ms"] >= 3 * 15 + sum(res["timings_ms"]["runs"])  # 3 sleeps between 4 runs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip("\0 \n") or None
    except OSError:
        return None


def test_system_and_device_facts_match_proc_and_sys(host_art, model):
    runner, model_so = host_art
    res = _bench(runner, "--model", model_so, "--input", model[1])
    cpus = sorted(os.sched_getaffinity(0))
    assert res["cores"] == cpus  # no --cores: the inherited affinity
    system = res["system"]
    zones = list(Path("/sys/class/thermal").glob("thermal_zone*"))
    freq_known = False
    for when in ("before", "after"):  # the layout bench_py.py writes too
        s = system[when]
        assert set(s) == {"cpus", "thermal", "loadavg_1m"}
        assert list(s["cpus"]) == [str(c) for c in cpus]
        for cpu, c in s["cpus"].items():
            base = Path(f"/sys/devices/system/cpu/cpu{cpu}/cpufreq")
            assert c["governor"] == _read(base / "scaling_governor")
            for key, file in (("cpuinfo_max_khz", "cpuinfo_max_freq"), ("scaling_max_khz", "scaling_max_freq")):
                want = _read(base / file)
                assert c[key] == (None if want is None else int(want))
            assert c["max_khz"] == (c["cpuinfo_max_khz"] or c["scaling_max_khz"])
            assert c["cur_khz"] is None or c["cur_khz"] > 0
            freq_known |= bool(c["cur_khz"] and c["max_khz"])
        assert len(s["thermal"]) == len(zones)
        types = {_read(z / "type") for z in zones}
        assert all(t is None or isinstance(t, float) for t in s["thermal"].values())
        assert all(k in types or k.split(" (")[0] in types or k.startswith("thermal_zone") for k in s["thermal"])
        assert s["loadavg_1m"] >= 0
    assert system["throttled"] in ((True, False) if freq_known else (None,))
    assert 1000 < system["peak_rss_kb"] < 10_000_000

    dev = res["device"]
    u = platform.uname()
    assert dev["uname"] == {"sysname": u.system, "release": u.release, "machine": u.machine}
    assert dev["online_cpus"] == os.cpu_count()
    meminfo = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines())
    assert dev["mem_total_kb"] == int(meminfo["MemTotal"].split()[0])
    models = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    if models:
        assert dev["cpu_model"] == models[0].strip()
    libc, version = platform.libc_ver()
    if libc == "glibc":
        assert dev["glibc"] == version


def _fake_sysfs_run(runner, model_so, x_npy, tmp_path, cur_khz: int) -> dict:
    """Run the runner with small fake cpufreq, thermal, cpuinfo and device-tree files bind-mounted
    over /sys and /proc in a private mount namespace (`unshare -rm`): build machines and VMs rarely
    have cpufreq or thermal zones, and are not arm64 boards."""
    cpu = max(os.sched_getaffinity(0))
    fake = tmp_path / f"fake-{cur_khz}"
    files = {f"cpu/cpufreq/{k}": v for k, v in (("scaling_governor", "ondemand"), ("scaling_cur_freq", cur_khz),
                                                 ("cpuinfo_max_freq", 1800000), ("scaling_max_freq", 1500000))}
    files.update({"thermal/thermal_zone0/type": "cpu-thermal", "thermal/thermal_zone0/temp": 47250,
                  "thermal/thermal_zone1/type": "cpu-thermal", "thermal/thermal_zone1/temp": 45000,
                  "thermal/thermal_zone2/type": "gpu", "thermal/thermal_zone2/temp": "unreadable",
                  "thermal/thermal_zone10/temp": 39000})
    # An RK3399's /proc/cpuinfo (no "model name" on arm64) and device-tree model.
    files["cpuinfo"] = "".join(f"processor\t: {i}\nCPU implementer\t: 0x41\nCPU part\t: {part}\n\n"
                               for i, part in enumerate(["0xd03"] * 4 + ["0xd08"] * 2)) + "Hardware\t: Rockchip RK3399"
    files["firmware/devicetree/base/model"] = "Radxa ROCK Pi 4B\0"
    for name, value in files.items():
        (fake / name).parent.mkdir(parents=True, exist_ok=True)
        (fake / name).write_text(f"{value}\n")
    binds = [(f"{fake}/cpu", f"/sys/devices/system/cpu/cpu{cpu}"), (f"{fake}/thermal", "/sys/class/thermal"),
             (f"{fake}/cpuinfo", "/proc/cpuinfo"), (f"{fake}/firmware", "/sys/firmware")]
    script = " && ".join(f"mount --bind {a} {b}" for a, b in binds) + ' || exit 77; exec "$@"'
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(runner), "--model", str(model_so),
                        "--input", str(x_npy), "--cores", str(cpu)], capture_output=True, text=True, timeout=120)
    if p.returncode == 77 or (p.returncode != 0 and p.stderr.startswith("unshare")):
        pytest.skip(f"cannot bind-mount a fake sysfs here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    for when in ("before", "after"):
        assert res["system"][when]["cpus"] == {str(cpu): {
            "governor": "ondemand", "cur_khz": cur_khz, "max_khz": 1800000, "cpuinfo_max_khz": 1800000,
            "scaling_max_khz": 1500000}}
        assert list(res["system"][when]["thermal"].items()) == [  # zone order 0, 1, 2, 10
            ("cpu-thermal", 47.25), ("cpu-thermal (thermal_zone1)", 45.0), ("gpu", None), ("thermal_zone10", 39.0)]
    dev = res["device"]
    assert (dev["cpu_model"], dev["hardware"], dev["board"]) == (
        "Cortex-A53 x4 + Cortex-A72 x2", "Rockchip RK3399", "Radxa ROCK Pi 4B")
    return res


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed")
def test_cpufreq_thermal_and_throttle_rule_on_a_fake_sysfs(host_art, model, tmp_path):
    runner, model_so = host_art
    # Throttled: below 95% of cpuinfo_max_freq (not of the lower scaling_max_freq) in a sample.
    assert _fake_sysfs_run(runner, model_so, model[1], tmp_path, 1700000)["system"]["throttled"] is True
    assert _fake_sysfs_run(runner, model_so, model[1], tmp_path, 1710000)["system"]["throttled"] is False


def _tasks(res: dict) -> list[tuple[list[int], int]]:
    return [(t["allowed"], t["last_cpu"]) for t in res["affinity"]["tasks"]]


needs_2_cpus = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")


@needs_2_cpus
def test_cores_pin_every_thread_and_size_the_pool(host_art, model):
    runner, model_so = host_art
    cpus = sorted(os.sched_getaffinity(0))
    last = cpus[-1]
    base = ["--model", model_so, "--input", model[1], "--runs", 20]
    for threads in (1, 2):  # 2 threads on one core: TVM must not move its worker elsewhere
        res = _bench(runner, *base, "--cores", last, "--threads", threads)
        assert res["cores"] == [last] and res["threads"] == threads
        assert res["affinity"]["tvm_bind_threads"] == "0"
        assert _tasks(res) == [([last], last)] * threads
    res = _bench(runner, *base, "--cores", f"{cpus[0]},{last}")  # --threads defaults to #cores
    assert res["cores"] == [cpus[0], last] and res["threads"] == 2
    assert [allowed for allowed, _ in _tasks(res)] == [[cpus[0], last]] * 2
    # A narrower inherited mask (taskset) holds too: TVM's own pinning would widen it again.
    p = subprocess.run([str(runner), *map(str, base), "--threads", "2"], capture_output=True, text=True,
                       timeout=120, preexec_fn=lambda: os.sched_setaffinity(0, {last}))
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["cores"] == [last] and res["threads"] == 2 and _tasks(res) == [([last], last)] * 2


def _task_cpus(pid: int) -> dict[int, tuple[set[int], int]]:
    """{tid: (affinity, CPU last run on: field 39 of stat)} for every thread of a process."""
    out = {}
    for d in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (d / "stat").read_text()
            out[int(d.name)] = (os.sched_getaffinity(int(d.name)), int(stat.rsplit(")", 1)[1].split()[36]))
        except (OSError, ValueError, IndexError):  # the thread just ended
            pass
    return out


@needs_2_cpus
@pytest.mark.parametrize("threads", [1, 2])
def test_cores_pinning_seen_from_outside(host_art, model, threads):
    """While the runner warms up, every thread it has is allowed on, and ran on, one CPU only."""
    runner, model_so = host_art
    last = max(os.sched_getaffinity(0))
    proc = subprocess.Popen([str(runner), "--model", str(model_so), "--input", str(model[1]), "--cores", str(last),
                             "--threads", str(threads), "--warmup-ms", "1200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[set[int], int]] = {}
    try:
        deadline, samples = time.monotonic() + 30, 0
        while proc.poll() is None and time.monotonic() < deadline and samples < 5:
            stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
            if cpu_s >= 0.3:  # well into the warm-up: set-up (and pinning) is long done
                seen.update(_task_cpus(proc.pid))
                samples += 1
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert samples == 5 and len(seen) == threads
    assert all(allowed == {last} and cpu == last for allowed, cpu in seen.values()), seen


def test_accuracy_and_reference_on_device(host_art, model, val_set, tmp_path):
    runner, model_so = host_art
    _, x_npy, ref = model
    x_val, y_val, top1, top5 = val_set
    np.save(tmp_path / "ref.npy", ref)
    res = _bench(runner, "--model", model_so, "--ref-input", x_npy, "--ref-output", tmp_path / "ref.npy",
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
    res = _bench(runner, "--model", model_so, "--input", x_npy, "--ref-input", x_npy,
                 "--ref-output", tmp_path / "wrong.npy", "--val-x", x_val, "--val-y", tmp_path / "y32.npy")
    assert res["reference"]["top1_match"] is False
    assert res["reference"]["max_abs_diff"] == pytest.approx(float(np.abs(ref - wrong).max()), abs=1e-4)
    assert res["accuracy"]["top1"] == pytest.approx(top1)

    plain = _bench(runner, "--model", model_so, "--input", x_npy)
    assert plain["accuracy"] is None and plain["reference"] is None
    assert schema_problems(plain) == []


def test_runner_options_and_defaults_are_the_contracts(host_art):
    """runner.cc cannot import harness/contract.py: its --help must name the same options with
    the same defaults as bench_py.py and bench_trt.py take."""
    runner, _ = host_art
    p = _run(runner, "--help")
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
