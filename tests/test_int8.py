"""Integer compute for QDQ int8 models (edgecls.compile.tvm.quant): real ORT-quantized digits demo,
the rewrite checked on the IR, then a real x86 build compared with ONNX Runtime's exact QDQ
semantics (graph optimisations off) over the validation split. The widening multiply-accumulate
kernels (schedules/widening_int8.py) are checked bit for bit against the plain integer rule, on x86 and
on rk3399 under qemu, and in the machine code they compile to.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from conftest import host_runs, needs_aarch64, needs_host_cpu, x86_target
from edgecls.artifact.execute import run_runner
from edgecls.artifact.reference import onnx_session
from edgecls.compile import tvm as ta
from edgecls.compile.tvm import int8_summary, quantize_int8
from edgecls.pipeline import CompileRequest, compile_artifact
from edgecls.data import digits_dataset, split
from edgecls.optimize.quantize import ptq_onnx
from edgecls.targets import get_target

SHAPE = (1, 3, 32, 32)
# The x86 builds whose machine code is checked are compiled for an AVX2 CPU, whatever the host is
# (the widening intrinsics are AVX2's); they run only on a host that has AVX2.
AVX2 = "znver3"
needs_avx2 = needs_host_cpu(AVX2)


@pytest.fixture(scope="module")
def val(demo):
    return np.load(demo.val_x), np.load(demo.val_y)


@pytest.fixture(scope="module", params=["uint8", "int8"])
def qdq(request, demo, tmp_path_factory):
    """(QDQ file, its output QuantizeLinear scale): uint8 activations with zero points (ORT's
    x86 default, U8S8) and int8 symmetric ones (S8S8, ReLUs wrapped in their own QDQ pair)."""
    calib = split(digits_dataset())[1].x
    path = tmp_path_factory.mktemp("int8") / f"digits.{request.param}.onnx"
    ptq_onnx(demo.onnx, path, calib, "minmax", activation_type=request.param)
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    last_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"][-1]
    scale = float(onnx.numpy_helper.to_array(inits[last_q.input[1]]))
    return path, scale


def _import(path):
    model = onnx.load(str(path))
    return ta.import_onnx(model, model.graph.input[0].name, SHAPE)


def test_rewrite_keeps_int8_weights_and_int32_products(qdq):
    before = int8_summary(_import(qdq[0]))
    assert before["ops"] == {"conv2d_float32": 5, "matmul_float32": 1}
    stats: dict = {}
    mod = quantize_int8(_import(qdq[0]), stats)
    assert (stats["conv2d"], stats["matmul"], stats["skipped"]) == (5, 1, 0), stats
    after = int8_summary(mod)
    assert after["ops"] == {"conv2d_int32": 5, "matmul_int32": 1}  # no float conv/matmul left
    b = after["const_bytes"]
    # Every weight stays an int8 constant (DigitsCNN: 176,800 weights); float constants are only
    # per-channel multipliers/scalars, int32 only per-channel biases.
    assert 176_800 <= b["int8"] <= before["const_bytes"]["int8"]
    assert b.get("float32", 0) < 4 * 1000 and b.get("int32", 0) < 4 * 1000
    # Nothing float is computed by the conv chain: after FoldConstant too, no float32 weight.
    tt = ta.resolve_target(get_target("x86-host").tvm)
    with ta.target(tt):
        folded = ta.load_tvm().relax.transform.FoldConstant()(mod)
    assert int8_summary(folded)["const_bytes"].get("float32", 0) < 4 * 1000
    # Regular convs and the matmul read int16(x_q) - z_x (the widening kernels' input); the
    # depthwise conv keeps the 8-bit input. The RGB conv got a zero 4th channel to pair up.
    relax = ta.load_tvm().relax
    inputs = []
    relax.analysis.post_order_visit(mod["main"], lambda e: inputs.append(
        (e.op.name, str(e.args[0].ty.dtype), int(e.args[1].ty.shape[1]), int(e.attrs.groups) if "conv" in e.op.name
         else 1)) if isinstance(e, relax.Call) and getattr(e.op, "name", "") in ("relax.nn.conv2d", "relax.matmul") else None)
    act = qdq[0].name.split(".")[-2]
    assert sorted(dt for _, dt, _, g in inputs if g == 1) == ["int16"] * 5
    assert [dt for _, dt, _, g in inputs if g > 1] == [act]
    assert inputs[0][:3] == ("relax.nn.conv2d", "int16", 4)
    # 8-bit kernels: AVX2 byte pairs with ptq_onnx's 7-bit weights take uint8 inputs (int8 ones
    # shifted by 128), ARM sdot int8 ones (uint8 shifted by -128); input channels in fours, except
    # sdot's RGB conv, whose whole 3x3x3 kernel folds into 32 channels (quant.column_fold).
    for eight_bit, dtype, rgb in (("u8", "uint8", 4), ("s8", "int8", 32)):
        inputs.clear()
        relax.analysis.post_order_visit(quantize_int8(_import(qdq[0]), eight_bit=eight_bit)["main"], lambda e: inputs.append(
            (str(e.args[0].ty.dtype), int(e.args[1].ty.shape[1]), int(e.attrs.groups) if "conv" in e.op.name else 1))
            if isinstance(e, relax.Call) and getattr(e.op, "name", "") in ("relax.nn.conv2d", "relax.matmul") else None)
        assert sorted(dt for dt, _, g in inputs if g == 1) == [dtype] * 5 and inputs[0][:2] == (dtype, rgb)


@pytest.fixture(scope="module")
def builds(qdq, tmp_path_factory):
    """Builds of the QDQ file through the real pipeline passes (NHWC, rule schedules): True the
    integer kernels, False the float QDQ graph, "plain" the integer kernels without the widening
    intrinsics (the rule widening_int8 refines). Compiled for AVX2 (AVX2 above)."""
    tgt = get_target("x86-host")
    tt = ta.resolve_target(x86_target(AVX2))
    out = {}
    for key, int8 in ((True, True), (False, False), ("plain", True)):
        fused, records = ta.run_graph_passes(_import(qdq[0]), tt, "NHWC", int8=int8)
        assert (records[0].name == "QuantizeInt8") == int8
        lib = tmp_path_factory.mktemp("lib") / f"int8-{key}.so"
        if key == "plain":
            with ta.widening_disabled():
                _, sched = ta.build(fused, tt, lib, tgt.compiler)
        else:
            _, sched = ta.build(fused, tt, lib, tgt.compiler)
        out[key] = {"lib": lib, "sched": sched, "kernels": ta.kernel_stats(fused)}
    return out


@needs_avx2
def test_int8_build_matches_onnxruntime(qdq, builds, val, demo):
    path, out_scale = qdq
    x, y = val
    sess = onnx_session(path, optimize=False)  # exact QDQ semantics
    name = sess.get_inputs()[0].name
    ref = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    got = ta.run_host_library(builds[True]["lib"], x)
    assert got.shape == ref.shape
    assert float((got.argmax(1) == y).mean()) == float((ref.argmax(1) == y).mean())
    # ... and within a point of the fp32 model's top-1.
    fp32 = onnx_session(demo.onnx)
    logits = np.concatenate([fp32.run(None, {fp32.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])
    top1_fp32 = float((logits.argmax(1) == y).mean())
    assert abs(float((got.argmax(1) == y).mean()) - top1_fp32) <= 0.01
    assert float((got.argmax(1) == ref.argmax(1)).mean()) >= 0.99
    # Integer accumulation is exact where ORT's float one rounds: a tie may land one step over.
    diff = np.abs(got - ref)
    assert diff.max() <= 2 * out_scale + 1e-6, (diff.max(), out_scale)
    assert float((diff > 1e-6).mean()) < 0.01


def test_int8_kernels_fuse_schedule_and_shrink(builds):
    i8, f = builds[True], builds[False]
    k = i8["kernels"]
    assert k["conv_kernels"] == 5 and k["fused_conv_kernels"] == 5 and k["unfused_epilogues"] == 0
    assert k["dense_kernels"] == 1
    # The rule schedules recognise the int32-accumulating kernels like the float ones.
    assert (i8["sched"]["conv2d"], i8["sched"]["depthwise"], i8["sched"]["dense"]) == (4, 1, 1)
    assert i8["sched"]["unscheduled"] <= f["sched"]["unscheduled"]
    # Weights stay int8 in the library: well under half the float build.
    assert i8["lib"].stat().st_size < 0.5 * f["lib"].stat().st_size


# --------------------------------------------------------------------------- widening kernels

# DigitsCNN's integer kernels: 4 regular conv2d, 1 depthwise and the classifier matmul. The
# intrinsic takes the 4 convs (the first one's 3 RGB channels padded to 4 by quant.int8), not the
# depthwise (no input-channel reduction), not the matmul (10 classes: vectors of 2, not 8 or 4).
WIDENED = 4


@needs_avx2
def test_widening_kernels_are_bit_exact_on_x86(builds, val):
    x = val[0]
    got = ta.run_host_library(builds[True]["lib"], x)
    want = ta.run_host_library(builds["plain"]["lib"], x)
    assert np.array_equal(got, want)  # integer accumulation: no tolerance
    # Same kernels, same rule: the intrinsic only replaces the innermost step.
    assert builds[True]["sched"] == builds["plain"]["sched"]


def test_widening_kernels_compile_to_byte_pairs_for_7bit_weights(builds):
    """ptq_onnx's weights are 7-bit (reduce_range): on AVX2 every widened kernel multiplies byte
    pairs (vpmaddubsw: u8 x s8, exact for |w| <= 64) and sums them by vpmaddwd; the 4 activation
    bytes are one 32-bit broadcast (vpbroadcastd). LLVM never emits vpmaddubsw for the plain
    rule (it saturates), nor int16 pairs (its vpmaddwd are on dwords)."""
    widened = ta.widened_kernels(builds[True]["lib"], "avx2", extra=("vpmaddubsw", "vpbroadcastd"))
    assert len(widened) == WIDENED, widened
    assert not ta.widened_kernels(builds["plain"]["lib"], "avx2")


def test_full_range_weights_get_exact_int16_pairs(demo, val, tmp_path):
    """Weights beyond [-64, 64] (reduce_range off) would saturate vpmaddubsw's int16 pair sums:
    those kernels read int16(x_q) - z_x and multiply int16 pairs (vpmaddwd), bit-exact against
    the plain integer rule, with no vpmaddubsw anywhere."""
    path = tmp_path / "full.onnx"
    ptq_onnx(demo.onnx, path, split(digits_dataset())[1].x, "minmax", reduce_range=False)
    tgt = get_target("x86-host")
    tt = ta.resolve_target(x86_target(AVX2))
    fused, _ = ta.run_graph_passes(_import(path), tt, "NHWC", int8=True)
    libs = {k: tmp_path / f"{k}.so" for k in ("widened", "plain")}
    ta.build(fused, tt, libs["widened"], tgt.compiler)
    with ta.widening_disabled():
        ta.build(fused, tt, libs["plain"], tgt.compiler)
    widened = ta.widened_kernels(libs["widened"], "avx2", extra=("vpmovsxbw", "vpbroadcastd"))
    assert len(widened) == WIDENED, widened
    assert not any("vpmaddubsw" in ops for ops in ta.kernel_mnemonics(libs["widened"]).values())
    if not host_runs(AVX2):
        pytest.skip(f"machine code checked; this host's CPU cannot run code built for {AVX2}")
    x = val[0][:100]
    assert np.array_equal(ta.run_host_library(libs["widened"], x), ta.run_host_library(libs["plain"], x))


def test_widening_isa_follows_the_target():
    tvm = ta.load_tvm()
    assert ta.widening_isa(4) == "neon"  # NEON targets (all aarch64 in edgecls/builtin_targets/)
    with tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}):
        assert ta.widening_isa(8) == "neon"
    with tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"}):  # SSE2 only: no vpmaddwd ymm
        assert ta.widening_isa(8) is None
    with tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}):
        assert ta.widening_isa(8) == "avx2"


@needs_aarch64
@needs_avx2
@pytest.mark.parametrize("target", ["rk3399", "jetson-orin-nano"])
def test_arm_widening_build_matches_x86_under_qemu(qdq, builds, val, tmp_path, target):
    """The rk3399 artifact (A72, ARMv8.0 NEON: smull on int8 lanes, the RGB conv's kernel folded
    into channels for it) and the Orin one (A78, ARMv8.2 dotprod: sdot on int8), each run by its own
    runner under qemu, give the x86 build's outputs exactly."""
    art = compile_artifact(CompileRequest(model=qdq[0], target=target, out_dir=tmp_path / "art",
                                          integer_kernels=True, tflite="no"))
    x = val[0][:3]
    want = ta.run_host_library(builds[True]["lib"], x)
    for i in range(len(x)):
        np.save(tmp_path / "x.npy", x[i:i + 1])
        run_runner(art, tmp_path / "x.npy", emulate=True, output_path=tmp_path / "y.npy")
        assert np.array_equal(np.load(tmp_path / "y.npy"), want[i:i + 1])
    # A72: the int8 activation (uint8 shifted by -128) times the weight block transposed by ld4
    # (smull, saddlp, addp; sadalp for a second chunk of 16); the RGB conv too, its 3 channels x
    # kernel taps folded into channels (quant.column_fold), so none is left on the int16 pairs.
    # A78: sdot of the int8 activation and the transposed weight rows.
    def widened(*marks):
        return ta.widened_kernels(art / "model.so", "neon", "aarch64-linux-gnu-objdump", extra=marks)
    if target == "rk3399":
        mull = widened("ld4", "saddlp")
        assert len(mull) == WIDENED and not set(widened("sadalp")) - set(mull), mull
    else:
        assert len(widened("sdot")) == WIDENED, widened("sdot")


