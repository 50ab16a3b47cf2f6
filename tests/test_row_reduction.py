"""The row-reduction rule: softmax and LayerNorm kernels are taken (rows parallel, reductions and
elementwise steps vectorized along the row, a scalar tail for a row that is not whole vectors),
match numpy on x86 and ONNX Runtime on rk3399 under qemu, and a conv is left to the other rules."""

from __future__ import annotations

import re
import subprocess

import numpy as np
import pytest

from conftest import needs_aarch64, needs_host_cpu, x86_target
from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.tvm.schedules import RULES, rule_schedule, rule_target
from edgecls.compile.tvm.schedules.row_reduction import RowReductionRule
from test_padded_reduction import _vector_widths
from test_schedules import _conv_net

tvm = tvm_adapter.load_tvm()
from tvm import relax  # noqa: E402

TARGET = tvm_adapter.resolve_target(x86_target("znver3"))  # AVX2: 8 lanes, whatever the host
DIM = 64  # LayerNorm's row: 8 AVX2 vectors


def _softmax_net(tokens: int):
    """x (1, 3, tokens, tokens) * 0.125 -> softmax over the last axis: attention weights."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, tokens, tokens), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.nn.softmax(relax.op.multiply(x, relax.const(0.125)))))
        bb.emit_func_output(out)
    return bb.get()


def _layer_norm_net(tokens: int):
    """x (1, tokens, DIM) -> LayerNorm over the last axis with a non-trivial scale and shift."""
    rng = np.random.default_rng(2)
    gamma, beta = (relax.const(rng.standard_normal(DIM).astype("float32")) for _ in range(2))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, tokens, DIM), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.nn.layer_norm(x, gamma, beta, axes=[-1])))
        bb.emit_func_output(out)
    return bb.get()


def _kernel(mod, word: str, target: dict = TARGET):
    fused, _ = tvm_adapter.run_graph_passes(mod, target, layout=None)
    return next(f for g, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and word in g.name_hint)


# 16 tokens: 768 elements, under a parallel launch's worth (rule.PARALLEL_MIN_WORK): one thread
# Vector loops: softmax over 16: max and sum partials, exp, divide; over 197 (no whole
# vectors): exp and divide, the reductions scalar; LayerNorm: sum and variance partials, scale.
@pytest.mark.parametrize("net, word, parallel, vectors", [(_softmax_net(197), "softmax", True, 2),
                                                          (_softmax_net(16), "softmax", False, 4),
                                                          (_layer_norm_net(256), "layer_norm", True, 3)],
                         ids=["softmax197", "softmax16", "ln"])
def test_rule_takes_softmax_and_layer_norm_vectorized(net, word, parallel, vectors):
    target = rule_target(TARGET)
    func = _kernel(net, word)
    with target.target:
        sch, kind = rule_schedule(func, target)
        first = next(r for r in RULES if r.apply(func, target) is not None)
    assert first.name == "row-reduction" and kind == "generic"
    scheduled = sch.mod["main"]
    assert _vector_widths(scheduled) == [8] * vectors
    assert ("T.parallel" in scheduled.script()) == parallel


def test_rule_leaves_a_conv_alone():
    target = rule_target(TARGET)
    fused, _ = tvm_adapter.run_graph_passes(_conv_net(16, 12, 32, 3), TARGET, layout="NHWC")
    conv = next(f for g, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "conv" in g.name_hint)
    with target.target:
        assert RowReductionRule().apply(conv, target) is None


def _softmax_ref(x):
    z = x * 0.125
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _layer_norm_ref(x):
    rng = np.random.default_rng(2)
    gamma, beta = rng.standard_normal(DIM).astype("float32"), rng.standard_normal(DIM).astype("float32")
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * gamma + beta


@needs_host_cpu("znver3")
@pytest.mark.parametrize("tokens", [197, 16, 5])  # a tail, whole vectors, shorter than two vectors
def test_scheduled_rows_match_numpy(tokens):
    rng = np.random.default_rng(0)
    for net, ref, shape in ((_softmax_net, _softmax_ref, (1, 3, tokens, tokens)),
                            (_layer_norm_net, _layer_norm_ref, (1, tokens, DIM))):
        x = (rng.standard_normal(shape) * 4).astype("float32")
        fused, _ = tvm_adapter.run_graph_passes(net(tokens), TARGET, layout=None)
        executable, _ = tvm_adapter.build_executable(fused, TARGET, schedules=True)
        got = np.asarray(tvm_adapter.load_executable(executable)(x))
        np.testing.assert_allclose(got, ref(x.astype("float64")), rtol=1e-4, atol=1e-5)


def _softmax_layer_norm_onnx(path, shape=(1, 3, 16, 16)):
    """ONNX x -> Softmax(last axis) -> LayerNormalization(last axis): both kernels of the rule."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.standard_normal(shape[-1]).astype("float32"), n) for n in ("g", "b")]
    nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Softmax", ["xs"], ["p"], axis=-1),
             helper.make_node("LayerNormalization", ["p", "g", "b"], ["out"], axis=-1, epsilon=1e-5)]
    inits.append(numpy_helper.from_array(np.array(4.0, "float32"), "s"))
    graph = helper.make_graph(nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, list(shape))], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@needs_aarch64
def test_rk3399_rows_match_onnxruntime_under_qemu_in_neon_vectors(tmp_path):
    """rk3399 (4 lanes): the artifact's runner under qemu -cpu cortex-a72 equals ONNX Runtime, and
    the softmax's max and sum run as 4-lane NEON ops (.4s: LLVM lowers TIR's max, NaN-aware, to
    fcmgt + bsl; the sum to fadd), not scalar."""
    from edgecls.artifact.execute import run_runner
    from edgecls.artifact.reference import onnx_session
    from edgecls.pipeline import CompileRequest, compile_artifact
    model = _softmax_layer_norm_onnx(tmp_path / "rows.onnx")
    art = compile_artifact(CompileRequest(model=model, target="rk3399", out_dir=tmp_path / "art", tflite="no"))
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run_runner(art, tmp_path / "x.npy", emulate=True, output_path=tmp_path / "y.npy")
    want = onnx_session(model, optimize=False).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5)
    text = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", str(art / "model.so")],
                          capture_output=True, text=True, check=True).stdout
    softmax = next(body for name, body in re.findall(r"^[0-9a-f]+ <(\w+)>:\n(.*?)(?=\n\n|\Z)", text, re.S | re.M)
                   if "softmax" in name and name.endswith("_compute_"))
    assert re.search(r"\bf(max|cmgt)\s+v\d+\.4s", softmax) and re.search(r"\bfadd\s+v\d+\.4s", softmax)
