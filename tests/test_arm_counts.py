"""Instructions per inference of rk3399 artifacts under qemu -cpu cortex-a72 (one thread, N=3
minus N=1): deterministic, so a bound just above the measured count is a CI-safe regression
check of the NEON kernels. The nets are issue 15's reference nets (seeded, 224x224, 1000
classes); counts do not depend on the weights' values. Every compile here also verifies the
artifact against ONNX Runtime under cortex-a72 and cortex-a53."""

from __future__ import annotations

import pytest
import torch

from conftest import export_onnx, needs_aarch64
from edgecls.bench.instructions import count_artifact
from edgecls.models import MobileNetV2
from edgecls.pipeline import CompileRequest, compile_artifact

pytestmark = needs_aarch64

# MobileNetV2 fp32, rk3399: 202.6 M before the NEON fp32 rule (scalar activation loads), 112.1 M
# with it (vector loads + fmla by lane, 8x2 / 7x2 register tiles, two steps of 4 input channels per
# loop iteration, RGB conv's padding as a stage); LiteRT 2.3.0 (XNNPACK) counts 124.0 M on the same
# CPU model.
FP32_MOBILENET_V2_BOUND = 113_000_000


@pytest.mark.slow
def test_fp32_mobilenet_v2_rk3399_instructions_within_bound(tmp_path):
    torch.manual_seed(0)
    onnx_path = export_onnx(MobileNetV2(num_classes=1000).eval(), (1, 3, 224, 224), tmp_path / "mobilenet_v2.onnx")
    art = compile_artifact(CompileRequest(model=onnx_path, target="rk3399", out_dir=tmp_path / "art"))
    count = count_artifact(art, top=3)
    assert count.cpu == "cortex-a72"
    assert count.per_inference <= FP32_MOBILENET_V2_BOUND, count.to_dict()
    # The 1x1 convs dominate; the top kernel is MobileNetV2's 14x14 96->576 expansion (22.6 M
    # before the rule, 10.23 M with it).
    assert count.kernels[0]["per_inference"] <= 10_500_000, count.kernels[0]
