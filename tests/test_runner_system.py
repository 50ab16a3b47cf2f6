"""The native runner's threads, cores and system facts, with real builds and real processes: its
own parallel launcher sized by --threads and unpinned, TVM's pool on request, --cores pinning seen
from /proc, cpufreq/thermal facts against /sys (and a fake sysfs in a user namespace)."""

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

from runner_fixtures import bench_json
from runner_fixtures import cache, host_art, model  # noqa: F401  (fixtures: host_art needs cache)


def test_threads_option_sizes_the_runners_pool_unpinned(host_art, model, tmp_path):
    """--threads N: N threads run the kernels' parallel loops (the runner's launcher, parallel.cc),
    none pinned to one core without --cores; 3 threads on fewer cores still give right results."""
    runner, model_so = host_art
    cpus = sorted(os.sched_getaffinity(0))
    np.save(tmp_path / "ref.npy", model[2])
    for n in (1, 2, 3):
        res = bench_json(runner, "--model", model_so, "--ref-input", model[1], "--ref-output", tmp_path / "ref.npy",
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
    res = bench_json(runner, "--model", model_so, "--ref-input", model[1], "--ref-output", tmp_path / "ref.npy",
                      "--threads", 2)
    assert res["affinity"]["launcher"] == "tvm" and res["affinity"]["tvm_bind_threads"] == "0"
    assert res["threads"] == 2 and res["reference"]["max_abs_diff"] < 1e-4
    assert all(allowed == cpus for allowed, _ in _tasks(res))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip("\0 \n") or None
    except OSError:
        return None


def test_system_and_device_facts_match_proc_and_sys(host_art, model):
    runner, model_so = host_art
    res = bench_json(runner, "--model", model_so, "--input", model[1])
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
        res = bench_json(runner, *base, "--cores", last, "--threads", threads)
        assert res["cores"] == [last] and res["threads"] == threads
        assert res["affinity"]["tvm_bind_threads"] == "0"
        assert _tasks(res) == [([last], last)] * threads
    res = bench_json(runner, *base, "--cores", f"{cpus[0]},{last}")  # --threads defaults to #cores
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
