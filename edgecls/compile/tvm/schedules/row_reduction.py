"""Row-wise normalisations: softmax (max, sum of exp, divide) and LayerNorm (mean, variance,
scale) along one contiguous innermost axis, with what Relax fused around them.

Before this rule the parallel-only fallback (multi_reduction.py) took them: every block a
separate pass over the whole tensor, scalar, the exponentials written out in full and read
back. Here each row is one unit of work (TVM dlight's GPU "one row per thread block" idea, on
CPU threads): the rows fused and parallel, every block computed inside the row loop (a
softmax's exponentials then live in a one-row buffer that stays in L1), each reduction split
into `lanes` partial results (rfactor) so that it runs in vectors, each elementwise step
vectorized. A row that is not a whole number of vectors (ViT's 197 tokens) runs its last
elements in a scalar tail loop.

Applies when, after inlining every single-consumer step, the output block's leading loops are
the rows, each reduction block has exactly those rows as its spatial iterators and one
reduction iterator (the row's length), and every other block is row-wise (per row, or per row
element). A conv (several reduction axes), a dense (output columns besides the rows) or a
pooling over two axes is never this rule's.
"""

from __future__ import annotations

import math

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.rule import PARALLEL_MIN_WORK, NotRecognised, Rule, RuleTarget


def _inline_single_consumer_steps(sch) -> None:
    """compute_inline each elementwise block read by one block only. A block read by several
    (a softmax's exponentials: summed, then divided) stays, so nothing is computed twice."""
    outputs = {th.name(sch, b) for b in sch.get_output_blocks(th.root(sch))}
    for block in list(sch.get_child_blocks(th.root(sch))):
        label = th.name(sch, block)
        if label in outputs or th.is_reduction(sch, block) or len(sch.get_consumers(block)) != 1:
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001, S110  (ScheduleError: the block stays, checked below)
            pass


def _row_shape(sch) -> tuple[int, list[int], int]:
    """(number of row loops, their extents, the row length) the function is made of, or raises
    NotRecognised."""
    tvm = load_tvm()
    blocks = sch.get_child_blocks(th.root(sch))
    reductions = [b for b in blocks if th.is_reduction(sch, b)]
    if not reductions or th.name(sch, blocks[-1]) not in {th.name(sch, b) for b in sch.get_output_blocks(th.root(sch))}:
        raise NotRecognised("no reduction, or the last block is not the output")
    out_extents = [th.extent(sch, loop) for loop in sch.get_loops(blocks[-1])]
    n_rows, length = len(out_extents) - 1, out_extents[-1] if out_extents else 0
    if n_rows < 1 or length < 2:
        raise NotRecognised("the output has no row axis")
    rows = out_extents[:n_rows]
    for block in blocks:
        iters = sch.get(block).iter_vars
        extents = [th.extent(sch, loop) for loop in sch.get_loops(block)]
        if len(extents) != len(iters) or extents[:n_rows] != rows:
            raise NotRecognised("a block is not over the same rows")
        kinds = [iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in iters]
        if th.is_reduction(sch, block):
            ok = len(iters) == n_rows + 1 and kinds[-1] and not any(kinds[:-1]) and extents[-1] == length
        else:
            ok = len(iters) == n_rows or (len(iters) == n_rows + 1 and extents[-1] == length)
        if not ok:
            raise NotRecognised("a block is not row-wise")
    return n_rows, rows, length


def _vectorize_spatial(sch, loop, lanes: int) -> None:
    """The row's elements in vectors of `lanes`, the rest (length % lanes) in a scalar tail."""
    length = th.extent(sch, loop)
    whole = length - length % lanes
    if whole == 0:
        return
    if whole != length:
        loop = sch.loop_partition(loop, [whole, None])[0]
    sch.vectorize(sch.split(loop, [None, lanes])[1])


def _split_reduction(sch, block, lanes: int, n_rows: int) -> str | None:
    """A reduction over the row as `lanes` partial results (rfactor: a block updating a vector
    of them per step, then a short scalar loop combining them). Returns the partial block's
    name, or None for a row shorter than two vectors or not a whole number of them (left
    scalar). Why not a tail: split by `lanes` guards the last step with `k < length`, and
    compute_at then dropped that guard from the partial block (read past the row: ViT's 197
    tokens gave wrong sums); decomposing the init and partitioning the steps hit it too."""
    loop = sch.get_loops(block)[-1]
    length = th.extent(sch, loop)
    if length < 2 * lanes or length % lanes:
        return None
    rf = sch.rfactor(sch.split(loop, [None, lanes])[1], factor_axis=n_rows)
    return th.name(sch, rf)


def _vectorize_partials(sch, block) -> None:
    """The partial-results block's loops [row, lanes, units..., steps] -> [row, steps, units...,
    lanes (vectorized)]."""
    lanes_loop, steps = sch.get_loops(block)[1], sch.get_loops(block)[-1]
    sch.reorder(steps, lanes_loop)
    sch.vectorize(lanes_loop)


def schedule_rows(sch, lanes: int) -> str:
    """Rows fused and parallel, every block computed per row, reductions and elementwise steps
    vectorized along the row."""
    _inline_single_consumer_steps(sch)
    n_rows, rows, length = _row_shape(sch)
    partials = {_split_reduction(sch, b, lanes, n_rows) for b in sch.get_child_blocks(th.root(sch))
                if th.is_reduction(sch, b)} - {None}
    blocks = sch.get_child_blocks(th.root(sch))
    out_loops = sch.get_loops(blocks[-1])
    row = sch.fuse(*out_loops[:n_rows]) if n_rows > 1 else out_loops[0]
    for block in reversed(blocks[:-1]):
        sch.compute_at(block, row, preserve_unit_loops=True)
    if math.prod(rows) > 1 and math.prod(rows) * length >= PARALLEL_MIN_WORK:
        sch.parallel(row)
    for block in list(sch.get_child_blocks(row)):
        if th.name(sch, block) in partials:
            _vectorize_partials(sch, block)
        elif not th.is_reduction(sch, block) and len(sch.get(block).iter_vars) > n_rows:
            _vectorize_spatial(sch, sch.get_loops(block)[-1], lanes)
    return "generic"


class RowReductionRule(Rule):
    """Softmax, LayerNorm and the like: reductions and elementwise steps along one innermost
    row axis (schedule_rows)."""

    name = "row-reduction"

    def schedule(self, sch, target: RuleTarget) -> str:
        if target.lanes < 2:
            raise NotRecognised("no SIMD")
        return schedule_rows(sch, target.lanes)
