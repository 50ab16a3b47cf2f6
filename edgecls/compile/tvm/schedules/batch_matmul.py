"""Batch matmuls of two activations on x86 (attention's q @ k^T and probs @ v): the reduction
rule's loop nest with a register tile sized for them.

The reduction rule's tile (reduction.register_tile) holds at most 12 accumulators of at most 2
vectors a row, sized for AVX2's 16 registers and for the weights of convs and dense layers. An
attention matmul has no weight to prepack, and its vector axis is a head's width: 24 in
MobileViT-XS (3 vectors of 8 lanes) and 64 in ViT-tiny (4 of 16). There the plain tile took one
vector a row, 8 rows (MobileViT-XS probs @ v, 16 x 256x256 @ 256x24: 8 accumulators for
2 FMA pipes of 4 cycles' latency). With AVX-512 (32 registers, also for 8-lane vectors) this
rule takes up to WIDE_ACCUMULATORS, up to MAX_VECTORS vectors a row, when a row of the output
fits one tile row (probs @ v): that matmul alone 0.64 -> 0.53 ms (AMD EPYC Zen 4, 1 thread);
ViT-tiny's (3 x 197x197 @ 197x64) unchanged (0.158 / 0.160). Kernels with a weight
operand (every conv and dense: layout_free_buffers) are never this rule's, so MobileNetV2 and
ResNet-18 build as before.
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.padded_reduction import pad_odd_axes, schedule_padded_copy
from edgecls.compile.tvm.schedules.prepack import LAYOUT_FREE_ATTR
from edgecls.compile.tvm.schedules.reduction import (MAX_ACCUMULATORS, analyse, own_slice_bytes, register_tile,
                                                     schedule_reduction)
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

WIDE_ACCUMULATORS = 24  # of 32 vector registers (AVX-512): the rest hold the row's vectors and a broadcast
MAX_VECTORS = 4


def wide_tile(budget: int):
    """register_tile's contract ((kind, vext, vl, rext) -> (rb, nv), no tail) with `budget`
    accumulators and up to MAX_VECTORS vectors a row; ties go to more vectors (fewer broadcasts)."""

    def tile(kind: str, vext: int, vl: int, rext: int) -> tuple[int, int]:
        best = (0, 0, 1, 1)
        for nv in range(1, MAX_VECTORS + 1):
            if vext % (vl * nv):
                continue
            rb = max(d for d in range(1, min(rext, budget // nv) + 1) if rext % d == 0)
            best = max(best, (rb * nv, nv, rb, nv))
        if best[2] == 1:  # a prime row: register_tile's answer (the vectors make the accumulators)
            return register_tile(vext, vl, rext, False)
        return best[2], best[3]

    return tile


class BatchMatmulRule(Rule):
    """A float32 matmul of two activations (no weight operand) on an x86 target: padded where
    its tokens need it (padded_reduction.pad_odd_axes), then the reduction rule with wide_tile."""

    name = "batch-matmul"

    def schedule(self, sch, target: RuleTarget) -> str:
        if target.lanes < 8:
            raise NotRecognised("not x86 (aarch64 has the by-lane FMA rule)")
        attrs = sch.mod["main"].attrs
        if attrs is not None and LAYOUT_FREE_ATTR in attrs and len(attrs[LAYOUT_FREE_ATTR]):
            raise NotRecognised("a weight operand: the conv/dense rules")
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1 or "matmul" not in reductions[0]:
            raise NotRecognised("not one matmul block")
        block = sch.get_sblock(reductions[0])
        for region in (*sch.get(block).reads, *sch.get(block).writes):
            if str(th.buffer(region).dtype) != "float32":
                raise NotRecognised("not float32")
        red = analyse(sch, block)
        if int(red.iters[red.vec].dom.extent) > MAX_VECTORS * target.lanes:
            # q @ k^T (tokens wide): measured slower with the wide tile (MobileViT-XS's
            # 16 x 256x24 @ 24x256: 0.57 -> 1.39 ms), left to the padded/plain reduction rules
            raise NotRecognised("an output row wider than one register-tile row")
        stage = {"stage": schedule_padded_copy} if pad_odd_axes(sch, block, target.lanes) else {}
        budget = WIDE_ACCUMULATORS if target.lanes >= 16 else MAX_ACCUMULATORS
        return schedule_reduction(sch, sch.get_sblock(reductions[0]), target.lanes, tile=wide_tile(budget),
                                  own_slice_bytes=own_slice_bytes(target), **stage)
