"""The issue-16 reference families (vision transformer, MobileViT-like hybrid, EfficientNet-like and
ConvNeXt-like CNNs), made small by their constructor arguments (64x64, fewer blocks: the same
kernel kinds), compiled for x86-host and rk3399 and verified against ONNX Runtime (rk3399 under qemu)."""

from __future__ import annotations

import pytest

from conftest import _randomize_bn, export_onnx, needs_aarch64
from edgecls.artifact.manifest import read_manifest
from edgecls.models import ConvNeXt, EfficientNetB0, MobileViTXS, ViTTiny
from edgecls.pipeline import CompileRequest, compile_artifact

SMALL = {
    "vit_tiny": lambda: ViTTiny(num_classes=10, image_size=64, depth=2),
    "mobilevit_xs": lambda: MobileViTXS(num_classes=10, depths=(1, 1, 1)),
    "efficientnet_b0": lambda: EfficientNetB0(num_classes=10, depth=0.25),
    "convnext": lambda: ConvNeXt(num_classes=10, depths=(1, 1, 1, 1), dims=(32, 64, 96, 128)),
}
# ONNX ops each family must bring (the kernel kinds it stands for)
FAMILY_OPS = {"vit_tiny": {"LayerNormalization", "Softmax", "MatMul", "Gelu"},
              "mobilevit_xs": {"LayerNormalization", "Softmax", "Transpose", "Sigmoid"},
              "efficientnet_b0": {"ReduceMean", "Sigmoid", "Mul"},
              "convnext": {"LayerNormalization", "Gelu", "Transpose"}}


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """net -> its ONNX file, exported on first use (an export takes seconds)."""
    d = tmp_path_factory.mktemp("archs")

    class Exported(dict):
        def __missing__(self, name):
            import torch
            seed = list(SMALL).index(name)
            torch.manual_seed(seed)
            self[name] = export_onnx(_randomize_bn(SMALL[name](), seed), (1, 3, 64, 64), d / f"{name}.onnx")
            return self[name]
    return Exported()


def _compiled(onnx, target, tmp_path):
    return read_manifest(compile_artifact(CompileRequest(model=onnx, target=target, out_dir=tmp_path / target)))


# The hybrid's and the EfficientNet's builds take ~20 s each on 2 shared cores (most kernels): slow.
X86_NETS = [pytest.param(n, marks=pytest.mark.slow) if n in ("mobilevit_xs", "efficientnet_b0") else n
            for n in SMALL]


@pytest.mark.parametrize("net", X86_NETS)
def test_family_compiles_for_x86_and_matches_onnxruntime(small_onnx, net, tmp_path):
    import onnx
    ops = {n.op_type for n in onnx.load(str(small_onnx[net])).graph.node}
    assert FAMILY_OPS[net] <= ops, ops
    v = _compiled(small_onnx[net], "x86-host", tmp_path)["verification"]
    assert v["how"] == "native" and v["top5_match"] and v["max_abs_diff"] <= v["tolerance"]


@pytest.mark.slow
@needs_aarch64
@pytest.mark.parametrize("net", list(SMALL))
def test_family_compiles_for_rk3399_and_matches_under_qemu(small_onnx, net, tmp_path):
    m = _compiled(small_onnx[net], "rk3399", tmp_path)
    v = m["verification"]
    assert v["how"].startswith("emulated") and v["top5_match"] and v["max_abs_diff"] <= v["tolerance"]
    assert m["target"]["arch"] == "aarch64"