def test_tune_integer_kernels_then_compile_replays_them(qdq, builds, val, tmp_path):
    """On a CPU target integer kernels are the default: `tune` tunes the int32-accumulating
    kernels (the zero-trial widening record is each one's baseline) and `compile` replays every
    record: integer results equal the zero-trial build's exactly, whatever schedule won."""
    from edgecls.compile.tune import TuneRequest, tune_model
    summary = tune_model(TuneRequest(model=qdq[0], target="x86-host", trials=16, db_dir=tmp_path / "db"))
    convs = [t for t in summary["tasks"] if "conv2d" in t["name"]]
    assert len(convs) == 5 and all(t["zero_trial_ms"] and t["best_ms"] <= t["zero_trial_ms"] for t in convs)
    art = compile_artifact(CompileRequest(model=qdq[0], target="x86-host", out_dir=tmp_path / "art",
                                          tflite="no", tuning_db=tmp_path / "db"))
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["options"]["integer_kernels"] is True
    tuning = manifest["stats"]["tuning"]
    assert tuning["hit"] == tuning["tasks"] == len(summary["tasks"]) and tuning["missed"] == 0
    x = val[0][:50]
    assert np.array_equal(ta.run_host_library(art / "model.so", x), ta.run_host_library(builds[True]["lib"], x))


