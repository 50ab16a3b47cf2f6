"""Rule-based CPU schedules (edgecls.compile.tvm.schedules): numerics, loop kinds, fallbacks.

Small Relax graphs are built directly (NCHW, as the ONNX importer produces them) and go through
the real run_graph_passes (NHWC/HWIO conversion, legalization, fusion); scheduled and
unscheduled builds go through the real build path (build_executable) and run in-process without
linking, so the whole file takes seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.tvm import apply_default_schedules, pack_array, repack_constants, simd_lanes
from edgecls.compile.tvm.schedules import rule_target
from edgecls.compile.tvm.schedules.multi_reduction import ParallelReductionsRule
from edgecls.compile.tvm.schedules.reduction import ReductionRule, register_tile

tvm = tvm_adapter.load_tvm()
import tvm_ffi
from tvm import relax

from conftest import host_runs, needs_host_cpu, x86_target

# Compiled for an explicit AVX2 CPU, never the host's (its lanes would decide the schedules), and
# run only on a host that can execute that code.
TARGET = tvm_adapter.resolve_target(x86_target("znver3"))
pytestmark = needs_host_cpu("znver3")
ATOL = 1e-4


def _run(mod, x: np.ndarray, schedules: bool, target_dict: dict = TARGET) -> np.ndarray:
    """Build as `compile` does (build_executable: rule schedules, packed weights, the CPU
    pipeline), keep the executable in memory and run it."""
    executable, _ = tvm_adapter.build_executable(mod, target_dict, schedules=schedules)
    return tvm_adapter.load_executable(executable)(x)


def _conv_net(cin, hw, cout, k, stride=1, groups=1, epilogue=(), seed=0):
    """x -> conv2d (NCHW/OIHW) -> epilogue ops -> out, weights as constants."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, cin, hw, hw), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = rng.standard_normal((cout, cin // groups, k, k)).astype("float32") * 0.2
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=k // 2,
                                           groups=groups))
            for op in epilogue:
                if op == "bias":
                    b = rng.standard_normal((1, cout, 1, 1)).astype("float32")
                    y = bb.emit(relax.op.add(y, relax.const(b)))
                elif op == "relu6":  # how edgecls imports Clip(0, 6): max then min
                    y = bb.emit(relax.op.maximum(y, relax.const(0.0, "float32")))
                    y = bb.emit(relax.op.minimum(y, relax.const(6.0, "float32")))
                elif op == "residual":
                    y = bb.emit(relax.op.add(y, x))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _dense_net(k, n, seed=0):
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, k), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            w = rng.standard_normal((k, n)).astype("float32") * 0.1
            b = rng.standard_normal((n,)).astype("float32")
            y = bb.emit(relax.op.matmul(x, relax.const(w)))
            y = bb.emit(relax.op.maximum(relax.op.add(y, relax.const(b)), relax.const(0.0, "float32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _fused(mod, layout="NHWC"):
    fused, _ = tvm_adapter.run_graph_passes(mod, TARGET, layout=layout)
    return fused


def _for_kinds(func) -> set[str]:
    kinds = set()

    def visit(node):
        kinds.add(tvm.tirx.ForKind(int(node.kind)).name)

    tvm_ffi.structural_walk(func.body, (tvm.tirx.For, visit), order="post")
    return kinds


def _loops_of_kind(func, kind: str) -> list:
    """The func's For loops of one ForKind ("PARALLEL", "VECTORIZED"...), outermost first."""
    loops = []

    def visit(node):
        if tvm.tirx.ForKind(int(node.kind)).name == kind:
            loops.append(node)

    tvm_ffi.structural_walk(func.body, (tvm.tirx.For, visit), order="pre")
    return loops


CONVS = {
    # name: (cin, hw, cout, k, stride, groups, epilogue, expected stats key)
    "3x3_s1_bias_relu6": (8, 12, 16, 3, 1, 1, ("bias", "relu6"), "conv2d"),
    "3x3_s2_bias_relu6": (8, 13, 24, 3, 2, 1, ("bias", "relu6"), "conv2d"),
    "3x3_s1_residual": (16, 10, 16, 3, 1, 1, ("bias", "residual"), "conv2d"),
    "1x1_pointwise_residual": (16, 14, 16, 1, 1, 1, ("bias", "residual"), "conv2d"),
    "1x1_pointwise_plain": (24, 7, 40, 1, 1, 1, (), "conv2d"),
    "depthwise_s1_relu6": (32, 14, 32, 3, 1, 32, ("bias", "relu6"), "depthwise"),
    "depthwise_s2_relu6": (24, 15, 24, 3, 2, 24, ("bias", "relu6"), "depthwise"),
    "odd_channels_7x7": (3, 11, 10, 7, 2, 1, ("bias",), "conv2d"),  # no even vector split
    "1x1_prime_rows_13x13": (64, 13, 40, 1, 1, 1, ("bias",), "conv2d"),  # one row: 5 vectors
}


@pytest.mark.parametrize("name", list(CONVS))
def test_scheduled_conv_matches_unscheduled(name):
    cin, hw, cout, k, stride, groups, epilogue, key = CONVS[name]
    fused = _fused(_conv_net(cin, hw, cout, k, stride, groups, epilogue))
    _, stats = apply_default_schedules(fused, TARGET)
    assert stats[key] == 1 and stats["unscheduled"] == 0, stats
    x = np.random.default_rng(1).standard_normal((1, cin, hw, hw)).astype("float32")
    np.testing.assert_allclose(_run(fused, x, True), _run(fused, x, False), atol=ATOL, rtol=0)


def test_prime_rows_take_their_accumulators_from_the_vectors():
    """A 13-pixel row has no register tile of 2..12 rows: the vectors make the accumulators
    (SqueezeNet's 512->1000 1x1 conv at 13x13: 2 -> 5 accumulators, 10.9 -> 3.4 ms); rows with a
    divisor keep their tile."""
    assert register_tile(1000, 8, 13, False) == (1, 5) == register_tile(1000, 8, 1, False)
    assert register_tile(40, 8, 13, False) == (1, 5)
    assert register_tile(64, 8, 14, False) == (7, 1) and register_tile(64, 8, 7, False) == (7, 1)


def test_scheduled_dense_matches_unscheduled():
    fused = _fused(_dense_net(96, 40), layout=None)
    _, stats = apply_default_schedules(fused, TARGET)
    assert stats["dense"] == 1, stats
    x = np.random.default_rng(2).standard_normal((1, 96)).astype("float32")
    np.testing.assert_allclose(_run(fused, x, True), _run(fused, x, False), atol=ATOL, rtol=0)


@pytest.mark.parametrize("cpu", ["znver3", "skylake-avx512"])
@pytest.mark.parametrize("net", ["conv", "dense"])
def test_weights_are_packed_per_register_tile(net, cpu):
    """conv2d/dense weights become (O/B, ..., B) constants, B the tile's channels, whole vectors of
    the CPU's fp32 lanes (AVX2 8, AVX-512 16) or of half of them where the lanes do not divide the
    output channels (1000 classes on AVX-512: vectors of 8); same results where the host runs it."""
    target = tvm_adapter.resolve_target(x86_target(cpu))
    fused = _fused(_conv_net(16, 9, 64, 3, 1, 1, ("bias",))) if net == "conv" else \
        _fused(_dense_net(64, 1000), layout=None)
    scheduled, _ = apply_default_schedules(fused, target)
    packed, n = repack_constants(scheduled)
    assert n == 1
    kernel = next(f for gv, f in packed.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc) and ("conv" in gv.name_hint or "matmul" in gv.name_hint))
    shape = [int(d) for d in kernel.params[1].shape]
    out_channels = 64 if net == "conv" else 1000
    lanes = simd_lanes(target)
    assert lanes == (16 if "avx512" in cpu else 8)
    vector = lanes if out_channels % lanes == 0 else lanes // 2
    assert len(shape) == (5 if net == "conv" else 3) and shape[-1] % vector == 0 and \
        shape[0] * shape[-1] == out_channels, shape
    if host_runs(cpu):
        shape_in = (1, 16, 9, 9) if net == "conv" else (1, 64)
        x = np.random.default_rng(4).standard_normal(shape_in).astype("float32")
        np.testing.assert_allclose(_run(fused, x, True, target), _run(fused, x, False, target), atol=ATOL, rtol=0)


def test_pack_array_layout():
    w = np.arange(2 * 3 * 16).reshape(2, 3, 16)
    p = pack_array(w, 8)
    assert p.shape == (2, 2, 3, 8) and p[1, 0, 2, 5] == w[0, 2, 13]


def test_scheduled_nchw_conv_gets_the_parallel_rule_and_stays_correct():
    """An NCHW conv (--layout NCHW): no operand is contiguous along the output's innermost axis
    (the width), so the reduction rule does not apply (its vector loads would be gathers) and the
    next rule of the table, parallel loops only, schedules it; still exact."""
    fused = _fused(_conv_net(8, 16, 16, 3, 1, 1, ("bias", "relu6")), layout=None)
    gvar, conv = next((gv, f) for gv, f in fused.functions_items()
                      if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint)
    target = rule_target(TARGET)
    assert ReductionRule().apply(conv, target) is None
    assert ParallelReductionsRule().apply(conv, target).kind == "generic"
    scheduled, stats = apply_default_schedules(fused, TARGET)
    assert stats["conv2d"] == 0 and stats["generic"] >= 1 and stats["unscheduled"] == 0, stats
    assert "PARALLEL" in _for_kinds(scheduled[gvar]) and "PARALLEL" not in _for_kinds(conv)
    x = np.random.default_rng(3).standard_normal((1, 8, 16, 16)).astype("float32")
    np.testing.assert_allclose(_run(fused, x, True), _run(fused, x, False), atol=ATOL, rtol=0)


def test_conv_kernels_are_parallel_vectorized_and_register_tiled():
    fused = _fused(_conv_net(32, 28, 64, 3, 1, 1, ("bias", "relu6")))
    scheduled, _ = apply_default_schedules(fused, TARGET)
    convs = [(gv.name_hint, f) for gv, f in scheduled.functions_items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert convs
    for name, func in convs:
        kinds = _for_kinds(func)
        assert {"PARALLEL", "VECTORIZED", "UNROLLED"} <= kinds, (name, kinds)
        assert int(func.attrs["tirx.is_scheduled"]) == 1
        # The accumulator tile is a stack array in the parallel body (an alloca LLVM keeps in
        # registers), not a TVMBackendAllocWorkspace call per tile: only the padded input is.
        ll = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                            target=tvm.target.Target(TARGET)).inspect_source("ll")
        assert ll.count("call ptr %") + ll.count("tail call ptr %") >= 1  # the pad buffer
        tile_allocs = [ln for ln in ll.splitlines() if "_intermediate" in ln and "AllocWorkspace" not in ln
                       and "= tail call ptr %" in ln]
        assert not tile_allocs, tile_allocs
        assert " alloca [" in ll or " alloca <" in ll, "no stack tile"
    # the input module is not modified in place
    for gv, func in fused.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            assert "PARALLEL" not in _for_kinds(func)


def test_unrecognised_and_already_scheduled_functions_are_left_intact():
    from tvm import te
    a = te.placeholder((8, 8), name="a")
    k0, k1 = te.reduce_axis((0, 8)), te.reduce_axis((0, 8))
    total = te.compute((), lambda: te.sum(a[k0, k1], axis=[k0, k1]), name="total")
    scalar_sum = te.create_prim_func([a, total])  # a scalar reduction: no rule applies
    done = scalar_sum.with_attr("tirx.is_scheduled", tvm.tirx.IntImm("int32", 1))
    mod = tvm.IRModule({"scalar_sum": scalar_sum, "done": done})
    new, stats = apply_default_schedules(mod, TARGET)
    assert stats["unscheduled"] == 1 and stats["skipped_already_scheduled"] == 1, stats
    tvm.ir.assert_structural_equal(new["scalar_sum"], scalar_sum)
    tvm.ir.assert_structural_equal(new["done"], done)
    # a second pass over a scheduled module touches nothing
    conv = _fused(_conv_net(8, 8, 16, 1))
    once, _ = apply_default_schedules(conv, TARGET)
    _, stats2 = apply_default_schedules(once, TARGET)
    n_funcs = sum(isinstance(f, tvm.tirx.PrimFunc) for _, f in once.functions_items())
    assert stats2["skipped_already_scheduled"] == n_funcs


def test_simd_lanes_from_target():
    assert simd_lanes({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                       "mattr": ["+neon"]}) == 4
    assert simd_lanes({"kind": "llvm", "mcpu": "skylake-avx512"}) == 16
    assert simd_lanes({"kind": "llvm", "mcpu": "znver3"}) == 8


def test_digits_cnn_scheduled_matches_torch_and_unscheduled(tmp_path):
    import onnx

    from edgecls.models import DigitsCNN
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BN, so folded biases are real epilogues
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5
    x = torch.randn(1, 3, 32, 32, generator=g)
    path = tmp_path / "digits.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    om = onnx.load(str(path))
    fused = _fused(tvm_adapter.import_onnx(om, om.graph.input[0].name, (1, 3, 32, 32)))
    _, stats = apply_default_schedules(fused, TARGET)
    assert stats["conv2d"] >= 3 and stats["depthwise"] == 1 and stats["dense"] == 1, stats
    assert stats["unscheduled"] == 0, stats
    with torch.no_grad():
        ref = model(x).numpy()
    got = _run(fused, x.numpy(), True)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got, _run(fused, x.numpy(), False), atol=ATOL, rtol=0)


def test_narrow_rows_get_whole_vectors_and_a_tail():
    """NCHW image -> pad -> NHWC (the int8 stem's input step): 3 channels, rows of 102 = 12
    vectors of 8 and a tail of 6. The row is vectorized at 8 lanes with the tail in a loop of its
    own (not at 2 lanes, the widest that divides 102), and the result is exact."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 100, 100), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], pad_value=0.5))
            out = bb.emit_output(relax.op.permute_dims(y, [0, 2, 3, 1]))
        bb.emit_func_output(out)
    fused = _fused(bb.get(), layout=None)
    scheduled, stats = apply_default_schedules(fused, TARGET)
    assert stats["generic"] == 1 and stats["unscheduled"] == 0, stats
    func = next(f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc))
    lanes = {int(loop.extent) for loop in _loops_of_kind(func, "VECTORIZED")}
    assert lanes == {simd_lanes(TARGET)} and "PARALLEL" in _for_kinds(func), (lanes, func)
    # The padding is a fill of the pad value, then the interior without a bounds check: a
    # select whose condition varies across lanes would be scalarized.
    assert "if_then_else" not in func.script(), func
    img = np.random.default_rng(4).standard_normal((1, 3, 100, 100)).astype("float32")
    want = np.pad(img, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=0.5).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(_run(fused, img, True), want)


@pytest.mark.parametrize("cin,cout,channels_outermost", [(8, 16, False), (128, 160, False), (256, 256, True)])
def test_threads_split_a_small_weight_conv_by_rows(cin, cout, channels_outermost):
    """On x86 a conv whose weight fits a core's own L2 (8x16x3x3 floats, 4.6 KB; 128x160x3x3,
    737 KB; up to reduction.X86_OWN_WEIGHT_SLICE_BYTES) splits its threads' work by rows (the
    output channel block innermost in the parallel loop), as the depthwise conv that reads it
    does; a larger weight (256x256x3x3, 2.4 MB) keeps the channel block outermost, one weight
    slice per thread. All stay exact."""
    fused = _fused(_conv_net(cin, 14, cout, 3, 1, 1, ("bias",)))
    scheduled, _ = apply_default_schedules(fused, TARGET)
    conv = next(f for gv, f in scheduled.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint)
    tiles = str(_loops_of_kind(conv, "PARALLEL")[-1].loop_var)  # after the pad stage's loop, if any
    assert tiles.startswith("ff_0") == channels_outermost and "ff_0" in tiles, tiles
    x = np.random.default_rng(5).standard_normal((1, cin, 14, 14)).astype("float32")
    np.testing.assert_allclose(_run(fused, x, True), _run(fused, x, False), atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("cpu,cin,tile_channels", [("skylake-avx512", 64, 32), ("skylake-avx512", 3, 16),
                                                   ("znver3", 64, 8)])
def test_avx512_conv_tiles_use_the_32_registers(cpu, cin, tile_channels):
    """On AVX-512 (32 vector registers) a conv2d that reads its own padding stage gets up to
    reduction.AVX512_MAX_ACCUMULATORS accumulators: a 7x7 map of 64 channels takes 7 rows x 2
    vectors (14; AVX2's 12 left 7 x 1), so its packed weight blocks are 32 channels wide. A
    stem over RGB (padding inlined) and AVX2 keep the 12. Exact where the host runs it."""
    target = tvm_adapter.resolve_target(x86_target(cpu))
    fused = _fused(_conv_net(cin, 7, 64, 3, 1, 1, ("bias",)))
    scheduled, _ = apply_default_schedules(fused, target)
    packed, _ = repack_constants(scheduled)
    conv = next(f for gv, f in packed.functions_items()
                if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint)
    assert int(conv.params[1].shape[-1]) == tile_channels, conv.params[1].shape
    if host_runs(cpu):
        x = np.random.default_rng(6).standard_normal((1, cin, 7, 7)).astype("float32")
        np.testing.assert_allclose(_run(fused, x, True, target), _run(fused, x, False, target),
                                   atol=1e-3, rtol=1e-5)
