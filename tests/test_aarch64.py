"""rk3399 artifacts: cross-compiled, aarch64 all through, run by their own runner under qemu."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from conftest import needs_aarch64, ort_run
from edgecls.artifact.manifest import read_manifest
from edgecls.cli import main

pytestmark = needs_aarch64


def test_rk3399_artifact_is_aarch64_throughout(artifacts):
    art = artifacts.get("digits", "rk3399")
    for name in ("model.so", "edgecls-runner", "libtvm_runtime.so", "libtvm_ffi.so"):
        out = subprocess.run(["file", "-L", str(art / name)], capture_output=True, text=True).stdout
        assert "ARM aarch64" in out, out
    m = read_manifest(art)
    assert m["target"]["tvm_resolved"]["mtriple"] == "aarch64-linux-gnu"
    assert m["layout"]["chosen"] == "NHWC"  # rk3399's preferred layout under --layout auto
    assert m["verification"]["how"].startswith("emulated")
    assert m["runner"]["glibc_required"] >= "2.17"
    # Accuracy of the artifact itself, measured by its own runner under qemu over the whole validation
    # split the original was measured on; the first 64 images travel with it for boards.
    original, compiled = m["stages"][0], m["stages"][-1]
    assert compiled["stage"] == "compiled" and compiled["how"] == "edgecls-runner (emulated)"
    assert compiled["n"] == original["n"] == 270 and compiled["top1"] == original["top1"]
    assert compiled["carried"]["n"] == 64


def test_emulated_run_matches_onnxruntime_logits_and_top5(artifacts, demo, tmp_path, capsys):
    art = artifacts.get("digits", "rk3399")
    xs = np.load(demo.val_x)[:3].astype(np.float32)
    want = ort_run(art / "model.onnx", xs)
    for i, x in enumerate(xs):
        np.save(tmp_path / "x.npy", x[None])
        out = tmp_path / f"logits{i}.npy"
        with pytest.raises(SystemExit) as exc:
            main(["run", str(art), "--emulate", "--input", str(tmp_path / "x.npy"),
                  "--save-output", str(out), "--json"])
        assert exc.value.code in (0, None)
        report = json.loads(capsys.readouterr().out)
        got = np.load(out)[0]
        assert np.abs(got - want[i]).max() < 1e-4
        assert [t["index"] for t in report["topk"]] == np.argsort(-want[i])[:5].tolist()
        assert report["where"] == "emulated"


@pytest.mark.parametrize("net", ["mobilenet_v2", "resnet18"])
def test_reference_nets_for_rk3399_fused_and_verified_under_qemu(artifacts, net):
    m = read_manifest(artifacts.get(net, "rk3399"))
    s = m["stats"]
    assert s["batch_norm_left"] == 0 and s["unfused_epilogues"] == 0
    assert s["fused_conv_kernels"] == s["convs"]
    v = m["verification"]
    assert v["how"].startswith("emulated") and v["top5_match"] and v["max_abs_diff"] < 1e-4


def test_foreign_artifact_needs_emulate_flag(artifacts, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(artifacts.get("digits", "rk3399"))])
    assert exc.value.code == 2
    assert "--emulate" in capsys.readouterr().err
