"""The dotprod int8 kernels (issue 15, dotprod proxy CPU): c4-packed weights and sdot by lane
(neon_dot.py), 8-lane int16 depthwise convs (neon_dot_depthwise.py), 16-lane 8-bit pools
(neon_bytes.py, on every aarch64 target) and 8-lane requantize epilogues, checked in machine code built for an explicit
CPU (jetson-orin-nano: -mcpu=cortex-a78 +dotprod; rk3399: cortex-a72, which must keep none of
them), run exactly under qemu -cpu cortex-a76, and counted (MobileNetV2 int8, slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import export_onnx, needs_aarch64
from edgecls.compile import tvm as ta
from edgecls.compile.tvm.schedules.neon_dot import REGISTER_BUDGET, dot_tile
from edgecls.compile.tvm.schedules.prepack import _repacker, c4_array, taps_inside_array
from edgecls.optimize.quantize import ptq_onnx
from edgecls.pipeline import CompileRequest, compile_artifact
from edgecls.targets import get_target
from test_arm_counts import _int8_kernel_ops, int8_mobilenet_v2, resnet18_int8_qdq  # noqa: F401  (the fixture)

OBJDUMP = "aarch64-linux-gnu-objdump"
# MobileNetV2 int8 on jetson-orin-nano, qemu 7.2 -cpu cortex-a76, per inference: 75.15 M with
# isa/neon.py's sdot by lane (tiles one vector wide, weights transposed by tbl), 67.0 M with sdot
# accumulating in place, 59.05 M with c4-packed weights and up to 16 channels per row, 53.3 M with
# 8-lane depthwise convs, 52.5 M within 30 registers, 51.6 M with 8-lane epilogues, 51.3 M with
# 16-byte 8-bit kernels, 50.0 M with the bias as the accumulators' init, 49.85 M with a 16-lane
# input quantize, 48.31 M with each depthwise kernel row's window loaded once, 46.66 M with fcvtns
# per 4 lanes in the 8-lane epilogues, 46.22 M with the RGB stem's kernel folded into channels,
# 45.36 M with the global average pool reading NHWC, 44.87 M with sqxtun + umin after ReLUs,
# 44.76 M with stride-1 depthwise tiles one vector wide.
# LiteRT 2.3.0 (XNNPACK) counts 50.3 M on the same CPU model.
INT8_MOBILENET_V2_ORIN_MAX = 45.0e6
# ResNet-18 int8 on jetson-orin-nano, the same way: 149.76 M (h15), 148.19 M with the residual
# epilogues in int32, 143.51 M with the 3x3 convs' taps inside each c4 step, 143.32 M with
# the 64-channel convs' steps unrolled around them. Issue 15's goal:
# <= 145 M, 0.8x LiteRT 2.3.0 (XNNPACK) on the same CPU model.
INT8_RESNET18_ORIN_MAX = 144.0e6


def test_c4_array_puts_4_output_x_4_input_channels_in_16_bytes():
    """pack_c4's constant: (KH, KW, I, O) -> (O / B, KH, KW, I / 4, B, 4); repack_constants
    finds that rearrangement from the shapes alone, and never mistakes it for pack_last_axis's."""
    w = np.random.default_rng(0).integers(-127, 128, (3, 3, 8, 32)).astype(np.int8)
    packed = c4_array(w, 16)
    assert packed.shape == (2, 3, 3, 2, 16, 4)
    for ob, kh, kw, g, o, j in [(0, 0, 0, 0, 0, 0), (1, 2, 1, 1, 5, 3), (1, 0, 2, 0, 15, 2)]:
        assert packed[ob, kh, kw, g, o, j] == w[kh, kw, 4 * g + j, 16 * ob + o]
    assert np.array_equal(_repacker([3, 3, 8, 32], [2, 3, 3, 2, 16, 4])(w), packed)
    dense = w.reshape(72, 32)[:64]  # a (K, N) matmul weight, one block of all 32 columns
    assert np.array_equal(_repacker([64, 32], [1, 16, 32, 4])(dense), c4_array(dense, 32))
    assert _repacker([3, 3, 8, 32], [2, 3, 3, 8, 16]) is not None  # pack_last_axis's, not c4
    assert _repacker([3, 3, 6, 32], [2, 3, 3, 1, 16, 4]) is None  # I not in fours


