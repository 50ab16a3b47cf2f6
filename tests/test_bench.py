"""The benchmark harness end to end: locally, on an emulated aarch64 board over a real sshd,
and on several boards in network namespaces at once."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import edgecls, needs_aarch64, ort_run
from sshd import netns_boards, ssh_board  # noqa: F401  (fixtures)

QEMU = "qemu-aarch64 -L /usr/aarch64-linux-gnu"


def reports_in(d: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]


def host_top1(art: Path) -> float:
    x, y = np.load(art / "reference" / "val_x.npy"), np.load(art / "reference" / "val_y.npy")
    return float((ort_run(art / "model.onnx", x).argmax(1) == y).mean())


def check_report(r: dict, runtime: str, runs: int = 5):
    assert r["schema"] == 1 and r["kind"] == "edgecls-bench-report" and r["runtime"] == runtime
    t = r["timings_ms"]
    assert t["min"] <= t["median"] <= t["p90"] <= t["p99"] <= t["max"]
    assert r["bench"]["fps"] > 0 and len(t["runs"]) >= runs
    assert r["reference"]["max_abs_diff"] < 1e-4 and r["reference"]["top1_match"]
    assert r["device"]["uname"]["machine"] and r["system"]["before"] is not None
    assert len(r["artifact"]["id"]) == 64 and r["artifact"]["model_sha256"]


def test_local_bench_tvm_and_onnxruntime(artifacts, tmp_path):
    art = artifacts.get("digits", "x86-host")
    p = edgecls("bench", art, "--local", "--runtime", "tvm,onnxruntime", "--runs", "5", "--warmup", "1",
                "-o", tmp_path / "reports")
    assert p.returncode == 0, p.stderr
    reports = {r["runtime"]: r for r in reports_in(tmp_path / "reports")}
    assert set(reports) == {"tvm", "onnxruntime"}
    want = host_top1(art)
    for runtime, r in reports.items():
        check_report(r, runtime)
        assert r["accuracy"]["n"] == 64 and r["accuracy"]["top1"] == pytest.approx(want)
        assert r["board"]["kind"] == "local"
        a = r["artifact"]
        assert a["macs"] == 17_286_400 and a["params"] == 177_226 and a["variant"] == "fp32"
        assert a["model_file"] == {"tvm": "model.so", "onnxruntime": "model.onnx"}[runtime]
        assert 0 < a["model_bytes"] < a["size_bytes"]
    # Without --threads every runtime gets one thread per CPU here (x86-host declares no cluster),
    # stated in the report; TVM's own default would be half the CPUs (1 on 2 cores).
    from edgecls.report.load import place_text
    ncpu = len(os.sched_getaffinity(0))
    assert place_text(reports["tvm"]) == place_text(reports["onnxruntime"]) == (str(ncpu), "all")
    assert reports["tvm"]["threads"] == ncpu and reports["onnxruntime"]["threads"] == ncpu
    assert reports["tvm"]["options"]["threads_how"] == f"default: one per CPU of local ({ncpu})"
    assert f"local: {ncpu} thread(s), default: one per CPU of local ({ncpu}); --threads N overrides" in p.stdout
    p = edgecls("bench", art, "--local", "--threads", "1", "--runs", "3", "--warmup", "1", "-o", tmp_path / "one")
    assert p.returncode == 0, p.stderr
    [r] = reports_in(tmp_path / "one")
    assert r["threads"] == 1 and r["options"]["threads_how"] == "given (--threads)" and place_text(r)[0] == "1"


@pytest.mark.slow
@needs_aarch64
def test_emulated_board_over_ssh_deploy_and_bench(artifacts, ssh_board, tmp_path):  # noqa: F811
    art = artifacts.get("digits", "rk3399")
    inv = tmp_path / "boards.toml"
    env = {"EDGECLS_BOARDS": str(inv), "EDGECLS_SSH_CONFIG": str(ssh_board.ssh_config),
           "PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent)}
    p = edgecls("boards", "add", "emu1", "--host", ssh_board.name, "--target", "rk3399",
                "--workdir", ssh_board.workdir, "--emulator", QEMU, env=env, inherit_env=False, timeout=600)
    assert p.returncode == 0, p.stderr
    p = edgecls("boards", "list", env=env, inherit_env=False, timeout=600)
    assert p.returncode == 0 and "emu1" in p.stdout and "yes" in p.stdout, p.stdout + p.stderr
    p = edgecls("boards", "check", "emu1", "--json", env=env, inherit_env=False, timeout=600)
    assert p.returncode == 0, p.stderr
    facts = json.loads(p.stdout)
    assert facts["arch"] == "x86_64" and facts["glibc"] and facts["disk_free_kb"] > 0
    p = edgecls("deploy", art, "--board", "emu1", env=env, inherit_env=False, timeout=600)
    assert p.returncode == 0, p.stderr
    p = edgecls("deploy", art, "--board", "emu1", env=env, inherit_env=False, timeout=600)  # again: nothing to send
    assert p.returncode == 0 and "already there" in p.stdout, p.stdout + p.stderr
    assert (ssh_board.workdir / art.name / "manifest.json").is_file()
    p = edgecls("bench", art, "--board", "emu1", "--runs", "5", "--warmup", "1", "-o", tmp_path / "r", env=env, inherit_env=False, timeout=600)
    assert p.returncode == 0, p.stderr
    [r] = reports_in(tmp_path / "r")
    check_report(r, "tvm")
    assert r["device"]["uname"]["machine"] == "aarch64"  # measured inside qemu-aarch64
    assert r["accuracy"]["top1"] == pytest.approx(host_top1(art))
    assert r["board"]["name"] == "emu1" and r["board"]["emulator"][0] == "qemu-aarch64"
    # rk3399's big cluster has two cores: two threads, unpinned under emulation.
    assert r["threads"] == 2 and r["options"]["cores_resolved"] is None
    assert r["options"]["threads_how"] == "default: one per core of rk3399's big cluster (cpus 4,5), unpinned under emulation"

    # A file corrupted on the board: the benchmark refuses to run it.
    with open(ssh_board.workdir / art.name / "model.so", "r+b") as f:
        f.seek(2000)
        f.write(b"\xff\xff\xff\xff")
    p = edgecls("bench", art, "--board", "emu1", "--runs", "2", "-o", tmp_path / "r2", env=env, inherit_env=False, timeout=600)
    # deploy re-uploads what fails the check, so the run succeeds on a repaired artifact ...
    assert p.returncode == 0, p.stderr
    assert (ssh_board.workdir / art.name / "model.so").read_bytes() == (art / "model.so").read_bytes()


def test_parallel_boards_in_network_namespaces_one_failing(artifacts, netns_boards, tmp_path):  # noqa: F811
    art = artifacts.get("digits", "x86-host")
    inv = tmp_path / "boards.toml"
    lines = []
    configs = []
    for name, cfg, workdir in netns_boards:
        lines.append(f'[boards.{name}]\nhost = "{name}"\ntarget = "x86-host"\nworkdir = "{workdir}"\n')
        configs.append(Path(cfg).read_text())
    lines.append('[boards.dead]\nhost = "127.0.0.1:1"\ntarget = "x86-host"\nworkdir = "/tmp/edgecls-dead"\n')
    inv.write_text("\n".join(lines))
    merged = tmp_path / "ssh_config"  # one config naming every namespace board
    merged.write_text("\n".join(c.split("Host *")[0] for c in configs) + "\n" + "Host *" + configs[0].split("Host *")[1])
    env = {"EDGECLS_BOARDS": str(inv), "EDGECLS_SSH_CONFIG": str(merged),
           "PATH": "/usr/bin:/bin:" + str(Path(sys.executable).parent)}
    p = edgecls("bench", art, "--board", "all", "--runs", "3", "--warmup", "1", "-o", tmp_path / "r", env=env, inherit_env=False, timeout=600)
    assert p.returncode != 0  # the dead board fails the command ...
    assert "1 of 4" in p.stderr and "Traceback" not in p.stderr
    reports = reports_in(tmp_path / "r")
    assert sorted(r["board"]["name"] for r in reports) == sorted(n for n, _, _ in netns_boards)
    for r in reports:  # ... but every live board delivered its report
        check_report(r, "tvm", runs=3)
        # x86-host declares no cluster: one thread per CPU the board's `nproc` counts.
        assert r["threads"] == r["options"]["threads"] == len(os.sched_getaffinity(0))
        assert r["options"]["threads_how"].startswith(f"default: one per CPU of {r['board']['name']}")
