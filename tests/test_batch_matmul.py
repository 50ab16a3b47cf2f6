"""The batch-matmul rule: attention's probs @ v (two activations, a narrow head width) gets the
wide AVX-512 register tile and stays exact; weights, wide rows (q @ k^T) and aarch64 are left to
the other rules."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_host_cpu, x86_target
from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.tvm.schedules import RULES, rule_schedule, rule_target
from edgecls.compile.tvm.schedules.batch_matmul import BatchMatmulRule, wide_tile
from test_padded_reduction import _matmul_func, _mlp_net

tvm = tvm_adapter.load_tvm()
from tvm import relax  # noqa: E402

AVX512 = tvm_adapter.resolve_target(x86_target("skylake-avx512"))
RK3399 = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"], "num-cores": 2}


def _batch_matmul(a_shape, b_shape, target=AVX512):
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType(a_shape, "float32"))
    b = relax.Var("b", relax.TensorType(b_shape, "float32"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.matmul(a, b)))
        bb.emit_func_output(out)
    return tvm_adapter.run_graph_passes(bb.get(), target, layout=None)[0]


PROBS_V = ((4, 4, 256, 256), (4, 4, 256, 24))  # MobileViT-XS: 16 heads x patches, head width 24


def test_wide_tile_fills_avx512_registers_without_a_tail():
    assert wide_tile(24)("dense", 24, 8, 256) == (8, 3)  # 24 accumulators, the whole head a row
    assert wide_tile(24)("dense", 64, 16, 198) == (6, 4)
    assert wide_tile(12)("dense", 24, 8, 256) == (4, 3)
    for rext in (7, 12, 50, 198, 256):
        for vext, vl in ((24, 8), (64, 16), (48, 16)):
            rb, nv = wide_tile(24)("dense", vext, vl, rext)
            assert rext % rb == 0 and vext % (vl * nv) == 0 and rb * nv <= 24


def test_rule_takes_probs_values_with_the_wide_tile():
    target = rule_target(AVX512)
    func = _matmul_func(_batch_matmul(*PROBS_V))
    with target.target:
        sch, kind = rule_schedule(func, target)
        first = next(r for r in RULES if r.apply(func, target) is not None)
    assert first.name == "batch-matmul" and kind == "dense"
    script = sch.mod["main"].script()
    assert "in T.unroll(T.int64(8))" in script and "in T.unroll(T.int64(3))" in script


@pytest.mark.parametrize("case", ["weight", "scores", "aarch64"])
def test_rule_leaves_weights_wide_rows_and_aarch64_alone(case):
    target_dict = RK3399 if case == "aarch64" else AVX512
    target = rule_target(target_dict)
    if case == "weight":
        fused = tvm_adapter.run_graph_passes(_mlp_net(256, 64, 24), AVX512, layout=None)[0]
    elif case == "scores":
        fused = _batch_matmul((4, 4, 256, 24), (4, 4, 24, 256))
    else:
        fused = _batch_matmul(*PROBS_V, target=RK3399)
    with target.target:
        assert BatchMatmulRule().apply(_matmul_func(fused), target) is None


@needs_host_cpu("skylake-avx512")
@pytest.mark.parametrize("shapes", [PROBS_V, ((1, 3, 197, 197), (1, 3, 197, 64))], ids=["mobilevit", "vit"])
def test_probs_values_match_numpy(shapes):
    rng = np.random.default_rng(0)
    p, v = (rng.standard_normal(s).astype("float32") for s in shapes)
    executable, stats = tvm_adapter.build_executable(_batch_matmul(*shapes), AVX512, schedules=True)
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(p), tvm.runtime.tensor(v)).numpy()
    np.testing.assert_allclose(got, p @ v, rtol=1e-4, atol=1e-3)
    assert stats["dense"] == 1