def test_taps_inside_array_puts_a_steps_kernel_width_taps_together():
    """pack_taps_inside's constant: (KH, KW, I, O) -> (O / B, KH, I / k, KW, k / 4, B, 4), the
    taps of one step of k input channels contiguous; repack_constants finds it from the shapes."""
    w = np.random.default_rng(0).integers(-127, 128, (3, 3, 32, 16)).astype(np.int8)
    packed = taps_inside_array(w, 8, 16)
    assert packed.shape == (2, 3, 2, 3, 4, 8, 4)
    for ob, kh, s, kw, g, o, j in [(0, 0, 0, 0, 0, 0, 0), (1, 2, 1, 1, 3, 5, 3), (1, 0, 1, 2, 0, 7, 2)]:
        assert packed[ob, kh, s, kw, g, o, j] == w[kh, kw, 16 * s + 4 * g + j, 8 * ob + o]
    assert np.array_equal(_repacker([3, 3, 32, 16], [2, 3, 2, 3, 4, 8, 4])(w), packed)
    assert _repacker([3, 3, 32, 16], [2, 3, 3, 3, 4, 8, 4]) is None  # 48 input channels: not these


class _ResidualBlock(torch.nn.Module):
    """ResNet's basic block over 32 channels (3x3 stride-1 convs: the taps inside the c4 steps,
    the residual add fused into the second conv's epilogue), then a 3x3 stride-2 conv."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU())
        self.conv1 = torch.nn.Sequential(torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU())
        self.conv2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.down = torch.nn.Conv2d(32, 32, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.stem(x)
        return self.down(torch.relu(self.conv2(self.conv1(y)) + y))


@needs_aarch64
def test_residual_block_equals_onnx_runtime_exactly_under_cortex_a76(tmp_path):
    """The taps-inside 3x3 kernels and the residual epilogue in int32 (neon_requantize's
    read-back) on jetson-orin-nano, run under qemu -cpu cortex-a76: exactly ONNX Runtime's QDQ
    output on a random image."""
    from edgecls.artifact.execute import run_runner
    from edgecls.artifact.reference import onnx_session
    torch.manual_seed(0)
    fp32 = export_onnx(_ResidualBlock().eval(), (1, 3, 16, 16), tmp_path / "res.onnx")
    calib = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype("float32")
    qdq = tmp_path / "res_int8.onnx"
    ptq_onnx(fp32, qdq, calib, "minmax")
    art = compile_artifact(CompileRequest(model=qdq, target="jetson-orin-nano", out_dir=tmp_path / "art", tflite="no"))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_runner(art, tmp_path / "x.npy", emulate=True, output_path=tmp_path / "y.npy")
    want = onnx_session(qdq, optimize=False).run(None, {onnx_input(qdq): x})[0]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)


@pytest.mark.parametrize("vext,rext", [(64, 56), (144, 56), (576, 14), (96, 112), (512, 7), (1000, 1)])
def test_dot_tile_fits_the_register_file_without_tails(vext, rext):
    rb, nv = dot_tile("conv2d" if rext > 1 else "dense", vext, 4, rext)
    assert rext % rb == 0 and vext % (4 * nv) == 0
    assert rb * nv + rb + 4 * nv <= REGISTER_BUDGET
    assert rb * nv >= 5  # several accumulators share each load


class _Block(torch.nn.Module):
    """An RGB 3x3 conv (4 channels after padding: k = 4), a depthwise 3x3 over 32 channels, 1x1
    convs over 32, 24 and 48 channels (k = 16, 8, 16), a residual add (an 8-bit elementwise
    kernel) and a max pool over 48 channels (stride 2, padded)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(32, 32, 3, padding=1, groups=32), torch.nn.ReLU6(),
                                        torch.nn.Conv2d(32, 24, 1), torch.nn.Conv2d(24, 48, 1), torch.nn.ReLU())
        self.branch = torch.nn.Sequential(torch.nn.Conv2d(48, 48, 1), torch.nn.ReLU())
        self.pool = torch.nn.MaxPool2d(3, 2, padding=1)

    def forward(self, x):
        y = self.head(x)
        return self.pool(y + self.branch(y))


