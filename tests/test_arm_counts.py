"""ARM speed without a board: emulated instruction counts (qemu-user, the target's CPU model, one
thread, N=3 minus N=1) of the reference nets as regression bounds, and the machine code of the
int8 kernels. Counts are deterministic, so a bound just above the measured count is a CI-safe
regression check of the NEON kernels; they do not depend on the weights' values. Every compile
here also verifies the artifact against ONNX Runtime under cortex-a72 and cortex-a53.

MobileNetV2 224x224 (1000 classes, seeded as scripts/model_so_hashes.py makes it) fp32 and int8
QDQ (ptq_onnx) for rk3399, counted under qemu -cpu cortex-a72: each below a bound just above what
the NEON rules reach, and the int8 build below the fp32 one.
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
# with up to 32 channels per smull call, 111.3 M with int16 depthwise convs (smlal, pad stage),
# 111.1 M with the integer requantize epilogue (fcvtns, sqxtn: schedules/neon_requantize.py).
INT8_MOBILENET_V2_RK3399_MAX = 112e6
# MobileNetV2 fp32, rk3399: 202.6 M before the NEON fp32 rule (scalar activation loads), 112.1 M
# with it (vector loads + fmla by lane, 8x2 / 7x2 register tiles, two steps of 4 input channels per
# loop iteration, RGB conv's padding as a stage); LiteRT 2.3.0 (XNNPACK) counts 124.0 M on the same
# CPU model. The top kernel is the 14x14 96->576 expansion: 22.6 M before the rule, 10.23 M with it.
FP32_MOBILENET_V2_RK3399_MAX = 113e6
FP32_TOP_KERNEL_MAX = 10.5e6
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
def test_mobilenet_v2_rk3399_fp32_and_int8_counts_below_bounds(int8_mobilenet_v2, tmp_path):
    """Both builds verify against ONNX Runtime under -cpu cortex-a72 and cortex-a53 (compile
    does it); the int8 one executes fewer instructions per inference than the fp32 one."""
    counts = {}
    for name, model in zip(("fp32", "int8"), int8_mobilenet_v2):
        art = compile_artifact(CompileRequest(model=model, target="rk3399", out_dir=tmp_path / name, tflite="no"))
        counts[name] = count_artifact(art, top=3)
        assert counts[name].cpu == "cortex-a72"
    fp32, int8 = counts["fp32"], counts["int8"]
    assert fp32.per_inference <= FP32_MOBILENET_V2_RK3399_MAX, fp32.to_dict()
    assert fp32.kernels[0]["per_inference"] <= FP32_TOP_KERNEL_MAX, fp32.kernels[0]
    assert int8.per_inference < INT8_MOBILENET_V2_RK3399_MAX, int8.to_dict()
    assert int8.per_inference < fp32.per_inference, (int8.per_inference, fp32.per_inference)


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


def _requantize_module(vector_lanes: int | None):
    """A PrimFunc computing quant.int8's epilogue uint8(clamp(round(acc * M) + 3, 0, 200)), its
    loop vectorized `vector_lanes` wide (None: scalar)."""
    tvm = ta.load_tvm()
    from tvm import s_tir, te, tirx
    acc = te.placeholder((64,), "int32", name="acc")
    out = te.compute((64,), lambda i: tirx.Cast("uint8", tirx.Min(tirx.Max(
        tirx.round(acc[i].astype("float32") * tirx.FloatImm("float32", 0.37)) + tirx.FloatImm("float32", 3.0),
        tirx.FloatImm("float32", 0.0)), tirx.FloatImm("float32", 200.0))), name="out")
    sch = s_tir.Schedule(tvm.IRModule({"main": te.create_prim_func([acc, out])}))
    if vector_lanes:
        _, inner = sch.split(sch.get_loops(sch.get_sblock("out"))[0], [None, vector_lanes])
        sch.vectorize(inner)
    return sch.mod


def test_requantize_epilogue_becomes_integer_on_aarch64_only():
    """aarch64: round + float clamp become fcvtns, an int16 saturation and an int16 clamp (with
    the zero point added after it); loops vectorized wider than 4 (fcvtns would not compile)
    and x86 targets keep the float chain."""
    a72 = ta.resolve_target(get_target("rk3399").tvm)
    mod, changed = ta.neon_requantize(_requantize_module(None), a72)
    text = mod.script()
    assert changed == 1 and "llvm.aarch64.neon.fcvtns" in text and "round" not in text, text
    assert "T.int16(-3)" in text and "T.int16(197)" in text, text  # clamp to [0 - 3, 200 - 3], then + 3
    assert ta.neon_requantize(_requantize_module(4), a72)[1] == 1
    assert ta.neon_requantize(_requantize_module(8), a72)[1] == 0
    assert ta.neon_requantize(_requantize_module(None), {"kind": "llvm", "mcpu": "x86-64"})[1] == 0


@needs_aarch64
def test_int8_conv_epilogue_rounds_converts_and_saturates_in_one_step_each(int8_conv_qdq, tmp_path):
    """rk3399: every conv's requantize is fcvtns (round half even + convert) and sqxtn
    (saturating narrow), with no frinti / fcvtzs / float clamp left."""
    ops = _int8_kernel_ops(int8_conv_qdq, "rk3399", tmp_path / "a72.so")
    assert len(ops) == 3 and all({"fcvtns", "sqxtn"} <= o for o in ops.values()), ops
    assert not any(o & {"frinti", "fcvtzs", "fmaxnm", "fminnm"} for o in ops.values()), ops


def _qdq_conv_edges(path):
    """A hand-built QDQ 1x1 conv, uint8 RGB in (an artifact's input is an image), int8
    weights, 16 output channels then uint8 (ReLU bounds) out. M = s_x * s_w / s_y is 0.5 for the even channels (every odd acc is a tie of
    round half to even) and 2048 for the odd ones (|acc * M| up to ~2^24: past int16 both ways)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (16, 3, 1, 1)).astype(np.int8)
    s_w = np.where(np.arange(16) % 2 == 0, 1.0, 4096.0).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.float32(1.0), "s_x"), (np.uint8(128), "z_x"), (w, "w_q"), (s_w, "s_w"), (np.zeros(16, np.int8), "z_w"),
        (np.float32(2.0), "s_y"), (np.uint8(3), "z_y"))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s_x", "z_x"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "s_x", "z_x"], ["x_f"]),
             helper.make_node("DequantizeLinear", ["w_q", "s_w", "z_w"], ["w_f"], axis=0),
             helper.make_node("Conv", ["x_f", "w_f"], ["y"]),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s_y", "z_y"], ["y_q"]),
             helper.make_node("DequantizeLinear", ["y_q", "s_y", "z_y"], ["out"])]
    graph = helper.make_graph(nodes, "edges", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@needs_aarch64
def test_integer_requantize_keeps_ties_and_saturation_exact_under_qemu(tmp_path):
    """The rewritten epilogue (neon_requantize) on rk3399, run by its runner under qemu
    -cpu cortex-a72, equals ONNX Runtime's QDQ graph exactly on ties (x.5 rounds to even) and
    on products far past int16 (saturation, then the uint8 / ReLU bounds)."""
    from edgecls.artifact.execute import run_runner
    from edgecls.artifact.reference import onnx_session
    model = _qdq_conv_edges(tmp_path / "edges.onnx")
    art = compile_artifact(CompileRequest(model=model, target="rk3399", out_dir=tmp_path / "art", tflite="no"))
    x = np.random.default_rng(1).integers(-128, 128, (1, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_runner(art, tmp_path / "x.npy", emulate=True, output_path=tmp_path / "y.npy")
    got = np.load(tmp_path / "y.npy")
    want = onnx_session(model, optimize=False).run(None, {"x": x})[0]
    assert np.array_equal(got, want), np.abs(got - want).max()
    acc = np.einsum("oc,nchw->nohw", np.random.default_rng(0).integers(-127, 128, (16, 3)).astype(np.int64),
                    x.astype(np.int64))
    assert np.any(acc[:, 0::2] % 2 != 0) and np.abs(acc[:, 1::2] * 2048).max() > 2 ** 15  # the edges occur
    assert {0.0, 252.0 * 2} <= set(np.unique(got[:, 1::2])), np.unique(got[:, 1::2])  # both bounds reached
