"""The dotprod int8 rule: int8 x int8 -> int32 conv2d/dense kernels on aarch64 with ARMv8.2
dotprod, as XNNPACK's qs8/qc8 "c4" neondot GEMM microkernels compute them.

quant.int8 gives these kernels int8 activations ("s8" mode) and int8 weights with the input
channels padded to fours. The reduction rule's loop nest stays (register tile, fused requantize
epilogue, parallel tiles); this rule changes three things:
* the weights: prepacked at compile time to (O / B, .., I / 4, B, 4) (prepack.pack_c4): every 16
  consecutive bytes are one sdot operand (4 output x 4 input channels), loaded with one `ldr q`
  and shared by every row of the tile; no shuffle in registers;
* the innermost step (isa/neon_dot.py): 16 (8, 4) input channels of a pixel in one vector load,
  one sdot by lane per group of 4, accumulated in place;
* the register tile (dot_tile): rows x up to 4 vectors (16 channels), so one activation load
  feeds up to 16 sdot (isa/neon.py's kernels were one vector wide: 4).

Measured (instructions per inference, qemu 7.2 -cpu cortex-a76, one thread, jetson-orin-nano
builds, 224x224): MobileNetV2 int8 67.0 -> 59.05 M, ResNet-18 int8 (with isa/neon.py's sdot
accumulating in place) 299.9 -> 189.6 M, 168.4 M with the register budget; the 3x3 64 -> 64 conv's
inner loop then takes 1.22 instructions per sdot (XNNPACK's c4-neondot.c.in 4x16 loop: 4
activation and 8 weight loads per 32 sdot, about 1.45 with its loop counter and branch).
With the kernel-width taps inside each step (stride-1 KxK convs, _taps_share_pixels), a 7 x 2
tile of a 3x3 conv loads 9 pixels per step, not 21: ResNet-18 int8 148.19 -> 143.51 M
(3x3 convs at 7x7 8.87 -> 8.36 M, at 56x56 9.02 -> 8.78 M), 143.32 M with the 64-channel convs'
4 steps unrolled whole around the taps (56x56 8.73 M); outputs unchanged.

Which kernels: regular conv2d (1x1 and KxK) and dense with int8 activations and weights whose
input channels are a multiple of 4 and output channels fill the vectors, on a dotprod target.
Everything else (the int16 depthwise convs, ARMv8.0, x86) is left to the next rules.
"""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.isa import has_dotprod
from edgecls.compile.tvm.schedules.isa.neon_dot import K, LANES, dot_c4_intrin
from edgecls.compile.tvm.schedules.neon_fp32 import channel_loop
from edgecls.compile.tvm.schedules.prepack import pack_c4, pack_taps_inside
from edgecls.compile.tvm.schedules.reduction import register_tile, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

MAX_ACCUMULATORS = 20  # int32x4 accumulators of a tile (a dense row: vectors only)
# Vector registers a step of 16 input channels may hold: rb x nv accumulators, rb activation
# vectors and 4 nv weight vectors, of 32 (2 left for LLVM). ResNet-18's 3x3 64 -> 64 conv with a
# 4 x 4-vector tile (36 registers) spilled: 1.81 instructions per sdot; 7 x 2 (29) fits.
REGISTER_BUDGET = 30
MAX_VECTORS = 4  # 16 output channels per row, as XNNPACK's 4x16c4 / 1x16c4
STEPS_PER_ITERATION = 2  # steps per loop iteration (unrolled): half the pointer bumps and branches
MAX_UNROLLED_TAPS = 7  # kernel-width taps unrolled in one-step kernels (schedule_dot)
MAX_UNROLLED_STEPS = 4  # a tap's steps up to 64 input channels unrolled whole (8: ResNet-18 -0.3 M, MobileNetV2 +0.1 M)
EPILOGUE_LANES = 8  # requantize 8 outputs at a time (neon_requantize: sqxtn + sqxtn2, one store)
LOOP_INSTRUCTIONS = 4  # per step: a pointer bump per operand, the counter, the branch