@pytest.fixture(scope="module")
def int8_block_qdq(tmp_path_factory):
    """_Block as a QDQ int8 ONNX file (ptq_onnx), 16x16 RGB input."""
    torch.manual_seed(0)
    net = _Block().eval()
    d = tmp_path_factory.mktemp("qblock")
    fp32 = export_onnx(net, (1, 3, 16, 16), d / "block.onnx")
    calib = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype("float32")
    ptq_onnx(fp32, d / "block_int8.onnx", calib, "minmax")
    return d / "block_int8.onnx"


@needs_aarch64
def test_dotprod_kernels_machine_code(int8_block_qdq, tmp_path):
    """jetson-orin-nano: the four regular convs are sdot with packed weights (no tbl, no ldr of
    4 bytes duplicated per weight row); the depthwise conv multiplies 8 int16 lanes (smlal2);
    the epilogues narrow 8 lanes at once (sqxtn2, sqxtun2) after one fcvtns per 4 lanes (no frintn +
    fcvtzs: neon_requantize.fcvtns_after_vectorize); the max pool compares 16 bytes (umax/smax)."""
    ops = _int8_kernel_ops(int8_block_qdq, "jetson-orin-nano", tmp_path / "a78.so")  # the conv kernels
    convs = {f: o for f, o in ops.items() if "sdot" in o}
    depthwise = [f for f, o in ops.items() if "conv2d" in f and "smlal2" in o]
    pools = [f for f, o in ta.kernel_mnemonics(tmp_path / "a78.so", OBJDUMP).items()
             if "max_pool" in f and f.endswith("_compute_") and o & {"umax", "smax"}]
    assert len(convs) == 4 and len(depthwise) == 1 and len(pools) == 1, ops
    assert not any(o & {"tbl", "saddlp", "sadalp"} for o in convs.values()), convs
    assert any(o & {"sqxtn2", "sqxtun2"} for o in convs.values()), convs  # sqxtun2 after a ReLU
    wide = {f: o for f, o in ops.items() if o & {"sqxtn2", "sqxtun2"}}
    assert all("fcvtns" in o and not o & {"frintn", "fcvtzs"} for o in wide.values()), wide
    import subprocess
    text = subprocess.run([OBJDUMP, "-d", str(tmp_path / "a78.so")], capture_output=True, text=True, check=True).stdout
    assert ".4b[3]" in text  # 16 input channels per step: sdot by lanes 0..3


def _prim_funcs(path, target: str):
    """(the PrimFuncs of `path` fused for `target`, its RuleTarget)."""
    import onnx

    from edgecls.compile.tvm.schedules import rule_target
    tvm = ta.load_tvm()
    model = onnx.load(str(path))
    mod = ta.import_onnx(model, model.graph.input[0].name, (1, 3, 16, 16))
    tt = ta.resolve_target(get_target(target).tvm)
    fused, _ = ta.run_graph_passes(mod, tt, "NHWC", int8=True)
    return [f for _, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)], rule_target(tt)


def _dotprod_rules():
    from edgecls.compile.tvm.schedules.neon_dot import NeonDotRule
    from edgecls.compile.tvm.schedules.neon_dot_depthwise import NeonDotDepthwiseRule
    return NeonDotRule(), NeonDotDepthwiseRule()


def test_dotprod_rules_take_their_kernels_on_dotprod_targets_only(int8_block_qdq):
    """jetson-orin-nano: the 4 regular convs and the depthwise conv; rk3399 (ARMv8.0): only the
    int16 depthwise conv (no sdot); the x86 host: none (its artifacts stay as they were). The
    8-bit pool and pads are neon_bytes' on every aarch64 target."""
    for target in ("jetson-orin-nano", "rk3399", "x86-host"):
        funcs, rt = _prim_funcs(int8_block_qdq, target)
        with rt.target:
            hits = {rule.name: sum(rule.apply(f, rt) is not None for f in funcs) for rule in _dotprod_rules()}
        if target == "jetson-orin-nano":
            assert hits["neon-dot"] == 4 and hits["neon-dot-depthwise"] == 1, hits
        elif target == "rk3399":
            assert hits["neon-dot"] == 0 and hits["neon-dot-depthwise"] == 1, hits
        else:
            assert set(hits.values()) == {0}, (target, hits)


