"""Reductions whose vector axis has no wide power-of-two divisor: pad it, then the reduction rule.

The reduction rule vectorizes the output's innermost axis in the widest power of two that divides
it (tir.pow2_lanes), so that no tail is needed. An attention score matmul q @ k^T has the tokens
there: 197 for ViT-Ti/16 at 224x224, odd, so it ran scalar (4.8 ms a call, 44% of the net on
AMD EPYC, 1 thread). Padding that axis to a multiple of the SIMD width (TVM's pad_einsum: a
zero-padded copy of the operand read along it, the reduction over the padded extent, a copy back)
makes it the reduction rule's case again: measured 5.65 -> 0.46 ms for (3, 197, 64) x (3, 64, 197),
AVX-512. Only einsum-shaped blocks (matmul, dense: every index a plain iterator) can be padded, so
convs with halos are never this rule's; nor is an axis that already takes 4 lanes or more, or one
shorter than two vectors (a 10-class head: padding would be most of the work).
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.reduction import analyse, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

MIN_LANES = 4  # the narrowest vector the reduction rule is left to


class PaddedReductionRule(Rule):
    """One reduction block whose vector axis is at least two vectors long and takes fewer than
    MIN_LANES lanes without a tail: pad it to whole vectors (pad_einsum), then schedule_reduction."""

    name = "padded-reduction"

    def schedule(self, sch, target: RuleTarget) -> str:
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1 or target.lanes < MIN_LANES:
            raise NotRecognised("not one reduction block, or no SIMD")
        block = sch.get_sblock(reductions[0])
        red = analyse(sch, block)
        vext = int(red.iters[red.vec].dom.extent)
        if th.pow2_lanes(vext, target.lanes) >= MIN_LANES or vext < 2 * target.lanes:
            raise NotRecognised("the vector axis needs no padding")
        padding = [target.lanes if i == red.vec else 1 for i in range(len(red.iters))]
        sch.pad_einsum(block, padding)  # raises for a block that is not an einsum (a conv's halo)
        return schedule_reduction(sch, sch.get_sblock(reductions[0]), target.lanes)
