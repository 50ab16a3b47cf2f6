"""The compile spine with real TVM builds: host numerics, fusion statistics, manifest, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import ort_run
from edgecls.artifact.manifest import read_manifest, verify_files
from edgecls.artifact.native import elf_arch
from edgecls.cli import main
from edgecls.compile import tvm as tvm_adapter


def test_digits_host_matches_onnxruntime_on_whole_validation_set(artifacts, demo):
    art = artifacts.get("digits", "x86-host")
    x = np.load(demo.val_x).astype(np.float32)
    y = np.load(demo.val_y)
    got = tvm_adapter.run_host_library(art / "model.so", x)
    want = ort_run(art / "model.onnx", x)
    diff = float(np.abs(got - want).max())
    print(f"digits x86-host vs ORT: max abs diff {diff:.3g} over {len(x)} images")
    assert diff < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    assert (got.argmax(1) == y).mean() >= 0.95


@pytest.mark.parametrize("net", ["mobilenet_v2", "resnet18"])
def test_reference_nets_fold_bn_and_fuse_every_conv_epilogue(artifacts, net):
    art = artifacts.get(net, "x86-host")
    m = read_manifest(art)
    s = m["stats"]
    assert s["convs"] == (52 if net == "mobilenet_v2" else 20)
    assert s["batch_norm_left"] == 0
    assert s["unfused_epilogues"] == 0
    # BN folded into conv bias by the exporter: every conv has an epilogue, and carries it fused.
    assert s["conv_kernels"] == s["convs"] and s["fused_conv_kernels"] == s["convs"]
    v = m["verification"]
    assert v["how"] == "native" and v["top5_match"] and v["max_abs_diff"] < 1e-4


@pytest.mark.slow
def test_batchnorm_nodes_from_other_exporters_are_folded_by_our_passes(artifacts):
    art = artifacts.get("mobilenet_v2_bn", "x86-host")
    m = read_manifest(art)
    s = m["stats"]
    assert s["batch_norm_in_graph"] == 52 and s["batch_norm_left"] == 0
    assert s["unfused_epilogues"] == 0 and s["fused_conv_kernels"] == 52
    fold = next(p for p in m["passes"] if p["name"] == "FoldBatchnormToConv2D")
    assert fold["detail"] == {"batch_norm_before": 52, "batch_norm_left": 0}
    assert m["verification"]["max_abs_diff"] < 1e-4


def test_nhwc_layout_keeps_fusion_and_numerics(artifacts):
    art = artifacts.get("mobilenet_v2", "x86-host", layout="NHWC")
    m = read_manifest(art)
    assert m["layout"] == {"requested": "NHWC", "chosen": "NHWC", "reason": "given on the command line"}
    assert m["stats"]["unfused_epilogues"] == 0 and m["stats"]["fused_conv_kernels"] == 52
    # ConvertLayout may add transposes only at the graph edges, not around every ReLU6.
    assert m["stats"]["kernels"] <= 60
    assert m["verification"]["max_abs_diff"] < 1e-4
    # Every kernel got a zero-trial schedule, nothing left naive. Counts are per distinct kernel
    # function (layers of equal shape share one): 20 conv + 10 depthwise for MobileNetV2's 52 convs.
    sched = m["stats"]["schedules"]
    assert sched["enabled"] and sched["unscheduled"] == 0
    assert sched["conv2d"] >= 15 and sched["depthwise"] >= 8 and sched["dense"] == 1


def test_manifest_records_how_the_artifact_was_made(artifacts, demo):
    art = artifacts.get("digits", "x86-host")
    m = read_manifest(art)
    assert m["schema"] == 1 and m["model"]["format"] == "onnx"
    assert len(m["model"]["sha256"]) == 64
    assert m["target"]["name"] == "x86-host"
    assert m["target"]["tvm_resolved"]["mcpu"] not in ("native", "", None)
    assert m["layout"]["chosen"] == "NHWC" and m["layout"]["requested"] == "auto"
    assert m["labels"] == [str(i) for i in range(10)]
    assert m["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    for key in ("apache-tvm", "apache-tvm-ffi", "torch", "onnx", "onnxruntime", "onnxsim"):
        assert m["versions"][key]
    assert {"model.so", "model.onnx", "edgecls-runner", "libtvm_runtime.so", "libtvm_ffi.so",
            "reference/input.npy", "reference/output.npy", "labels.txt"} <= set(m["files"])
    assert verify_files(art) == []
    assert [p["name"] for p in m["passes"]][-3:] == ["FuseOps", "FuseTIR", "AttachAttrLayoutFreeBuffers"]
    assert m["runner"]["glibc_required"]
    assert elf_arch(art / "model.so") == "x86_64" and elf_arch(art / "edgecls-runner") == "x86_64"
    # Graph facts counted at compile time (the DigitsCNN's convs and linear layers, BN folded).
    assert m["graph"]["macs"] == 17_286_400 and m["graph"]["params"] == 177_226
    assert m["variant"] == m["graph"]["variant"] == "fp32" and m["graph"]["macs_unknown_nodes"] == 0
    assert m["model"]["name"] == demo.onnx.stem and m["model"]["origin_sha256"] == m["model"]["sha256"]


def test_run_cli_on_a_png_prints_top5_json(artifacts, demo, tmp_path, capsys):
    from PIL import Image
    from edgecls.data import digits_dataset
    art = artifacts.get("digits", "x86-host")
    ds = digits_dataset(size=32)
    # A real digit written as an image file: the CLI must preprocess it as the manifest says.
    img = ((ds.x[5].transpose(1, 2, 0) * 0.5 + 0.5) * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "digit.png")
    out = tmp_path / "logits.npy"
    with pytest.raises(SystemExit) as exc:
        main(["run", str(art), "--input", str(tmp_path / "digit.png"), "--json", "--save-output", str(out)])
    assert exc.value.code in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert len(report["topk"]) == 5
    # Same answer and logits as ONNX Runtime on the in-memory tensor: PNG preprocessing matches.
    want = ort_run(art / "model.onnx", ds.x[5:6])
    assert report["topk"][0]["label"] == str(int(want.argmax()))
    assert np.abs(np.load(out) - want).max() < 1e-4
    assert np.load(out).shape == (1, 10)


def test_tampered_artifact_refuses_to_run(artifacts, tmp_path, capsys):
    import shutil
    art = tmp_path / "copy"
    shutil.copytree(artifacts.get("digits", "x86-host"), art)
    with open(art / "model.so", "r+b") as f:
        f.seek(1000)
        f.write(b"\0\0\0\0")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(art)])
    assert exc.value.code != 0
    assert "checksum" in capsys.readouterr().err


def test_pt2_and_torchscript_inputs_compile(demo, tmp_path):
    import torch
    from edgecls.models import DigitsCNN
    from edgecls.pipeline import CompileRequest, compile_artifact
    out = compile_artifact(CompileRequest(model=demo.pt2, target="x86-host", out_dir=tmp_path / "pt2"))
    m = read_manifest(out)
    assert m["model"]["format"] == "pt2" and m["options"]["import_route"] == "torch.export"
    assert m["verification"]["top5_match"] and m["stats"]["unfused_epilogues"] == 0
    from edgecls.optimize.run import tflite_available
    if tflite_available():  # a torch input also ships an fp32 model.tflite for LiteRT
        from edgecls.export.tflite import run_tflite
        assert "tflite" in m["runtimes_shipped"]
        got = run_tflite(out / "model.tflite", np.load(out / "reference" / "input.npy"))
        assert np.abs(got - np.load(out / "reference" / "output.npy")).max() < 1e-3
    ts = tmp_path / "model.ts"
    torch.jit.trace(DigitsCNN().eval(), torch.zeros(1, 3, 32, 32)).save(str(ts))
    out = compile_artifact(CompileRequest(model=ts, target="x86-host", out_dir=tmp_path / "ts",
                                          input_shape=(1, 3, 32, 32)))
    assert read_manifest(out)["model"]["format"] == "torchscript"
