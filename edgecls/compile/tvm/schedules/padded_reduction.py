"""Reductions whose vector or register axis has no good divisor: pad them, then the reduction rule.

The reduction rule vectorizes the output's innermost axis in the widest power of two that divides
it (tir.pow2_lanes) and blocks a register axis by a divisor of its extent, so that no tail is
needed. A vision transformer's 197 tokens (ViT-Ti/16 at 224x224) divide by nothing: the attention
score matmul q @ k^T (tokens innermost) ran scalar, 4.8 ms a call, 44% of the net (AMD EPYC,
1 thread), and every token-major matmul (qkv, the MLP, attn @ v: tokens as rows) got one row of
accumulators. Padding the axis (TVM's pad_einsum: a zero-padded copy of each operand indexed by
it, the reduction over the padded extent, a copy back) makes it the reduction rule's case again.
Measured, AVX-512: q @ k^T (3, 197, 64) x (3, 64, 197) 5.65 -> 0.46 ms (tokens to whole
vectors); the MLP's 197x192 @ 192x768 1.43 -> 1.07 ms (rows to a multiple of 6: a 6x2-vector
tile; to 4: 1.56).

Only einsum-shaped blocks (matmul, dense, 1x1 stride-1 conv: every index a plain iterator) can
be padded, so convs with halos are never this rule's. Vector axis: padded when it would take
fewer than MIN_LANES lanes and is at least MIN_VECTORS vectors long (padding adds under a quarter;
a 10-class head on NEON, 10 -> 12, is left to the reduction rule as before). Register axis: padded when the tile would hold fewer than MIN_ACCUMULATORS
and padding adds at most 1/ROW_WASTE of the rows.
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.reduction import (MAX_ACCUMULATORS, analyse, own_slice_bytes, register_tile,
                                                     schedule_reduction)
from edgecls.compile.tvm.schedules.rule import PARALLEL_MIN_WORK, NotRecognised, Rule, RuleTarget

MIN_LANES = 4  # the narrowest vector the reduction rule is left to
MIN_VECTORS = 4  # a vector axis shorter than this many vectors is not padded
MIN_ACCUMULATORS = 6  # a register tile with fewer leaves each FMA waiting on the last
ROW_WASTE = 16  # pad the register axis only if it grows by at most 1/16 (197 -> 198: yes; 13 -> 18: no)


def _padded(extent: int, multiple: int) -> int:
    return -(-extent // multiple) * multiple


def _row_multiple(vext: int, vl: int, rext: int) -> int:
    """The multiple to pad the register axis to (1: leave it), given the vector axis's extent.

    A tile of one row does not count as full, however many vectors it holds: register_tile
    gives a prime row (197 tokens) its accumulators from the vectors (1 row x 6 vectors with
    AVX-512 over 576/768 channels), and each weight vector is then loaded for one FMA. ViT-tiny's
    MLP fc1 (197x192 @ 192x768) ran 1 x 6 at 1.22 ms a call; padded to 198 rows, 6 x 2: 0.62
    (AMD EPYC Zen 4, 1 thread)."""
    rb, nv = register_tile(vext, vl, rext, prefer_rows=False)
    if rb > 1 and rb * nv >= MIN_ACCUMULATORS:
        return 1
    rows = MAX_ACCUMULATORS // (2 if vext % (2 * vl) == 0 else 1)
    grown = _padded(rext, rows) - rext
    return rows if grown * ROW_WASTE <= rext else 1


class PaddedReductionRule(Rule):
    """One einsum reduction block whose vector axis would run in fewer than MIN_LANES lanes, or
    whose register tile would hold fewer than MIN_ACCUMULATORS vectors: pad (pad_einsum), then
    schedule_reduction."""

    name = "padded-reduction"

    def schedule(self, sch, target: RuleTarget) -> str:
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1 or target.lanes < MIN_LANES:
            raise NotRecognised("not one reduction block, or no SIMD")
        if not pad_odd_axes(sch, sch.get_sblock(reductions[0]), target.lanes):
            raise NotRecognised("no axis needs padding")
        return schedule_reduction(sch, sch.get_sblock(reductions[0]), target.lanes, stage=schedule_padded_copy,
                                  own_slice_bytes=own_slice_bytes(target))


def pad_odd_axes(sch, block, lanes: int, reduction_multiple: int = 1) -> bool:
    """pad_einsum the block's vector and register axes where they need it (module doc), and its
    reduction axes to a multiple of reduction_multiple (the NEON by-lane FMA takes 4 input
    channels a step: probs @ v's 197 tokens ran without it). Returns whether it padded; raises
    for a block that is not an einsum (a conv's halo)."""
    red = analyse(sch, block)
    padding = [1] * len(red.iters)
    vext = int(red.iters[red.vec].dom.extent)
    if th.pow2_lanes(vext, lanes) < MIN_LANES and vext >= MIN_VECTORS * lanes:
        padding[red.vec] = lanes
        vext = _padded(vext, lanes)
    if red.reg is not None:
        padding[red.reg] = _row_multiple(vext, th.pow2_lanes(vext, lanes), int(red.iters[red.reg].dom.extent))
    for i, iv in enumerate(red.iters):
        ext = int(iv.dom.extent)
        if i not in red.spatial and ext % reduction_multiple and ext >= MIN_VECTORS * reduction_multiple:
            padding[i] = reduction_multiple
    if all(p == 1 for p in padding):
        return False
    sch.pad_einsum(block, padding)
    return True


def schedule_padded_copy(sch, block, lanes: int) -> None:
    """A zero-padded copy of an operand (pad_einsum's): zeros over the whole buffer, then the
    operand copied in without a bounds check (decompose_padding), each as [parallel rows, whole
    vectors of the last axis, the rest]. As one flat parallel loop, the copy of attention's
    probabilities (3 x 197 x 197, rows padded to 198) ran a scalar select and two index divisions
    per element: 0.11 of probs @ v's 0.26 ms (AMD EPYC Zen 4, 1 thread)."""
    name, loops = th.name(sch, block), sch.get_loops(block)
    blocks = []
    if len(loops) > 1 and sch.can_decompose_padding(block, loops[0]):
        blocks.append(sch.decompose_padding(block, loops[0]))
    blocks.append(sch.get_sblock(name))
    for b in blocks:
        *outer, last = sch.get_loops(b)
        n, work = th.extent(sch, last), th.work(sch, b)  # (loop_partition replaces the block)
        whole = n - n % lanes
        if n % lanes and whole:  # the whole vectors, then the rest as a scalar loop
            last = sch.loop_partition(last, [whole, None])[0]
        if whole:
            sch.vectorize(sch.split(last, [None, lanes])[1])
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if work >= PARALLEL_MIN_WORK and th.extent(sch, fused) > 1:
            sch.parallel(fused)
