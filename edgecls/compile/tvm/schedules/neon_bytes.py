"""The NEON byte rule: kernels over 8-bit data only (an int8 model's max pool, pads, residual
adds) on aarch64, vectorized 16 bytes wide.

The reduction and injective rules vectorize at the target's fp32 width, 4 lanes on NEON. For
8-bit data that is a 4-byte load, a widening uxtl and a umax .4h per 4 channels and tap of a
max pool (quant.elementwise keeps it in uint8/int8), and a pad copied 4 bytes at a time.
Measured on ResNet-18 int8 (instructions per inference, qemu -cpu cortex-a72): the 3x3
stride-2 pool over 112x112x64 cost 6.87 M with its pad stage, 1.54 M at 16 lanes. The schedules
are the same (register tile, pad stage, parallel tiles; inline, pad split, vectorize), only
the width changes: one ldr q + umax .16b per 16 channels and tap. The pool's pad stage is the
depthwise convs' (schedule_padding_rows: its border constant, then the interior rows copied
without a bounds check); as a flat injective loop it paid index divisions and a select per
vector: the pool 1.54 -> 0.28 M (ResNet-18 int8 459.65 -> 458.45 M on cortex-a72, 151.35 ->
150.14 M on cortex-a76).

Kernels without a reduction need only an 8-bit output: the image's quantize (float in, int8
out) then stores 16 bytes per vector too (0.82 -> 0.60 M on both nets, qemu -cpu cortex-a76).
Measured on dotprod targets as well: ResNet-18 int8's pads 6.4 -> 1.5 M (cortex-a76).

Only aarch64 (the x86 kernels stay as they were); a reduction only when every parameter is 8-bit
(a kernel reading int32 or float, such as an int8 conv, is another rule's).
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.injective import schedule_injective
from edgecls.compile.tvm.schedules.isa import widening_isa
from edgecls.compile.tvm.schedules.reduction import schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

BYTE_LANES = 16  # one 128-bit NEON register of 8-bit lanes
BYTE_DTYPES = ("int8", "uint8")


class NeonByteRule(Rule):
    """On aarch64: one reduction over 8-bit parameters only (schedule_reduction), or no reduction
    and an 8-bit output (schedule_injective), at 16 lanes."""

    name = "neon-bytes"

    def schedule(self, sch, target: RuleTarget) -> str:
        if widening_isa(target.lanes, target.target) != "neon":
            raise NotRecognised("not an aarch64 target")
        params = list(sch.mod["main"].params)
        if not params or str(params[-1].dtype) not in BYTE_DTYPES:
            raise NotRecognised("no 8-bit output")
        reductions = th.reduction_blocks(sch)
        if not reductions:
            return schedule_injective(sch, BYTE_LANES)
        if any(str(b.dtype) not in BYTE_DTYPES for b in params):
            raise NotRecognised("a reduction over a parameter that is not 8-bit")
        if len(reductions) != 1:
            raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
        return schedule_reduction(sch, sch.get_sblock(reductions[0]), BYTE_LANES, pad_stage=True)
