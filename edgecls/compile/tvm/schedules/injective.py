"""The injective rule: kernels without a reduction (elementwise chains, transposes, reshapes,
standalone padding): inline, vectorize the innermost dimension, parallel over the rest. Its
per-block step also schedules the producers the reduction rule keeps (a separate pad stage)."""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.rule import PARALLEL_MIN_WORK, NotRecognised, Rule, RuleTarget


def schedule_injective_block(sch, block, lanes: int) -> None:
    """Innermost dimension vectorized (when it splits evenly), the rest fused and parallel.

    An innermost dimension narrower than a vector (the 3 channels of an NHWC image) is unrolled
    inside the next one, which is vectorized instead: the NCHW -> NHWC input transpose (with its
    quantize and pad) then reads whole rows of each channel plane in vectors. Fused into one
    flat loop it was a scalar loop with three index divisions per byte (0.83 ms at 224x224).
    A row that is not a whole number of vectors (226 = 224 + a padded border of 2) is split in
    two loops, whole vectors then the rest, rather than taking the vector width that divides it
    (2 lanes for 226; the int8 stem's quantize + pad + transpose, one thread, profiled in the
    whole model: 0.24 -> 0.18 ms)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    work = th.work(sch, block)
    last = loops[-1]
    narrow = len(loops) > 1 and 1 < th.extent(sch, last) < lanes
    row = th.extent(sch, loops[-2]) if narrow else 0
    if narrow and row > lanes and row % lanes and len(loops) > 2:
        parts = sch.loop_partition(loops[-2], [row - row % lanes, None])
        for part, vl in zip(parts, (lanes, 1)):  # (split() rejects a loop not from 0)
            _vectorize_narrow_rows(sch, part, vl)
        outer = list(loops[:-2])
    elif narrow and th.pow2_lanes(row, lanes) > 1:
        outer = [*loops[:-2], _vectorize_narrow_rows(sch, loops[-2], th.pow2_lanes(row, lanes))]
    else:
        outer = list(loops[:-1])
        vl = th.pow2_lanes(th.extent(sch, last), lanes)
        if vl > 1:
            o, i = sch.split(last, [None, vl])
            outer.append(o)
            sch.vectorize(i)
        else:
            outer.append(last)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if work >= PARALLEL_MIN_WORK and th.extent(sch, fused) > 1:
        sch.parallel(fused)


def _vectorize_narrow_rows(sch, row, vl: int):
    """[row, narrow] -> [row / vl, narrow (unrolled), vl (vectorized)]; returns the outer loop."""
    narrow = sch.get_loops(sch.get_child_blocks(row)[-1])[-1]
    if vl == 1:
        sch.unroll(narrow)
        return row
    o, i = sch.split(row, [None, vl])
    sch.reorder(o, narrow, i)
    sch.unroll(narrow)
    sch.vectorize(i)
    return o


def schedule_padding_rows(sch, block, lanes: int) -> None:
    """A pad stage kept ahead of a depthwise kernel (reduction's pad_stage), NHWC: the border
    constant, then the interior copy without a bounds check (decompose_padding), each as
    [parallel rows, pixels, channel vectors of `lanes` 32-bit lanes' bytes]. Fused into one flat
    parallel loop (schedule_injective_block) every 4 channels paid three index divisions:
    MobileNetV2 int8's 112x112x96 int16 pad took 6 M instructions (qemu -cpu cortex-a72)."""
    loops = sch.get_loops(block)
    blocks = [block]
    if len(loops) == 4 and sch.can_decompose_padding(block, loops[0]):
        blocks.insert(0, sch.decompose_padding(block, loops[0]))
    for b in blocks:
        *outer, _, chan = sch.get_loops(b)
        vl = th.pow2_lanes(th.extent(sch, chan), lanes * 32 // th.buffer(sch.get(b).writes[0]).dtype.bits)
        if vl > 1:
            sch.vectorize(sch.split(chan, [None, vl])[1])
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if th.work(sch, b) >= PARALLEL_MIN_WORK and th.extent(sch, fused) > 1:
            sch.parallel(fused)


def schedule_injective(sch, lanes: int) -> str:
    """No reduction (elementwise, transpose, reshape, standalone pad): inline, then each block.

    A block that pads (out = in bounds ? f(in) : constant) is split in two first: the constant
    over the whole output, then f over the interior, without the bounds check. TVM vectorizes
    a select whose condition differs between lanes as scalar code, so the int8 stem's quantize +
    pad + transpose ran one byte at a time with a division each (alone, 2 threads: 89 -> 65 us,
    in a run where every other kernel measured ~1.4x slower than before)."""
    th.inline_all_but_outputs(sch, keep=set())
    for block in sch.get_child_blocks(th.root(sch)):
        name, loops = th.name(sch, block), sch.get_loops(block)
        if loops and sch.can_decompose_padding(block, loops[0]):
            schedule_injective_block(sch, sch.decompose_padding(block, loops[0]), lanes)
            block = sch.get_sblock(name)
        schedule_injective_block(sch, block, lanes)
    return "generic"


class InjectiveRule(Rule):
    """Functions without a reduction block (schedule_injective)."""

    name = "injective"

    def schedule(self, sch, target: RuleTarget) -> str:
        if th.reduction_blocks(sch):
            raise NotRecognised("the function has a reduction")
        return schedule_injective(sch, target.lanes)
