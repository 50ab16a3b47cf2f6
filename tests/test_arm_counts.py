"""ARM speed without a board: emulated instruction counts (qemu-user, the target's CPU model, one
thread) of the reference nets as regression bounds, and the machine code of the int8 kernels.

int8 (the functions named *int8*): MobileNetV2 224x224 int8 QDQ (ptq_onnx, as
scripts/model_so_hashes.py makes it) for rk3399, counted under qemu -cpu cortex-a72, must stay
below a bound just above what the smull kernels reach and below the same net's fp32 build.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import export_onnx, needs_aarch64
from edgecls.bench.instructions import count_artifact
from edgecls.compile import tvm as ta
from edgecls.optimize.quantize import ptq_onnx
from edgecls.pipeline import CompileRequest, compile_artifact
from edgecls.targets import get_target

# MobileNetV2 int8, rk3399, qemu 7.2 -cpu cortex-a72, per inference: 233.3 M with the int16-pair
# kernels (mul.8h + one sadalp per multiply), 143.4 M with smull/smlal2 on 8-bit lanes, 131.0 M
# with up to 32 channels per smull call, 111.3 M with int16 depthwise convs (smlal, pad stage).
INT8_MOBILENET_V2_RK3399_MAX = 115e6
OBJDUMP = "aarch64-linux-gnu-objdump"


@pytest.fixture(scope="module")
def int8_mobilenet_v2(tmp_path_factory):
    """(fp32, int8 QDQ) MobileNetV2 224x224, 1000 classes, seeded as model_so_hashes.make_models."""
    from edgecls.models import MobileNetV2
    d = tmp_path_factory.mktemp("mnv2")
    torch.manual_seed(0)
    fp32 = export_onnx(MobileNetV2(num_classes=1000).eval(), (1, 3, 224, 224), d / "mobilenet_v2.onnx")
    calib = np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype("float32")
    int8 = d / "mobilenet_v2_int8.onnx"
    ptq_onnx(fp32, int8, calib, "minmax")
    return fp32, int8


@needs_aarch64
@pytest.mark.slow
def test_int8_mobilenet_v2_rk3399_counts_below_bound_and_fp32(int8_mobilenet_v2, tmp_path):
    """Both builds verify against ONNX Runtime under -cpu cortex-a72 and cortex-a53 (compile
    does it); the int8 one executes fewer instructions per inference than the fp32 one."""
    counts = {}
    for name, model in zip(("fp32", "int8"), int8_mobilenet_v2):
        art = compile_artifact(CompileRequest(model=model, target="rk3399", out_dir=tmp_path / name, tflite="no"))
        counts[name] = count_artifact(art).per_inference
    assert counts["int8"] < INT8_MOBILENET_V2_RK3399_MAX, counts
    assert counts["int8"] < counts["fp32"], counts


@pytest.fixture(scope="module")
def int8_conv_qdq(tmp_path_factory):
    """A QDQ net of an RGB 3x3 conv (3 channels: int16 pairs) then 3x3 and 1x1 convs over 32
    and 24 channels (k = 16 and 8 per smull step on ARMv8.0, sdot on dotprod)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 24, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(24, 16, 1))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("qconv")
    fp32 = export_onnx(net.eval(), (1, 3, 16, 16), d / "conv.onnx")
    calib = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype("float32")
    ptq_onnx(fp32, d / "conv_int8.onnx", calib, "minmax")
    return d / "conv_int8.onnx"


def _int8_kernel_ops(path, target: str, lib) -> dict[str, set[str]]:
    """Mnemonics of the conv kernels of `path` built (not run) for `target`'s CPU."""
    import onnx
    model = onnx.load(str(path))
    mod = ta.import_onnx(model, model.graph.input[0].name, (1, 3, 16, 16))
    tgt = get_target(target)
    tt = ta.resolve_target(tgt.tvm)
    fused, _ = ta.run_graph_passes(mod, tt, "NHWC", int8=True)
    ta.build(fused, tt, lib, tgt.compiler)
    return {f: ops for f, ops in ta.kernel_mnemonics(lib, OBJDUMP).items() if "conv2d" in f and f.endswith("_compute_")}


@needs_aarch64
def test_int8_conv_kernels_multiply_8bit_lanes_on_cortex_a72(int8_conv_qdq, tmp_path):
    """ARMv8.0 (rk3399, -mcpu=cortex-a72): the convs over 32 and 24 channels multiply 8-bit lanes
    (smull; smlal2 for 16 channels per step) and reduce by addp; the RGB conv keeps the int16
    pairs (mul.8h + sadalp). No ARMv8.2 dot product anywhere."""
    ops = _int8_kernel_ops(int8_conv_qdq, "rk3399", tmp_path / "a72.so")
    mull = [f for f, o in ops.items() if {"smull", "saddlp", "addp", "ld4"} <= o]
    pairs = [f for f, o in ops.items() if {"mul", "sadalp"} <= o and "ld4" not in o]
    assert len(ops) == 3 and len(mull) == 2 and len(pairs) == 1, ops
    assert any("smlal2" in ops[f] for f in mull)
    assert not any("sdot" in o for o in ops.values())


@needs_aarch64
def test_int8_conv_kernels_use_sdot_on_dotprod(int8_conv_qdq, tmp_path):
    """jetson-orin-nano (-mcpu=cortex-a78 +dotprod): every conv (the RGB one padded to 4
    channels) is sdot, none is the ARMv8.0 smull kernel (its saddlp; a scalar smull also
    divides loop indices by constants, so that name proves nothing)."""
    import subprocess
    ops = _int8_kernel_ops(int8_conv_qdq, "jetson-orin-nano", tmp_path / "a78.so")
    assert len(ops) == 3 and all("sdot" in o and "saddlp" not in o for o in ops.values()), ops
    # The convs over 32 and 24 channels take 16 / 8 per step: sdot by lane (x.4b[g]).
    text = subprocess.run([OBJDUMP, "-d", str(tmp_path / "a78.so")], capture_output=True, text=True, check=True).stdout
    assert ".4b[1]" in text
