"""The 8-bit injective rule of dotprod targets: kernels without a reduction whose output is 8-bit
integers (the int8 activations' zero padding ahead of a conv, with its transposes and residual
add; the input image's quantize + pad + transpose) vectorized 16 lanes wide.

The injective rule sizes its vectors for float32 (4 lanes on NEON), so an int8 pad copied 4 bytes
per vector: ResNet-18 int8's pad kernels took 6.4 M instructions per inference (qemu -cpu
cortex-a76), up to 10 per byte for the 58x58x64 one; 1.5 M at 16 lanes. One NEON register holds
16 bytes. The float image's quantize (float in, int8 out) then stores 16 bytes per vector too:
0.82 -> 0.60 M in both nets.

Only on aarch64 targets with dotprod (the ARMv8.0 targets keep the injective rule, their
artifacts unchanged).
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.injective import schedule_injective
from edgecls.compile.tvm.schedules.isa import has_dotprod
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

LANES = 16  # bytes of one NEON register
EIGHT_BIT = ("int8", "uint8")


class NeonInt8InjectiveRule(Rule):
    """Functions without a reduction block whose output (last param) is 8-bit integers, on an
    aarch64 target with dotprod: the injective rule at 16 lanes."""

    name = "neon-int8-injective"

    def schedule(self, sch, target: RuleTarget) -> str:
        if not has_dotprod(target.target):
            raise NotRecognised("no ARMv8.2 dotprod")
        if th.reduction_blocks(sch):
            raise NotRecognised("the function has a reduction")
        if str(sch.mod["main"].params[-1].dtype) not in EIGHT_BIT:
            raise NotRecognised("no 8-bit output")
        return schedule_injective(sch, LANES)