def dot_tile(kind: str, vext: int, vl: int, rext: int) -> tuple[int, int]:
    """(rb, nv): the register tile of rb rows x nv vectors with the fewest other instructions per
    sdot in a step of 16 input channels: rb activation loads, 2 nv weight loads (ldp pairs of
    4 nv vectors) and the loop, for 4 rb nv sdot; no tail (rb divides the register axis, nv vl
    the vector axis), within REGISTER_BUDGET. A single row (dense) may take more vectors."""
    if kind not in ("conv2d", "dense") or vl != LANES:
        return register_tile(vext, vl, rext, True)
    best = (float("inf"), 0, 1, 1)
    for nv in range(1, MAX_ACCUMULATORS + 1):
        if vext % (vl * nv) or (rext > 1 and nv > MAX_VECTORS):
            continue
        for rb in range(1, MAX_ACCUMULATORS // nv + 1):
            if rext % rb or rb * nv + rb + 4 * nv > REGISTER_BUDGET:
                continue
            cost = (rb + 2 * nv + LOOP_INSTRUCTIONS) / (4 * rb * nv)
            best = min(best, (cost, -nv, rb, nv))
    return best[2], best[3]


def _int8_product(stmt) -> None:
    """Raise NotRecognised unless the block is an int8 x int8 -> int32 reduction."""
    out = th.buffer(stmt.writes[0])
    reads = [r for r in stmt.reads if not th.buffer(r).same_as(out)]
    if str(out.dtype) != "int32" or len(reads) != 2 or any(str(th.buffer(r).dtype) != "int8" for r in reads):
        raise NotRecognised("not an int8 x int8 -> int32 reduction")


def vector_weight(sch, block):
    """The weight buffer of the block: the read whose innermost index follows the vector axis."""
    stmt = sch.get(block)
    vec_var = stmt.writes[0].region[-1].min
    out = th.buffer(stmt.writes[0])
    weights = [th.buffer(r) for r in stmt.reads if not th.buffer(r).same_as(out)
               and len(r.region) > 1 and th.uses(r.region[-1].min, vec_var)]
    if len(weights) != 1:
        raise NotRecognised("no weight along the vector axis")
    return weights[0]


def tensorize_c4(sch, update, ndim: int, at: int, k: int, intrin: str, whole: int, per_iteration: int,
                 taps_inside: bool = False) -> None:
    """The c4 rules' (this one's and x86_vnni's) last steps on the reduction rule's update block:
    the weight (ndim dims before the rule) packed c4, the input channel loop at `at` split into
    steps of k innermost, the steps unrolled (_unroll_steps) and each tensorized as `intrin`.
    taps_inside (this rule's): where _taps_share_pixels allows, the kernel-width taps unrolled
    inside the step loop instead, and the weight laid out to match (prepack.pack_taps_inside)."""
    weight = vector_weight(sch, update)
    loops = sch.get_loops(update)
    taps = taps_inside and _taps_share_pixels(sch, update, weight, loops, at, k, ndim)
    # The tile's channels: pack_last_axis's block, or all O when it left the weight as it was.
    if not pack_c4(sch, update, weight, int(weight.shape[-1]), blocked=len(weight.shape) > ndim):
        raise NotRecognised("the weight is not a constant that packs by fours")
    # [.., ci, rows (unrolled), vectors (unrolled), lanes] -> [.., ci/k, rows, vectors, lanes, k]
    k_o, k_i = sch.split(loops[at], [None, k])
    sch.reorder(k_o, *loops[at + 1:], k_i)
    if taps:
        stmt = sch.get(update)
        packed = next(th.buffer(r) for r in stmt.reads if len(th.buffer(r).shape) == ndim + 2)
        pack_taps_inside(sch, update, packed, k)
        sch.reorder(k_o, loops[at - 1])
        sch.unroll(loops[at - 1])
        if th.extent(sch, k_o) <= whole:
            sch.unroll(k_o)
    else:
        _unroll_steps(sch, loops, at, k_o, whole, per_iteration)
    sch.tensorize(sch.get_loops(update)[-2], intrin)


def _unroll_steps(sch, loops, at: int, k_o, whole: int, per_iteration: int) -> None:
    """Unroll the c4 step loop k_o (both c4 rules): whole when it has 2..`whole` steps, else
    `per_iteration` steps per loop iteration (fewer pointer bumps and branches). A one-step
    kernel (an RGB stem, 4 channels) unrolls its kernel-width taps instead, so rows that read the
    same pixel at different taps share its load. LLVM did this itself until the 8-lane epilogue
    grew the function: ResNet-18's 7x7 stem 17.3 -> 25.7 M instructions (dotprod) without it."""
    steps = th.extent(sch, k_o)
    if 1 < steps <= whole:
        sch.unroll(k_o)
    elif steps % per_iteration == 0:
        _, inner = sch.split(k_o, [None, per_iteration])
        sch.unroll(inner)
    elif steps == 1 and at > 0 and th.extent(sch, loops[at - 1]) <= MAX_UNROLLED_TAPS:
        sch.unroll(loops[at - 1])


def _taps_share_pixels(sch, update, weight, loops, at: int, k: int, ndim: int) -> bool:
    """Whether the kernel-width taps go inside the c4 step loop (tensorize_c4, taps_inside): a
    KxK conv (an HWIO weight) of stride 1 along the register axis, 2..MAX_UNROLLED_TAPS taps
    wide, with more than one step. Unrolled there, rows of the tile that read the same pixel at
    different taps share its load: a 7-row tile of a 3x3 conv loads 9 pixels per step, not 21.
    Stride 2 (15 pixels for 7 rows) spilled: ResNet-18's 3x3 stride-2 convs +0.03..0.14 M each."""
    if ndim != 4 or at == 0 or not 1 < th.extent(sch, loops[at - 1]) <= MAX_UNROLLED_TAPS \
            or th.extent(sch, loops[at]) < 2 * k:
        return False
    tvm = load_tvm()
    stmt = sch.get(update)
    out = th.buffer(stmt.writes[0])
    col = stmt.writes[0].region[-2].min
    data = [r for r in stmt.reads if not th.buffer(r).same_as(out) and not th.buffer(r).same_as(weight)]
    if len(data) != 1 or len(data[0].region) != 4 or not isinstance(col, tvm.tirx.Var):
        return False
    coef = tvm.sym.detect_linear_equation(data[0].region[-2].min, [col])
    return len(coef) == 2 and isinstance(coef[0], tvm.tirx.IntImm) and int(coef[0]) == 1


def schedule_dot(sch, block) -> str:
    """The reduction rule with dot_tile's tile, the weight packed c4 and the c4 sdot intrinsic as
    the innermost step. Returns the stats key."""
    _int8_product(sch.get(block))
    name = th.name(sch, block)
    ndim = len(vector_weight(sch, block).shape)
    kind = schedule_reduction(sch, block, LANES, tile=dot_tile, inline_pad_cin=0, epilogue_lanes=EPILOGUE_LANES)
    if kind not in ("conv2d", "dense"):
        raise NotRecognised("not a conv2d or dense")
    update = sch.get_sblock(name + "_update")
    loops = sch.get_loops(update)
    at = channel_loop(sch, update)
    k = next((k for k in K if th.extent(sch, loops[at]) % k == 0), None)
    if k is None or th.extent(sch, loops[-1]) != LANES:
        raise NotRecognised("input channels not in fours, or a vector narrower than the intrinsic")
    tensorize_c4(sch, update, ndim, at, k, dot_c4_intrin(k), MAX_UNROLLED_STEPS, STEPS_PER_ITERATION,
                 taps_inside=True)
    return kind


class NeonDotRule(Rule):
    """int8 x int8 -> int32 functions with exactly one reduction block, on an aarch64 target with
    dotprod (schedule_dot)."""

    name = "neon-dot"

    def schedule(self, sch, target: RuleTarget) -> str:
        return schedule_dot(sch, dotprod_reduction(sch, target))


def dotprod_reduction(sch, target: RuleTarget):
    """The single reduction block of a function on an aarch64 target with dotprod (the dotprod
    rules' common condition), or raise NotRecognised."""
    if not has_dotprod(target.target):
        raise NotRecognised("no ARMv8.2 dotprod")
    reductions = th.reduction_blocks(sch)
    if len(reductions) != 1:
        raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
    return sch.get_sblock(reductions[0])

