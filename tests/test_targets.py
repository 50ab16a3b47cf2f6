"""Targets are TOML data: built-ins parse, users add boards without code changes."""

from __future__ import annotations

import pytest

from edgecls.cli import main
from edgecls.errors import TargetError
from edgecls.targets import get_target, load_targets

REQUIRED = {"x86-host", "rk3399", "rpi4", "jetson-nano", "jetson-xavier-nx", "jetson-orin-nano"}


def test_builtin_targets_are_complete():
    targets = load_targets()
    assert REQUIRED <= set(targets)
    rk = targets["rk3399"]
    assert rk.tvm == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                      "mattr": ["+neon"], "num-cores": 2}
    assert rk.cpus == {"big": (4, 5), "little": (0, 1, 2, 3)}
    assert rk.compiler == "aarch64-linux-gnu-g++" and rk.compiler_package == "g++-aarch64-linux-gnu"
    assert rk.emulator[0] == "qemu-aarch64"
    for t in targets.values():
        assert t.arch in ("x86_64", "aarch64") and t.layout in ("NCHW", "NHWC") and t.runtimes


def test_every_builtin_target_is_accepted_by_tvm():
    from edgecls.compile.tvm import resolve_target
    for t in load_targets().values():
        resolved = resolve_target(t.tvm)
        assert resolved["num-cores"] > 0 and resolved.get("mcpu") != "native"


def test_user_target_dir_adds_and_overrides(tmp_path, monkeypatch):
    (tmp_path / "rock5b.toml").write_text(
        'name = "rock5b"\ndescription = "RK3588"\narch = "aarch64"\ntriple = "aarch64-linux-gnu"\n'
        'layout = "NHWC"\n[tvm]\ntarget = { kind = "llvm", mtriple = "aarch64-linux-gnu", '
        'mcpu = "cortex-a76", mattr = ["+neon", "+dotprod"], num-cores = 4 }\n'
        '[toolchain]\ncompiler = "aarch64-linux-gnu-g++"\ndebian_package = "g++-aarch64-linux-gnu"\n'
        '[cpus]\nbig = [4, 5, 6, 7]\nlittle = [0, 1, 2, 3]\n')
    monkeypatch.setenv("EDGECLS_TARGETS", str(tmp_path))
    t = get_target("rock5b")
    assert t.tvm["mcpu"] == "cortex-a76" and t.cpus["big"] == (4, 5, 6, 7)
    assert get_target(str(tmp_path / "rock5b.toml")).name == "rock5b"


def test_unknown_target_message_lists_known():
    with pytest.raises(TargetError) as exc:
        get_target("nope")
    assert "rk3399" in str(exc.value) and "x86-host" in str(exc.value)


def test_targets_cli_table_and_show(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["targets"])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None)
    for name in REQUIRED:
        assert name in out
    with pytest.raises(SystemExit):
        main(["targets", "show", "rk3399"])
    out = capsys.readouterr().out
    assert "cortex-a72" in out and "g++-aarch64-linux-gnu" in out and "[4, 5]" in out