def test_bias_beyond_int32_is_added_in_float(tmp_path):
    """A channel whose weights are ~0 (pruned, dead) has a tiny weight scale, so its bias in
    accumulator steps overflows int32 (ORT keeps such a bias in float). The conv stays integer,
    that bias is added after the multiplier, and the result matches ORT's QDQ reference."""
    import torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 8 * 8, 10)).eval()
    with torch.no_grad():
        net[0].weight[5] *= 1e-7
        net[0].bias[5] = 2.0
    fp32, qdq = tmp_path / "dead.onnx", tmp_path / "dead.int8.onnx"
    torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), str(fp32), dynamo=True, external_data=False, verbose=False)
    calib = np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)
    ptq_onnx(fp32, qdq, calib, "minmax")
    model = onnx.load(str(qdq))
    stats: dict = {}
    quantize_int8(ta.import_onnx(model, model.graph.input[0].name, (1, 3, 8, 8)), stats)
    assert (stats["conv2d"], stats["matmul"], stats["skipped"]) == (1, 1, 0), stats
    tgt = get_target("x86-host")
    tt = ta.resolve_target(tgt.tvm)
    fused, _ = ta.run_graph_passes(ta.import_onnx(model, model.graph.input[0].name, (1, 3, 8, 8)), tt, "NHWC",
                                   int8=True)
    ta.build(fused, tt, tmp_path / "dead.so", tgt.compiler)
    _assert_within_two_steps_of_ort(qdq, tmp_path / "dead.so", (8, 3, 8, 8))


