"""The int16 depthwise rule of aarch64 targets (ARMv8.0 and dotprod): quant.int8's depthwise
convs (int16 input and weights, operands.input_mode) vectorized 8 channels wide, each kernel
row's input window loaded once.

sdot does not help a depthwise conv (no input-channel reduction), so its MACs stay widening
int16 multiply-accumulates. With the reduction rule's 4-lane vectors LLVM loaded every tap as
two 8-byte halves (`ldr d`) and multiplied each with its own `smlal .4h`. Here the tile is
rows x vectors of 8 int16 lanes in every block of the kernel (init, taps, epilogue): one
`ldr q` per pixel feeds `smlal` + `smlal2`, and the epilogue narrows 8 lanes at once. The zero
padding stays its own stage (the taps load without bounds checks), and the tile's input window
of one kernel row (rows + taps - 1 pixels at stride 1) is cached at the kernel-row loop
(_window_in_registers): before, LLVM loaded every tap of every row on its own (the addresses
of neighbouring taps came from separate 32-bit index sums it could not prove equal) and
spilled the second half of its `ldp` pairs. Measured (qemu 7.2, one thread, instructions per
inference, MobileNetV2 int8): jetson-orin-nano (-cpu cortex-a76) 49.84 -> 48.31 M; rk3399
(-cpu cortex-a72, which had the widening rule's 8 rows x 8 channels without the window)
100.83 -> 98.60 M.

Only on aarch64, and only where 8 divides the channels.
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.isa import widening_isa
from edgecls.compile.tvm.schedules.reduction import analyse, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

LANES = 8  # int16 lanes of one NEON register
STRIDE_ONE_ROWS = 8  # _stride_one_tile's most rows (12 measured the same)


def _int16_depthwise(sch, block) -> None:
    """Raise NotRecognised unless the block is an int16 x int16 -> int32 depthwise reduction
    over a multiple of LANES channels."""
    stmt = sch.get(block)
    out = th.buffer(stmt.writes[0])
    reads = [r for r in stmt.reads if not th.buffer(r).same_as(out)]
    if str(out.dtype) != "int32" or len(reads) != 2 or any(str(th.buffer(r).dtype) != "int16" for r in reads):
        raise NotRecognised("not an int16 x int16 -> int32 reduction")
    red = analyse(sch, block)
    if red.kind(th.name(sch, block)) != "depthwise" or int(red.iters[red.vec].dom.extent) % LANES:
        raise NotRecognised("not a depthwise conv over a multiple of 8 channels")


class NeonDotDepthwiseRule(Rule):
    """int16 depthwise functions with exactly one reduction block, on an aarch64 target: the
    reduction rule at 8 lanes with its padding as a stage and the window of each kernel row
    loaded once."""

    name = "neon-dot-depthwise"

    def schedule(self, sch, target: RuleTarget) -> str:
        if widening_isa(target.lanes, target.target) != "neon":
            raise NotRecognised("not an aarch64 target")
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1:
            raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
        block = sch.get_sblock(reductions[0])
        _int16_depthwise(sch, block)
        tile = None if _strided(sch, block) else _stride_one_tile
        return schedule_reduction(sch, block, LANES, pad_stage=True, on_update=_window_in_registers, tile=tile)


def _strided(sch, block) -> bool:
    """Whether the depthwise conv reads its input at a stride (its input rows at least twice
    the output's)."""
    stmt = sch.get(block)
    out = th.buffer(stmt.writes[0])
    widths = [int(th.buffer(r).shape[-2]) for r in stmt.reads if len(th.buffer(r).shape) == 4
              and not th.buffer(r).same_as(out)]
    return any(w >= 2 * int(out.shape[-2]) for w in widths)


def _stride_one_tile(kind: str, vext: int, vl: int, rext: int) -> tuple[int, int]:
    """(rb, nv) of a stride-1 depthwise conv: up to STRIDE_ONE_ROWS rows of one 8-channel vector
    (the reduction rule's 4 x 2 kept 18 weight and 16 accumulator registers live and spilled).
    Measured (qemu 7.2 -cpu cortex-a72, one thread, instructions per inference): MobileNetV2's
    56x56x144 depthwise 2.54 -> 2.39 M, 28x28x192 1.67 -> 1.56 M; the stride-2 ones were slower
    so (56x56x96: 1.98 -> 2.05 M) and keep the rule's tile."""
    return max(d for d in range(1, min(rext, STRIDE_ONE_ROWS) + 1) if rext % d == 0), 1


def _window_in_registers(sch, update) -> None:
    """Load each kernel row's input window once: the tile's rows at every kernel-width tap read
    a window of rows + taps - 1 pixels (stride 1), cached in a local buffer at the kernel-row
    loop; with the taps unrolled LLVM keeps it in registers, so rows that read the same pixel at
    different taps share one `ldr q` (before: one load per tap and row)."""
    params = list(sch.mod["main"].params)  # TVM 0.27: the parameters are the buffers
    stmt = sch.get(update)
    out = th.buffer(stmt.writes[0])
    staged = [i for i, r in enumerate(stmt.reads)
              if not th.buffer(r).same_as(out) and not any(th.buffer(r).same_as(p) for p in params)]
    if len(staged) != 1:
        return  # no padding stage to read from: leave the loads as they are
    loops = sch.get_loops(update)  # [tile, kh, kw, c (1), rows, vectors, lanes]
    window = sch.cache_read(update, staged[0], th.ACC_SCOPE)  # a small alloca (tir.ACC_SCOPE)
    sch.compute_at(window, loops[1], preserve_unit_loops=True)
    *w_loops, channels = sch.get_loops(window)[2:]
    outer, lanes = sch.split(channels, [None, LANES])  # loads as wide as the update's vectors
    sch.vectorize(lanes)
    for lp in (*w_loops, outer):
        sch.unroll(lp)
    sch.unroll(loops[2])