@pytest.mark.parametrize("target", ["rk3399", "jetson-orin-nano"])
def test_depthwise_taps_read_each_kernel_rows_window_once(int8_block_qdq, target):
    """neon_dot_depthwise on both aarch64 kinds: the taps read a window buffer cached at the
    kernel-row loop (rows + 2 pixels of the padded input, 8-lane copies), not the padded input,
    so LLVM loads each pixel of a kernel row once."""
    import tvm
    import tvm_ffi

    from edgecls.compile.tvm.schedules import tir as th
    from edgecls.compile.tvm.schedules.tir import ACC_SCOPE
    funcs, rt = _prim_funcs(int8_block_qdq, target)
    rule = _dotprod_rules()[1]
    with rt.target:
        applied = [a for a in (rule.apply(f, rt) for f in funcs) if a is not None]
    assert len(applied) == 1
    func = applied[0].sch.mod["main"]
    blocks = {}

    def note(node, visitor):
        blocks[node.name_hint] = [str(th.buffer(r).name) for r in node.reads]
        visitor.default_visit(node)
    tvm_ffi.structural_visit(func.body, [(tvm.s_tir.SBlock, note)])
    update = next(reads for name, reads in blocks.items() if name.endswith("_update"))
    window = f"pad_temp_{ACC_SCOPE}"
    assert window in update and "pad_temp" not in update, blocks
    assert blocks[window] == ["pad_temp"], blocks


@pytest.mark.parametrize("target", ["rk3399", "jetson-orin-nano"])
def test_stride_one_depthwise_tile_is_one_vector_wide(int8_block_qdq, target):
    """_Block's stride-1 depthwise conv (16 pixels a row, 32 channels) gets rows x one 8-lane
    vector, 8 x 1 (the reduction rule's tile, which strided ones keep, was 4 x 2)."""
    from edgecls.compile.tvm.schedules import tir as th
    from edgecls.compile.tvm.schedules.neon_dot_depthwise import _strided
    funcs, rt = _prim_funcs(int8_block_qdq, target)
    rule = _dotprod_rules()[1]
    with rt.target:
        applied = [(f, a) for f, a in ((f, rule.apply(f, rt)) for f in funcs) if a is not None]
    assert len(applied) == 1
    func, sch = applied[0][0], applied[0][1].sch
    tvm = ta.load_tvm()
    fresh = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    conv = th.reduction_blocks(fresh)[0]
    assert not _strided(fresh, fresh.get_sblock(conv))
    update = sch.get_sblock(conv + "_update")
    assert [th.extent(sch, lp) for lp in sch.get_loops(update)[-3:]] == [8, 1, 8]


def test_dotprod_schedules_replay_from_their_traces(int8_block_qdq):
    """A tuning database stores a kernel's rule schedule as its trace: replayed on the original
    function (c4 packing and the c4 intrinsic included), it gives the same function."""
    from edgecls.compile.tvm.schedules.isa import register_intrinsics
    tvm = ta.load_tvm()
    from tvm import s_tir
    register_intrinsics()
    funcs, rt = _prim_funcs(int8_block_qdq, "jetson-orin-nano")
    replayed = 0
    with rt.target:
        for f in funcs:
            applied = _dotprod_rules()[0].apply(f, rt)
            if applied is None:
                continue
            sch = s_tir.Schedule(f)
            applied.sch.trace.apply_to_schedule(sch, remove_postproc=False)
            tvm.ir.assert_structural_equal(sch.mod, applied.sch.mod)
            replayed += 1
    assert replayed == 4


@needs_aarch64
def test_dotprod_artifact_equals_onnx_runtime_exactly_under_cortex_a76(int8_block_qdq, tmp_path):
    """The jetson-orin-nano artifact (verified at compile time under -cpu cortex-a76), run by its
    runner under qemu: exactly ONNX Runtime's QDQ output on random images."""
    from edgecls.artifact.execute import run_runner
    from edgecls.artifact.reference import onnx_session
    art = compile_artifact(CompileRequest(model=int8_block_qdq, target="jetson-orin-nano", out_dir=tmp_path / "art",
                                          tflite="no"))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_runner(art, tmp_path / "x.npy", emulate=True, output_path=tmp_path / "y.npy")
    want = onnx_session(int8_block_qdq, optimize=False).run(None, {onnx_input(int8_block_qdq): x})[0]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)


