"""A real wheel (issue #18): built from the sources, installed (not editable) into a fresh venv,
and used from there with no source tree in reach: the built-in targets, the runner's C++
sources and the harness ship as package data. Offline: the venv reaches the dependencies
already installed for the tests through a path file, and pip installs the wheel alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import small_net_onnx

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, env, timeout=600):
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return p


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """(venv, env): the wheel of these sources installed in a fresh venv; env without PYTHONPATH."""
    d = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    src = d / "src"  # a copy: building writes build/ and *.egg-info next to the sources
    shutil.copytree(ROOT / "edgecls", src / "edgecls", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", d / "dist",
          src], d, env)
    [whl] = (d / "dist").glob("edgecls-*.whl")
    venv = d / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], d, env)
    purelib = Path(_run([venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        d, env).stdout.strip())
    # The test venv's packages (torch, TVM ...) as a plain path: its .pth files, among them the
    # editable edgecls of the checkout, are not processed, so `edgecls` can only be the wheel's.
    (purelib / "test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", whl],
         d, env)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
    return venv, env


@pytest.mark.slow
def test_installed_wheel_knows_the_targets_and_compiles(wheel_venv, tmp_path):
    venv, env = wheel_venv
    where = _run([venv / "bin" / "python", "-c", "import edgecls; print(edgecls.__file__)"], tmp_path, env).stdout
    assert where.startswith(str(venv)), where
    p = _run([venv / "bin" / "edgecls", "targets"], tmp_path, env)
    for name in ("rk3399", "rpi4", "jetson-orin-nano", "x86-host"):
        assert name in p.stdout, p.stdout
    extra = tmp_path / "mine"  # a user's folder of targets still adds to the built-in ones
    extra.mkdir()
    (extra / "myboard.toml").write_text(
        (Path(where).parent / "builtin_targets" / "rpi4.toml").read_text().replace('name = "rpi4"', 'name = "myboard"'))
    p = _run([venv / "bin" / "edgecls", "targets", "show", "myboard"], tmp_path, {**env, "EDGECLS_TARGETS": str(extra)})
    assert "myboard" in p.stdout and "cortex-a72" in p.stdout
    model = small_net_onnx(tmp_path / "net.onnx")
    _run([venv / "bin" / "edgecls", "compile", model, "--target", "x86-host", "-o", tmp_path / "art"], tmp_path, env)
    m = json.loads((tmp_path / "art" / "manifest.json").read_text())
    assert m["target"]["source"].startswith(str(venv)) and m["verification"]["top1_match"], m["target"]["source"]
    _run([venv / "bin" / "edgecls", "bench", tmp_path / "art", "--local", "--runtime", "tvm,onnxruntime",
          "--runs", "3", "-o", tmp_path / "reports"], tmp_path, env)
    assert len(list((tmp_path / "reports").glob("*.json"))) == 2
