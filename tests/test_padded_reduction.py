"""The padded-reduction rule: an attention score matmul over an odd number of tokens gets whole
vectors (padded), stays exact, and a rule-less case (a conv, a narrow axis) is left to the others."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import needs_host_cpu, x86_target
from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.tvm.schedules import RULES, rule_schedule, rule_target
from edgecls.compile.tvm.schedules.padded_reduction import PaddedReductionRule

tvm = tvm_adapter.load_tvm()
import tvm_ffi  # noqa: E402
from tvm import relax  # noqa: E402

TARGET = tvm_adapter.resolve_target(x86_target("znver3"))  # AVX2: 8 lanes, whatever the host


def _scores_net(tokens: int, dim: int = 64, heads: int = 3):
    """x (1, heads, tokens, dim) -> x @ x^T, the q @ k^T of an attention head."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, heads, tokens, dim), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            kt = bb.emit(relax.op.permute_dims(x, [0, 1, 3, 2]))
            out = bb.emit_output(bb.emit(relax.op.matmul(x, kt)))
        bb.emit_func_output(out)
    fused, _ = tvm_adapter.run_graph_passes(bb.get(), TARGET, layout=None)
    return fused


def _matmul_func(mod):
    return next(f for g, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in g.name_hint)


def _vector_widths(func) -> list[int]:
    widths = []

    def visit(node):
        if tvm.tirx.ForKind(int(node.kind)).name == "VECTORIZED":
            widths.append(int(node.extent))

    tvm_ffi.structural_walk(func.body, (tvm.tirx.For, visit), order="pre")
    return widths


def test_odd_token_matmul_is_padded_to_whole_vectors():
    target = rule_target(TARGET)
    func = _matmul_func(_scores_net(197))
    with target.target:
        sch, kind = rule_schedule(func, target)
        applied = next(r for r in RULES if r.apply(func, target) is not None)
    assert applied.name == "padded-reduction" and kind == "dense"
    assert 8 in _vector_widths(sch.mod["main"])  # the tokens in whole AVX2 vectors
    assert "_pad = T.sblock_alloc_buffer" in sch.mod["main"].script()  # the zero-padded operand


@pytest.mark.parametrize("tokens", [16, 12])  # 16: 8 lanes, no padding; 12: 4 lanes, enough
def test_token_counts_with_wide_divisors_are_not_padded(tokens):
    target = rule_target(TARGET)
    with target.target:
        assert PaddedReductionRule().apply(_matmul_func(_scores_net(tokens)), target) is None


@needs_host_cpu("znver3")
def test_padded_matmul_matches_numpy():
    x = np.random.default_rng(0).standard_normal((1, 3, 197, 64)).astype("float32")
    executable, stats = tvm_adapter.build_executable(_scores_net(197), TARGET, schedules=True)
    got = tvm_adapter.load_executable(executable)(x)
    np.testing.assert_allclose(got, x @ x.transpose(0, 1, 3, 2), rtol=1e-4, atol=1e-3)
    assert stats["dense"] == 1 and stats["unscheduled"] == 0