def _assert_within_two_steps_of_ort(qdq, lib, shape):
    """A build's outputs over 8 random inputs vs ORT's QDQ reference (graph optimisations off):
    within two steps of the output quantizer (float ties may round either way)."""
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    _assert_outputs_within_two_steps(qdq, x, ta.run_host_library(lib, x))


def _assert_outputs_within_two_steps(qdq, x, got):
    """`got`, the outputs of a build of `qdq` for the inputs `x`, within two steps of the output
    quantizer of ORT's QDQ reference (graph optimisations off)."""
    model = onnx.load(str(qdq))
    ref = onnx_session(qdq, optimize=False)
    want = np.concatenate([ref.run(None, {ref.get_inputs()[0].name: x[i:i + 1]})[0] for i in range(len(x))])
    last_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"][-1]
    step = float(onnx.numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == last_q.input[1])))
    assert np.abs(got - want).max() <= 2 * step + 1e-6


class _ResidualPoolNet(__import__("torch").nn.Module):
    """conv -> max pool -> residual block (conv + add) -> classifier: ORT wraps the add and the
    pool in their own QDQ pairs."""

    def __init__(self):
        import torch
        super().__init__()
        self.stem, self.pool = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.MaxPool2d(3, 2, 1)
        self.conv, self.fc = torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Linear(8, 10)

    def forward(self, x):
        y = self.pool(self.stem(x).relu())
        y = (self.conv(y) + y).relu()
        return self.fc(y.mean((2, 3)))


