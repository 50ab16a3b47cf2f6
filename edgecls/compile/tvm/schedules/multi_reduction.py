"""The fallback for reductions the reduction rule does not take (several reduction blocks in
one function, a scalar result, an NCHW conv with no operand contiguous along the vector axis):
parallel over each block's leading spatial loops, nothing else."""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.rule import PARALLEL_MIN_WORK, NotRecognised, Rule, RuleTarget


def schedule_reductions_parallel(sch) -> str:
    """Parallel over each block's leading spatial loops. Raises NotRecognised when that changes
    nothing."""
    tvm = load_tvm()
    th.inline_all_but_outputs(sch, keep={th.name(sch, b) for b in sch.get_child_blocks(th.root(sch))
                                       if th.is_reduction(sch, b)})
    changed = False
    for block in sch.get_child_blocks(th.root(sch)):
        loops = sch.get_loops(block)
        iters = sch.get(block).iter_vars
        if len(loops) != len(iters):
            continue
        lead = []
        for loop, iv in zip(loops, iters):
            if iv.iter_type != tvm.tirx.IterVar.DataPar:
                break
            lead.append(loop)
        if lead and th.work(sch, block) >= PARALLEL_MIN_WORK:
            fused = sch.fuse(*lead) if len(lead) > 1 else lead[0]
            if th.extent(sch, fused) > 1:
                sch.parallel(fused)
                changed = True
    if not changed:
        raise NotRecognised("no parallel loop to be had")
    return "generic"


class ParallelReductionsRule(Rule):
    """Any function with at least one reduction block (schedule_reductions_parallel)."""

    name = "parallel-reductions"

    def schedule(self, sch, target: RuleTarget) -> str:
        if not th.reduction_blocks(sch):
            raise NotRecognised("no reduction")
        return schedule_reductions_parallel(sch)
