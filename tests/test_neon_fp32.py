"""The NEON fp32 rule (schedules/neon_fp32.py): which kernels it takes, the register tiles it
picks, and what its conv/dense kernels compile to for a Cortex-A72 (compile-only: the machine
code is read with the cross objdump, nothing runs, so no host ISA matters). That the kernels
compute the right thing is checked where they run: every rk3399 compile verifies against ONNX
Runtime under qemu (test_arm_counts.py, test_aarch64.py)."""

from __future__ import annotations

import re
import subprocess

import pytest

from conftest import needs_aarch64, x86_target
from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.tvm.schedules import rule_target
from edgecls.compile.tvm.schedules.neon_fp32 import VECTOR_REGISTERS, NeonFp32Rule, lane_fma_tile
from edgecls.compile.tvm.schedules.reduction import register_tile
from test_schedules import _conv_net, _dense_net

tvm = tvm_adapter.load_tvm()

RK3399 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 2}
LANE_FMLA = re.compile(r"\bfmla\s+v\d+\.4s, v\d+\.4s, v\d+\.s\[([0-3])\]")


def _kernel(mod, target: dict):
    """The single conv2d/matmul PrimFunc of a fused one-op module."""
    fused, _ = tvm_adapter.run_graph_passes(mod, target, layout="NHWC")
    return next(f for gv, f in fused.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and ("conv" in gv.name_hint or "matmul" in gv.name_hint))


@pytest.mark.parametrize("net, kind", [((32, 14, 64, 1), "conv2d"), ((16, 12, 32, 3), "conv2d"),
                                       ((3, 16, 16, 3), "conv2d"), ((32, 14, 32, 3, 1, 32), "depthwise")])
def test_rule_takes_float_kernels_on_aarch64_only(net, kind):
    """aarch64: conv2d (RGB first convs too, without the intrinsic) and depthwise; x86 targets
    never: their kernels keep the plain rule, byte for byte."""
    rule = NeonFp32Rule()
    arm = rule.apply(_kernel(_conv_net(*net), RK3399), rule_target(RK3399))
    assert arm is not None and arm.kind == kind
    x86 = tvm_adapter.resolve_target(x86_target("znver3"))
    assert rule.apply(_kernel(_conv_net(*net), x86), rule_target(x86)) is None


def test_lane_fma_tile_fills_the_registers_without_a_tail():
    """16 accumulators (8 rows x 2 vectors) where the width allows, 7 x 2 on 7-multiples; the
    accumulators plus one step's weight rows fit the 32 vector registers; kinds without the
    intrinsic and one-row tiles keep register_tile's choice."""
    assert lane_fma_tile("conv2d", 64, 4, 56) == (8, 2)
    assert lane_fma_tile("conv2d", 576, 4, 14) == (7, 2)
    assert lane_fma_tile("conv2d", 96, 4, 7) == (7, 2)
    assert lane_fma_tile("conv2d", 4, 4, 56) == (14, 1)  # one vector of output channels: more rows
    for width in (5, 6, 9, 12, 28, 112):
        for channels in (8, 12, 24, 40, 96):
            rb, nv = lane_fma_tile("conv2d", channels, 4, width)
            assert width % rb == 0 and channels % (4 * nv) == 0
            assert rb * nv + 4 * nv + 1 <= VECTOR_REGISTERS
    assert lane_fma_tile("depthwise", 96, 4, 56) == register_tile(96, 4, 56, False)
    assert lane_fma_tile("dense", 1000, 4, 1) == register_tile(1000, 4, 1, False)


def _disassembly(mod, tmp_path) -> dict[str, str]:
    """{function: its aarch64 disassembly} of `mod` built for rk3399 with the rule schedules."""
    fused, _ = tvm_adapter.run_graph_passes(mod, RK3399, layout="NHWC")
    lib = tmp_path / "model.so"
    tvm_adapter.build(fused, RK3399, lib, "aarch64-linux-gnu-g++")
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(lib)],
                          capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^[0-9a-f]+ <(\w+)>:\n(.*?)(?=\n\n|\Z)", text, re.S | re.M)}


@needs_aarch64
@pytest.mark.parametrize("net", [_conv_net(32, 14, 64, 1, epilogue=("bias", "relu6")),
                                 _conv_net(16, 12, 32, 3, epilogue=("bias",)), _dense_net(64, 40)],
                         ids=["1x1", "3x3", "dense"])
def test_kernels_load_activations_as_vectors_and_fma_by_lane(net, tmp_path):
    """Each pixel's 4 input channels come in as one q register and feed fmla by lanes 0-3: no
    scalar activation load (`ldr s`) is left in the kernel."""
    funcs = _disassembly(net, tmp_path)
    body = next(code for name, code in funcs.items()
                if name.endswith("_compute_") and ("conv2d" in name or "matmul" in name))
    assert {int(lane) for lane in LANE_FMLA.findall(body)} == {0, 1, 2, 3}
    assert re.search(r"\bld[rp]\s+q\d+", body)
    assert not re.search(r"\bld[rp]\s+s\d+", body)


def _attention_matmul(which: str, tokens: int = 197, dim: int = 64, heads: int = 3):
    """q @ k^T ("scores": tokens innermost) or probs @ v ("values": a reduction over tokens)."""
    from tvm import relax
    bb = relax.BlockBuilder()
    rows = (tokens, dim) if which == "scores" else (tokens, tokens)
    cols = (dim, tokens) if which == "scores" else (tokens, dim)
    a = relax.Var("a", relax.TensorType((1, heads, *rows), "float32"))
    b = relax.Var("b", relax.TensorType((1, heads, *cols), "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(a, b)))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("which", ["scores", "values"])
def test_attention_matmuls_over_197_tokens_are_padded_on_aarch64(which):
    """The tokens padded to whole vectors and a 6-row tile, the reduction to whole steps of 4:
    unpadded, q @ k^T ran scalar and probs @ v without the by-lane FMA (ViT-tiny on rk3399)."""
    applied = NeonFp32Rule().apply(_kernel(_attention_matmul(which), RK3399), rule_target(RK3399))
    assert applied is not None and applied.kind == "dense"
    script = applied.sch.mod["main"].script()
    assert "T.int64(198), T.int64(" in script  # the token rows
    assert "T.int64(200)" in script  # the scores' tokens (vectors) or the values' reduction
    assert "if_then_else" not in script


@needs_aarch64
@pytest.mark.parametrize("which", ["scores", "values"])
def test_attention_matmuls_fma_by_lane(which, tmp_path):
    funcs = _disassembly(_attention_matmul(which), tmp_path)
    body = next(code for name, code in funcs.items() if name.endswith("_compute_") and "matmul" in name)
    assert {int(lane) for lane in LANE_FMLA.findall(body)} == {0, 1, 2, 3}