def onnx_input(path) -> str:
    import onnx
    return onnx.load(str(path)).graph.input[0].name


@needs_aarch64
@pytest.mark.slow
def test_mobilenet_v2_int8_dotprod_count_below_bound(int8_mobilenet_v2, tmp_path):  # noqa: F811
    """MobileNetV2 int8 for jetson-orin-nano, counted under qemu -cpu cortex-a76 (its TOML's
    emulator CPU): below the bound just above what the dotprod rules reach."""
    from edgecls.bench.instructions import count_artifact
    art = compile_artifact(CompileRequest(model=int8_mobilenet_v2[1], target="jetson-orin-nano",
                                          out_dir=tmp_path / "orin", tflite="no"))
    got = count_artifact(art, top=3)
    assert got.cpu == "cortex-a76"
    assert got.per_inference <= INT8_MOBILENET_V2_ORIN_MAX, got.to_dict()


@needs_aarch64
def test_bias_becomes_the_accumulators_init_on_aarch64(int8_block_qdq, tmp_path):
    """bias_init.fold_bias_into_init: the 4 regular convs of the block start their accumulators
    from their int32 bias on jetson-orin-nano (the exact run above covers the result; the
    depthwise conv, whose update reads the accumulator as a plain load, keeps its add), and on
    rk3399 its 4 smull convs (test_int8 checks their results under qemu); x86 targets keep
    their adds (scripts/model_so_hashes.py: byte-identical)."""
    import onnx
    model = onnx.load(str(int8_block_qdq))
    folded = {}
    for target in ("jetson-orin-nano", "rk3399"):
        tgt = get_target(target)
        tt = ta.resolve_target(tgt.tvm)
        fused, _ = ta.run_graph_passes(ta.import_onnx(model, model.graph.input[0].name, (1, 3, 16, 16)), tt, "NHWC",
                                       int8=True)
        folded[target] = ta.build(fused, tt, tmp_path / f"{target}.so", tgt.compiler)[1]["bias_init"]
    assert folded == {"jetson-orin-nano": 4, "rk3399": 4}, folded


def test_wide_requantize_epilogues_become_integer_on_aarch64():
    """neon_requantize at 8 and 16 lanes: fptosi.sat(roundeven) on jetson-orin-nano (dotprod)
    and on rk3399 (ARMv8.0: its 8-lane depthwise epilogues); fcvtns_after_vectorize turns it
    into fcvtns per 4 lanes once vectorized (machine code: test_dotprod_kernels_machine_code)."""
    from test_arm_counts import _requantize_module
    orin = ta.resolve_target(get_target("jetson-orin-nano").tvm)
    a72 = ta.resolve_target(get_target("rk3399").tvm)
    for lanes in (8, 16):
        mod, changed = ta.neon_requantize(_requantize_module(lanes), orin)
        text = mod.script()
        assert changed == 1 and "llvm.fptosi.sat" in text and "round" not in text.replace("roundeven", "")
        assert ta.neon_requantize(_requantize_module(lanes), a72)[1] == 1
    assert "llvm.aarch64.neon.fcvtns" in ta.neon_requantize(_requantize_module(4), orin)[0].script()


@needs_aarch64
@pytest.mark.slow
def test_resnet18_int8_dotprod_count_below_bound(tmp_path):
    """ResNet-18 int8 QDQ (ptq_onnx, 16 calibration images: counts do not depend on them) for
    jetson-orin-nano, counted under qemu -cpu cortex-a76: below the bound under issue 15's goal."""
    from edgecls.bench.instructions import count_artifact
    art = compile_artifact(CompileRequest(model=resnet18_int8_qdq(tmp_path), target="jetson-orin-nano",
                                          out_dir=tmp_path / "art", tflite="no"))
    count = count_artifact(art)
    assert count.cpu == "cortex-a76"
    assert count.per_inference <= INT8_RESNET18_ORIN_MAX, count.to_dict()