def _residual_pool_qdq(tmp_path):
    """_ResidualPoolNet (seeded) as a QDQ int8 ONNX file (ptq_onnx), 16x16 RGB input."""
    import torch
    torch.manual_seed(0)
    fp32, qdq = tmp_path / "res.onnx", tmp_path / "res.int8.onnx"
    torch.onnx.export(_ResidualPoolNet().eval(), (torch.zeros(1, 3, 16, 16),), str(fp32), dynamo=True,
                      external_data=False, verbose=False)
    ptq_onnx(fp32, qdq, np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32), "minmax")
    return qdq


def test_residual_add_and_max_pool_run_on_quantized_nhwc_tensors(tmp_path):
    """The QDQ add and max pool become integer/elementwise ops (quant/elementwise.py): in an
    NHWC build no transpose is left between the convs, and results match ORT's QDQ reference."""
    qdq = _residual_pool_qdq(tmp_path)
    model = onnx.load(str(qdq))
    stats: dict = {}
    quantize_int8(ta.import_onnx(model, model.graph.input[0].name, (1, 3, 16, 16)), stats)
    assert (stats["conv2d"], stats["add"], stats["max_pool"], stats["skipped"]) == (2, 1, 1, 0), stats
    tgt = get_target("x86-host")
    tt = ta.resolve_target(tgt.tvm)
    fused, _ = ta.run_graph_passes(ta.import_onnx(model, model.graph.input[0].name, (1, 3, 16, 16)), tt, "NHWC",
                                   int8=True)
    calls = [ln for ln in fused["main"].script().splitlines() if "call_tir" in ln]
    # The input's NCHW -> NHWC (with its quantize) and the last dequantize before the float mean.
    assert sum("transpose" in ln for ln in calls) == 2, calls
    ta.build(fused, tt, tmp_path / "res.so", tgt.compiler)
    _assert_within_two_steps_of_ort(qdq, tmp_path / "res.so", (8, 3, 16, 16))


@needs_aarch64
@pytest.mark.parametrize("target", ["rk3399", "jetson-orin-nano"])
def test_global_average_pool_reads_nhwc_on_aarch64(tmp_path, target):
    """On aarch64 the dequantize before the global average pool becomes layout-free float ops
    (quant/elementwise.py), so the last conv's NHWC output is not transposed back for it (x86
    keeps the pinned dequantize and its transpose: the test above); the artifact, run by its
    runner under qemu on the target's CPU model, stays within two output steps of ORT's QDQ
    reference."""
    qdq = _residual_pool_qdq(tmp_path)
    model = onnx.load(str(qdq))
    tt = ta.resolve_target(get_target(target).tvm)
    fused, _ = ta.run_graph_passes(ta.import_onnx(model, model.graph.input[0].name, (1, 3, 16, 16)), tt, "NHWC",
                                   int8=True)
    calls = [ln for ln in fused["main"].script().splitlines() if "call_tir" in ln]
    # x86 (the test above): fused_transpose_dequantize of the last conv's output, then the mean
    assert not [ln for ln in calls if "transpose" in ln and "dequantize" in ln], calls
    assert [ln for ln in calls if "fused_mean_quantize" in ln], calls
    art = compile_artifact(CompileRequest(model=qdq, target=target, out_dir=tmp_path / "art", tflite="no"))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_runner(art, tmp_path / "x.npy", emulate=True, output_path=tmp_path / "y.npy")
    _assert_outputs_within_two_steps(qdq, x, np.load(tmp_path / "y.npy"))