def _mlp_net(tokens: int, dim: int, hidden: int):
    """x (1, tokens, dim) @ W (dim, hidden) + b: a transformer MLP's first layer."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, tokens, dim), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(rng.standard_normal((dim, hidden)).astype("float32"))))
            y = bb.emit(relax.op.add(y, relax.const(rng.standard_normal((hidden,)).astype("float32"))))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def test_prime_token_rows_are_padded_to_a_full_register_tile():
    target = rule_target(TARGET)
    mod = _mlp_net(197, 64, 256)
    func = _matmul_func(tvm_adapter.run_graph_passes(mod, TARGET, layout=None)[0])
    with target.target:
        applied = PaddedReductionRule().apply(func, target)
        assert applied is not None and applied.kind == "dense"
        assert PaddedReductionRule().apply(_matmul_func(tvm_adapter.run_graph_passes(
            _mlp_net(192, 64, 256), TARGET, layout=None)[0]), target) is None  # 192 rows: a 6-row tile as it is


@needs_host_cpu("znver3")
def test_padded_rows_match_numpy():
    mod = _mlp_net(197, 64, 256)
    x = np.random.default_rng(0).standard_normal((1, 197, 64)).astype("float32")
    fused, _ = tvm_adapter.run_graph_passes(mod, TARGET, layout=None)
    want = tvm_adapter.load_executable(tvm_adapter.build_executable(fused, TARGET, schedules=False)[0])(x)
    got = tvm_adapter.load_executable(tvm_adapter.build_executable(fused, TARGET, schedules=True)[0])(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


AVX512 = tvm_adapter.resolve_target(x86_target("skylake-avx512"))  # 16 lanes, whatever the host


@pytest.mark.parametrize("hidden", [576, 768])  # ViT-tiny's qkv and MLP fc1 widths
def test_prime_rows_over_six_wide_vectors_still_get_a_row_tile(hidden):
    """With 16 lanes, 576 and 768 channels fill 6 vectors, so register_tile gives the 197 prime
    rows one row of 6 vectors: each weight vector then feeds one FMA (ViT-tiny fc1 ran at half
    speed). The rows are padded to 198 and tiled 6 x 2 instead."""
    target = rule_target(AVX512)
    func = _matmul_func(tvm_adapter.run_graph_passes(_mlp_net(197, 192, hidden), AVX512, layout=None)[0])
    with target.target:
        sch, _ = rule_schedule(func, target)
        applied = PaddedReductionRule().apply(func, target)
    assert applied is not None and applied.kind == "dense"
    script = sch.mod["main"].script()
    assert "T.int64(198), T.int64(" in script  # the padded rows
    assert "in T.unroll(T.int64(6))" in script  # a 6-row register tile


@needs_host_cpu("skylake-avx512")
def test_avx512_padded_rows_match_the_unscheduled_build():
    fused, _ = tvm_adapter.run_graph_passes(_mlp_net(197, 192, 768), AVX512, layout=None)
    x = np.random.default_rng(0).standard_normal((1, 197, 192)).astype("float32")
    want = tvm_adapter.load_executable(tvm_adapter.build_executable(fused, AVX512, schedules=False)[0])(x)
    got = tvm_adapter.load_executable(tvm_adapter.build_executable(fused, AVX512, schedules=True)[0])(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def _probs_values_net(tokens: int, dim: int = 64, heads: int = 3):
    """probs (1, heads, tokens, tokens) @ v (1, heads, tokens, dim): attention's second matmul."""
    bb = relax.BlockBuilder()
    p = relax.Var("p", relax.TensorType((1, heads, tokens, tokens), "float32"))
    v = relax.Var("v", relax.TensorType((1, heads, tokens, dim), "float32"))
    with bb.function("main", [p, v]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(p, v)))
        bb.emit_func_output(out)
    fused, _ = tvm_adapter.run_graph_passes(bb.get(), AVX512, layout=None)
    return fused


@pytest.mark.parametrize("net", ["scores", "values"])
def test_padded_operands_are_copied_without_a_select_per_element(net):
    """The padded copies: zeros, then the operand copied in whole vectors without a bounds
    check. As one flat loop with a select per element, probs @ v's copy of the probabilities
    took 0.11 of its 0.26 ms (AMD EPYC Zen 4)."""
    target = rule_target(AVX512)
    fused = _probs_values_net(197) if net == "values" else _scores_net(197)
    with target.target:
        sch, kind = rule_schedule(_matmul_func(fused), target)
    script = sch.mod["main"].script()
    assert kind == "dense" and "_pad = T.sblock_alloc_buffer" in script
    assert "if_then_else" not in script
    assert "_pad_const" in script  # the zeros, a stage of their own


@needs_host_cpu("skylake-avx512")
def test_padded_probs_values_match_numpy():
    rng = np.random.default_rng(0)
    p, v = rng.standard_normal((1, 3, 197, 197)).astype("float32"), rng.standard_normal((1, 3, 197, 64)).astype("float32")
    executable, stats = tvm_adapter.build_executable(_probs_values_net(197), AVX512, schedules=True)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(p), tvm.runtime.tensor(v)).numpy()
    np.testing.assert_allclose(got, p @ v, rtol=1e-4, atol=1e-3)
    assert stats["dense"] == 1 and stats["unscheduled"] == 0


def test_padded_token_matmuls_split_threads_by_rows_on_x86():
    """As the reduction rule on x86 (reduction.X86_OWN_WEIGHT_SLICE_BYTES): a 576 KB weight, the
    threads take token rows, not output channels, so the LayerNorm/GELU after it reads its rows
    from its own core. ViT-tiny at 2 threads, paired (benchmarks/paired.py, AMD EPYC Zen 4):
    0.624 -> 0.556 of main's time."""
    target = rule_target(AVX512)
    func = _matmul_func(tvm_adapter.run_graph_passes(_mlp_net(197, 192, 768), AVX512, layout=None)[0])
    with target.target:
        sch, _ = rule_schedule(func, target)
    tiles = re.findall(r"for (\w+) in T\.parallel", sch.mod["main"].script())[-1]  # after the copies
    assert tiles.startswith("i0_i1_0_") and tiles.endswith("i2_0_fused")  # rows, then channels
