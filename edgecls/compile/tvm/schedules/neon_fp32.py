"""The NEON fp32 rule: float32 conv2d/dense kernels on aarch64 with the by-lane FMA intrinsic
(isa/lane_fma.py) as their innermost step.

The reduction rule's loop nest (register tile, fused epilogue, parallel tiles, packed weights)
stays; three things change on aarch64:
* the innermost step: 4 consecutive input channels x one vector of output channels become one
  vector load of the pixel's activations and 4 fmla by lane, where the plain rule loads every
  activation as a scalar (`ldr s`, ~2 per 3 fmla: issue 15's diagnosis), two such steps per
  loop iteration (unrolled: half the pointer bumps and branches);
* the register tile (lane_fma_tile): 16 accumulators, not the 12 sized for AVX2's 16 registers;
* RGB first convs (3 input channels: no intrinsic) keep their zero padding as a stage of its
  own: inlined, every tap carried bounds checks and branches.
Which kernels: regular conv2d (1x1 and KxK) and dense whose input-channel count is a multiple of
4 and whose output channels fill the vectors. Depthwise convs and pooling keep the plain rule
(no input-channel reduction; their padding stays inlined: as a separate stage it measured
134.9 M instead of 115.8 M for MobileNetV2). Every non-aarch64 target: the rule does not apply,
x86 builds are byte-identical (scripts/model_so_hashes.py).

Measured, instructions per inference, qemu-user 7.2 -cpu cortex-a72, one thread, 224x224:
MobileNetV2 202.6 M -> 112.1 M, ResNet-18 1123.7 M -> 584.3 M (LiteRT 2.3.0 / XNNPACK: 124.0 M and
666.4 M). MobileNetV2's top kernel (1x1 96->576 at 14x14) 22.6 M -> 10.2 M; its hot loop under
llvm-mca -mcpu=cortex-a72: 19 instructions for 7 fmla, 8.1 cycles (1.16 per fmla) before; 135
for 112 fmla, 112 cycles (1.00 per fmla, the FP pipe's bound) after, with fewer bytes loaded per
fmla (4.3 instead of 6.3): no trade of instructions for memory traffic.
"""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.isa import widening_isa
from edgecls.compile.tvm.schedules.isa.lane_fma import K, LANES, lane_fma_intrin
from edgecls.compile.tvm.schedules.padded_reduction import pad_odd_axes, schedule_padded_copy
from edgecls.compile.tvm.schedules.reduction import register_tile, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget


def _float32_reduction(stmt) -> None:
    """Raise NotRecognised unless every buffer of the block is float32."""
    for region in (*stmt.reads, *stmt.writes):
        if str(th.buffer(region).dtype) != "float32":
            raise NotRecognised("not a float32 reduction")


def channel_loop(sch, block) -> int:
    """Index in the block's loops of the reduction iterator that indexes one operand's innermost
    dimension (the activation's input channel, NHWC or [.., K]) and the vector operand's
    second-innermost one (the weight's row: HWIO's I, or I of prepack's blocked layout)."""
    tvm = load_tvm()
    stmt = sch.get(block)
    vec_var = stmt.writes[0].region[-1].min
    out = th.buffer(stmt.writes[0])
    reads = [r for r in stmt.reads if not th.buffer(r).same_as(out)]
    weight = [r for r in reads if th.uses(r.region[-1].min, vec_var) and len(r.region) > 1]
    act = [r for r in reads if not th.uses(r.region[-1].min, vec_var)]
    if len(weight) != 1 or len(act) != 1:
        raise NotRecognised("not an activation x weight product along the vector axis")
    k = act[0].region[-1].min
    if not weight[0].region[-2].min.same_as(k):
        raise NotRecognised("activation and weight do not share the innermost reduction")
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    bound = [v for iv, v in zip(realize.block.iter_vars, realize.iter_values)
             if iv.var.same_as(k) and iv.iter_type == tvm.tirx.IterVar.CommReduce]
    at = [i for i, lp in enumerate(loops) if bound and sch.get(lp).loop_var.same_as(bound[0])]
    if not at:
        raise NotRecognised("the input-channel iterator is not a plain loop")
    return at[0]


