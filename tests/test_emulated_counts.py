"""Instructions per inference under qemu (bench --count) and the qemu CPU model of every emulated run.

All real: the project's TCG plugin built with the host gcc, aarch64 artifacts cross-compiled by TVM,
their runner under qemu-aarch64 -cpu <the target's core>.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import edgecls, needs_aarch64
from edgecls.bench.instructions import count_process, read_maps

pytestmark = needs_aarch64

LOOP_C = r"""
#include <stdlib.h>
int main(int argc, char **argv) {
  volatile long s = 0;
  long n = atol(argv[1]) * 100000;
  for (long i = 0; i < n; i++) s += i;
  return 0;
}
"""


@pytest.fixture(scope="module")
def loop_binary(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("loop")
    (d / "loop.c").write_text(LOOP_C)
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-o", str(d / "loop"), str(d / "loop.c")], check=True)
    return d / "loop"


def _count(binary: Path, n: int) -> int:
    counts, proc = count_process(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-cpu", "cortex-a72",
                                  str(binary), str(n)])
    assert proc.returncode == 0, proc.stderr
    assert counts.total == int(counts.insns.sum())  # the per-block records add up to the total
    return counts.total


def test_plugin_counts_are_exact_and_linear(loop_binary):
    """The same run counts the same; each extra 100,000 iterations adds the same number (the loop
    body's instructions x 100,000), so start-up cancels in N=3 minus N=1."""
    c1, c2, c3 = (_count(loop_binary, n) for n in (1, 2, 3))
    assert _count(loop_binary, 2) == c2
    assert c3 - c2 == c2 - c1
    per_iteration = (c2 - c1) / 100_000
    assert per_iteration == int(per_iteration) and 2 <= per_iteration <= 8


def test_maps_give_each_file_its_load_bias():
    text = ("5500000000-5500010000 r--p 00000000 08:01 12 /a/model.so\n"
            "5500010000-5500050000 r-xp 00010000 08:01 12 /a/model.so\n"
            "5500060000-5500061000 rw-p 00000000 00:00 0 \n"
            "7f00000000-7f00100000 r-xp 00002000 08:01 13 /lib/libc.so.6\n")
    maps = read_maps(text)
    assert [(m.path, m.bias) for m in maps] == [("/a/model.so", 0x5500000000), ("/lib/libc.so.6", 0x7f00000000 - 0x2000)]


def test_bench_count_reports_instructions_and_kernels(artifacts, tmp_path):
    """`bench --local --emulate --count` on an rk3399 artifact: instructions per inference on the
    target's A72, deterministic, split by model.so kernel; `edgecls report` shows the column."""
    art = artifacts.get("mobilenet_v2", "rk3399")
    counts = []
    for out in ("a", "b"):
        proc = edgecls("bench", art, "--local", "--emulate", "--count", "-o", tmp_path / out, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        [path] = (tmp_path / out).glob("*.json")
        counts.append(json.loads(path.read_text()))
    report = counts[0]
    ins = report["instructions"]
    assert report["board"]["name"] == "qemu-cortex-a72" and ins["cpu"] == "cortex-a72" and ins["threads"] == 1
    # Repeatable to < 0.01 M: what differs between runs is outside the inferences (the runner
    # formats its timings and reads /proc for its system facts), measured: a few hundred.
    assert abs(ins["per_inference"] - counts[1]["instructions"]["per_inference"]) < 10_000
    assert abs(ins["totals"]["3"] - ins["totals"]["1"] - 2 * ins["per_inference"]) <= 1
    # The model's convolutions execute most of an inference; their names come from model.so.
    kernels = ins["kernels"]
    assert kernels[0]["name"].startswith("model.so:fused_conv2d")
    assert 0.5 < sum(k["share"] for k in kernels if k["name"].startswith("model.so:")) <= 1.0
    assert report["timings_ms"] is None
    shown = edgecls("report", tmp_path / "a", "--md", tmp_path / "r.md")
    assert shown.returncode == 0, shown.stderr
    md = (tmp_path / "r.md").read_text()
    assert "emulated instr/inference" in md and f"{ins['per_inference'] / 1e6:.1f} M" in md
    assert "qemu-cortex-a72" in md and "not time" in md


def test_count_needs_an_emulated_artifact(artifacts, tmp_path):
    art = artifacts.get("mobilenet_v2", "rk3399")
    proc = edgecls("bench", art, "--local", "--count", "-o", tmp_path)
    assert proc.returncode != 0 and "--emulate" in proc.stderr and "Traceback" not in proc.stderr
    proc = edgecls("bench", art, "--local", "--emulate", "--count", "--runtime", "onnxruntime", "-o", tmp_path)
    assert proc.returncode != 0 and "benchmarks/arm_instructions.py" in proc.stderr
    proc = edgecls("bench", art, "--local", "--emulate", "--cpu-model", "cortex-a53", "-o", tmp_path)
    assert proc.returncode != 0 and "--count" in proc.stderr


def test_verification_runs_every_core_of_the_target(artifacts):
    v = json.loads((artifacts.get("mobilenet_v2", "rk3399") / "manifest.json").read_text())["verification"]
    assert v["cpus"] == ["cortex-a72", "cortex-a53"] and "-cpu cortex-a72" in v["how"]


def test_instruction_the_board_lacks_fails_verification(demo, tmp_path):
    """A target TOML that claims dotprod on an ARMv8.0 core: the int8 kernels use sdot, which the
    A72 cannot run, and verification under qemu -cpu cortex-a72 says so. The same build on a core
    with dotprod (cortex-a76) verifies."""
    from edgecls.optimize.quantize import ptq_onnx
    qdq = tmp_path / "digits.int8.onnx"
    ptq_onnx(demo.onnx, qdq, np.load(demo.val_x)[:32].astype(np.float32), "minmax", activation_type="int8")
    rk3399 = (Path(__file__).resolve().parent.parent / "edgecls" / "builtin_targets" / "rk3399.toml").read_text()
    for name, cpus in (("rk3399-claims-dotprod", '["cortex-a72"]'), ("dotprod-core", '["cortex-a76"]')):
        toml = (rk3399.replace('name = "rk3399"', f'name = "{name}"')
                .replace('mattr = ["+neon"]', 'mattr = ["+neon", "+dotprod"]')
                .replace('emulator_cpus = ["cortex-a72", "cortex-a53"]', f"emulator_cpus = {cpus}"))
        assert "+dotprod" in toml and cpus in toml
        (tmp_path / f"{name}.toml").write_text(toml)
    bad = edgecls("compile", qdq, "-t", tmp_path / "rk3399-claims-dotprod.toml", "-o", tmp_path / "bad")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "instruction the cortex-a72 lacks" in bad.stderr and not (tmp_path / "bad").exists()
    good = edgecls("compile", qdq, "-t", tmp_path / "dotprod-core.toml", "-o", tmp_path / "good")
    assert good.returncode == 0, good.stderr
    objdump = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path / "good" / "model.so")],
                             capture_output=True, text=True).stdout
    assert "sdot" in objdump
