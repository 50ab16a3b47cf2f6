"""The x86 VNNI int8 rule: uint8 x int8 -> int32 conv2d/dense kernels on an x86 CPU with
AVX512-VNNI + AVX512VL or AVX-VNNI, with vpdpbusd over c4-packed weights (the layout of
XNNPACK's and oneDNN's VNNI GEMMs).

quant.int8 gives these kernels uint8 activations ("u8" mode, the activation zero point folded
into the int32 bias) and int8 weights of any range, input channels padded to fours. The
reduction rule's loop nest stays (register tile, fused requantize epilogue, parallel tiles);
this rule changes three things, as neon_dot.py does for sdot:
* the weights: prepacked at compile time to (O / B, .., I / 4, B, 4) (prepack.pack_c4): every
  32 consecutive bytes are one vpdpbusd operand (8 output x 4 input channels), one load shared
  by every row of the tile, no shuffle in registers (widening_int8's byte pairs transpose 4
  weight rows per vector and step);
* the innermost step (isa/x86_vnni.py c4_mac): the pixel's 4 activation bytes broadcast to
  every lane, one vpdpbusd per vector, accumulated in place;
* the register tile (vnni_tile): the most MACs per load within the register file (32 ymm with
  AVX512VL, 16 with AVX-VNNI only).

Which kernels: regular conv2d (1x1 and KxK) and dense with uint8 activations and int8 constant
weights whose input channels are a multiple of 4 and output channels fill 8-lane vectors. The
rest (depthwise, 10-class classifiers) goes to the next rules.
"""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.isa import has_vnni
from edgecls.compile.tvm.schedules.isa.x86_vnni import C4_LANES, GROUP, LANES, vnni_c4_intrin
from edgecls.compile.tvm.schedules.neon_dot import tensorize_c4, vector_weight
from edgecls.compile.tvm.schedules.neon_fp32 import channel_loop
from edgecls.compile.tvm.schedules.reduction import register_tile, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget
from edgecls.compile.tvm.schedules.widening_int8 import widening_enabled

MAX_VECTORS = 4  # 32 output channels per row (oneDNN's and XNNPACK's VNNI GEMMs: 16 to 64)
LOOP_INSTRUCTIONS = 1  # per step of 4 channels, with STEPS_PER_ITERATION steps unrolled
STEPS_PER_ITERATION = 4  # and kernels of 2 to 4 steps unrolled whole (neon_dot.tensorize_c4)


def register_budget(target) -> int:
    """Vector registers a tile may hold (2 left for LLVM): 32 with AVX512VL, else 16."""
    from tvm.target import codegen
    return 30 if codegen.target_has_features("avx512vl", target) else 14


def vnni_tile(budget: int):
    """The tile choice (kind, vext, vl, rext) -> (rb, nv) for a register file of `budget`
    vectors: rb rows x nv vectors with the fewest loads per vpdpbusd in a step (rb activation
    broadcasts, nv weight loads, the loop) for rb nv vpdpbusd; rb nv accumulators, nv weight
    vectors and a broadcast or two within the budget; no tail."""
    def tile(kind: str, vext: int, vl: int, rext: int) -> tuple[int, int]:
        if kind not in ("conv2d", "dense") or vl not in C4_LANES:
            return register_tile(vext, vl, rext, True)
        best = (float("inf"), 0, 1, 1)
        for nv in range(1, budget):
            if vext % (vl * nv) or (rext > 1 and nv > MAX_VECTORS):
                continue
            for rb in range(1, budget // nv + 1):
                if rext % rb or rb * nv + nv + 2 > budget:
                    continue
                best = min(best, ((rb + nv + LOOP_INSTRUCTIONS) / (rb * nv), -nv, rb, nv))
        return best[2], best[3]
    return tile


def _uint8_product(stmt) -> None:
    """Raise NotRecognised unless the block is a uint8 x int8 -> int32 reduction."""
    out = th.buffer(stmt.writes[0])
    reads = sorted(str(th.buffer(r).dtype) for r in stmt.reads if not th.buffer(r).same_as(out))
    if str(out.dtype) != "int32" or reads != ["int8", "uint8"]:
        raise NotRecognised("not a uint8 x int8 -> int32 reduction")


def schedule_vnni(sch, block, target) -> str:
    """The reduction rule with vnni_tile's tile, the weight packed c4 and the c4 vpdpbusd
    intrinsic as the innermost step. Returns the stats key."""
    _uint8_product(sch.get(block))
    name = th.name(sch, block)
    ndim = len(vector_weight(sch, block).shape)
    kind = schedule_reduction(sch, block, LANES, tile=vnni_tile(register_budget(target)),
                              inline_pad_cin=0)
    if kind not in ("conv2d", "dense"):
        raise NotRecognised("not a conv2d or dense")
    update = sch.get_sblock(name + "_update")
    loops = sch.get_loops(update)
    at = channel_loop(sch, update)
    lanes = th.extent(sch, loops[-1])
    if th.extent(sch, loops[at]) % GROUP or lanes not in C4_LANES:
        raise NotRecognised("input channels not in fours, or a vector narrower than the intrinsic")
    tensorize_c4(sch, update, ndim, at, GROUP, vnni_c4_intrin(lanes), STEPS_PER_ITERATION, STEPS_PER_ITERATION)
    return kind


class X86VnniRule(Rule):
    """uint8 x int8 -> int32 functions with exactly one reduction block, on an x86 target with
    VNNI (schedule_vnni)."""

    name = "x86-vnni"

    def schedule(self, sch, target: RuleTarget) -> str:
        load_tvm()
        if not widening_enabled() or not has_vnni(target.target):
            raise NotRecognised("no x86 VNNI")
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1:
            raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
        return schedule_vnni(sch, sch.get_sblock(reductions[0]), target.target)
