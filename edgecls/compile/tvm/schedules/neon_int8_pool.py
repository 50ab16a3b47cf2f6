"""The 8-bit pooling rule of dotprod targets: quant.elementwise's integer max pools (uint8/int8
in and out) vectorized 16 channels wide.

The reduction rule sizes its vectors for float32 (4 lanes on NEON), so an 8-bit max pool did one
4-byte vector per compare, with its loads, inlined padding checks and narrowing: ResNet-18
int8's 3x3 stride-2 max pool over 112x112x64 took 6.9 M instructions per inference (qemu -cpu
cortex-a76), about 3.8 per compared byte. One NEON register holds 16 bytes: umax/smax .16b.

Only on aarch64 targets with dotprod (the ARMv8.0 targets keep the reduction rule, their
artifacts unchanged), only where 16 divides the channels.
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.neon_dot import dotprod_reduction
from edgecls.compile.tvm.schedules.reduction import analyse, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

LANES = 16  # bytes of one NEON register
EIGHT_BIT = ("int8", "uint8")


class NeonInt8PoolRule(Rule):
    """Functions with exactly one reduction block that reads and writes only 8-bit integers and
    is no conv2d/dense (a pool), on an aarch64 target with dotprod: the reduction rule at 16
    lanes."""

    name = "neon-int8-pool"

    def schedule(self, sch, target: RuleTarget) -> str:
        block = dotprod_reduction(sch, target)
        stmt = sch.get(block)
        if any(str(th.buffer(r).dtype) not in EIGHT_BIT for r in (*stmt.reads, *stmt.writes)):
            raise NotRecognised("not an 8-bit reduction")
        red = analyse(sch, block)
        if red.kind(th.name(sch, block)) != "generic" or int(red.iters[red.vec].dom.extent) % LANES:
            raise NotRecognised("not a pool over a multiple of 16 channels")
        return schedule_reduction(sch, block, LANES)