# AArch64 has 32 vector registers (AVX2 16: reduction.MAX_ACCUMULATORS is sized for those). A step
# of 4 input channels holds the tile's accumulators, its 4 nv weight rows (LLVM loads them first)
# and one pixel's activations at a time.
MAX_ACCUMULATORS = 16
VECTOR_REGISTERS = 32
STEPS_PER_ITERATION = 2  # steps of 4 input channels per loop iteration (unrolled)
LOOP_INSTRUCTIONS = 4  # per step: a pointer bump per operand, the counter, the branch


def lane_fma_tile(kind: str, vext: int, vl: int, rext: int) -> tuple[int, int]:
    """(rb, nv): the register tile of rb rows x nv vectors with the fewest other instructions
    per fmla in a step of 4 input channels: rb activation loads, 2 nv weight loads (ldp pairs)
    and the loop, for 4 rb nv fmla; no tail (rb divides the register axis, nv vl the vector
    axis). Kinds without the intrinsic, and tiles of one row, keep reduction.register_tile."""
    if kind not in ("conv2d", "dense") or rext == 1 or vl != LANES:
        return register_tile(vext, vl, rext, False)
    best = (float("inf"), 0, 1, 1)
    for nv in range(1, MAX_ACCUMULATORS + 1):
        if vext % (vl * nv):
            continue
        for rb in range(1, MAX_ACCUMULATORS // nv + 1):
            if rext % rb or rb * nv + 4 * nv + 1 > VECTOR_REGISTERS:
                continue
            cost = (rb + 2 * nv + LOOP_INSTRUCTIONS) / (4 * rb * nv)
            best = min(best, (cost, -nv, rb, nv))
    return best[2], best[3]


def _pad_tokens(sch, block, lanes: int) -> tuple[dict, object]:
    """A vision transformer's 197 tokens: pad them as the padded-reduction rule does on x86 (the
    score matmul's tokens to whole vectors, prime token rows to a row tile), and the reduction
    to whole steps of the intrinsic. Unpadded, ViT-tiny's q @ k^T ran scalar, probs @ v without
    the intrinsic and the token matmuls one row at a time (rk3399: 1.27x the best peer's
    instructions). Returns (schedule_reduction's stage argument for the padded copies, the block)."""
    name = th.name(sch, block)
    try:
        padded = pad_odd_axes(sch, block, lanes, reduction_multiple=K[0])
    except Exception:  # noqa: BLE001  (not an einsum: a conv's halo; the schedule is unchanged)
        padded = False
    return {"stage": schedule_padded_copy} if padded else {}, sch.get_sblock(name)


def schedule_lane_fma(sch, block, lanes: int) -> str:
    """The reduction rule with the by-lane FMA intrinsic as the innermost step of conv2d/dense
    kernels; other float32 kernels get the plain rule. Returns the stats key."""
    _float32_reduction(sch.get(block))
    name = th.name(sch, block)
    stage, block = _pad_tokens(sch, block, lanes)
    kind = schedule_reduction(sch, block, lanes, tile=lane_fma_tile, inline_pad_cin=0, **stage)
    if kind not in ("conv2d", "dense"):
        return kind
    update = sch.get_sblock(name + "_update")
    loops = sch.get_loops(update)
    at = channel_loop(sch, update)
    k = next((k for k in K if th.extent(sch, loops[at]) % k == 0), None)
    if th.extent(sch, loops[-1]) != LANES:
        raise NotRecognised("a vector narrower than the intrinsic")
    if k is None:  # RGB: the plain rule's scalar activations, with the padding as its own stage
        return kind
    # [.., ci, rows (unrolled), vectors (unrolled), lanes] -> [.., ci/k, rows, vectors, lanes, k]
    k_o, k_i = sch.split(loops[at], [None, k])
    sch.reorder(k_o, *loops[at + 1:], k_i)
    if th.extent(sch, k_o) % STEPS_PER_ITERATION == 0:
        _, steps = sch.split(k_o, [None, STEPS_PER_ITERATION])
        sch.unroll(steps)
    sch.tensorize(sch.get_loops(update)[-2], lane_fma_intrin(k))
    return kind


class NeonFp32Rule(Rule):
    """float32 functions with exactly one reduction block, on an aarch64 target
    (schedule_lane_fma)."""

    name = "neon-fp32"

    def schedule(self, sch, target: RuleTarget) -> str:
        if widening_isa(target.lanes, target.target) != "neon":
            raise NotRecognised("not an aarch64 target")
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1:
            raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
        return schedule_lane_fma(sch, sch.get_sblock(reductions[0]), target.lanes)
