"""The reduction rule: conv2d (regular, pointwise, depthwise), dense and pooling kernels with a
single reduction block, scheduled from their loop/access structure alone.

TVM 0.27's CPU pipeline lowers every kernel as the naive TE loop nest: no parallel loop (so
TVM_NUM_THREADS does nothing), no vectorization and an accumulator that lives in memory. Tuning
(MetaSchedule) fixes that but costs hours per network; this rule, in the spirit of the GPU
"dlight" rules, picks one reasonable schedule per kernel.

Everything is derived from the access pattern of the kernel's single reduction block, never from
the op name, so one rule covers regular, pointwise and depthwise conv2d, dense and pooling:

* vector axis   = the spatial iterator indexing the output's innermost dimension (the output
                  channel for NHWC); vectorized at the SIMD width of the target;
* vector operand= the read whose innermost index is that iterator (the HWIO weight, or the input
                  of a depthwise conv / pool): contiguous vector loads;
* register axis = a spatial iterator the vector operand does not depend on (output width for a
                  conv): blocking it reuses each loaded vector for several FMAs;
* the register tile (rb x nv vectors) accumulates in a tile-sized buffer (a stack array LLVM
  keeps in registers, see tir.ACC_SCOPE), padding is inlined into the
  loads, the elementwise epilogue (bias, ReLU/ReLU6, residual add) runs on the tile while it is
  hot, and the fused outer spatial loops run in parallel.

The op name only labels the result (the stats key): "conv2d", "depthwise", "dense", "generic".
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.injective import schedule_injective_block, schedule_padding_rows
from edgecls.compile.tvm.schedules.prepack import pack_last_axis
from edgecls.compile.tvm.schedules.rule import PARALLEL_MIN_WORK, NotRecognised, Rule, RuleTarget

# Vector accumulators in the register tile. AVX2 has 16 ymm registers: 12 accumulators, two
# weight vectors and the broadcast input fit; 14 made LLVM spill the whole tile every iteration.
MAX_ACCUMULATORS = 12
# AVX-512 has 32 zmm registers: a conv2d with its own pad stage takes up to 24 accumulators
# (ResNet-18's 7x7 maps 7 rows x 2 vectors instead of 7 x 1, 56x56 8 x 2 instead of 4 x 2:
# fewer weight loads per FMA). ResNet-18 fp32, AMD EPYC Zen 4, paired A/B: 0.954x at 1 and at 2 threads.
AVX512_MAX_ACCUMULATORS = 24
# Kinds whose zero padding is inlined into the loads instead of running as its own stage.
# Depthwise: inlined measured faster (no extra pass over its large inputs); regular convs: a
# separate pad stage measured faster (no bounds check per input channel in the inner loop).
INLINE_PAD_KINDS = ("depthwise",)
INLINE_PAD_MAX_CIN = 4  # ... and regular convs over this few input channels
# A conv2d/dense whose whole weight is at most this many bytes splits its threads' work by
# pixel rows, like the depthwise conv that reads its output, not by output channels: with the
# split by channels every thread wrote part of every pixel, so the next kernel (split by rows)
# read half its input from the other core's cache. The weight is small enough to stay hot in
# each core anyway. Pruned MobileNetV2 int8, 2 threads: 1.55 -> 1.29 ms; one thread unchanged.
OWN_WEIGHT_SLICE_BYTES = 64 << 10
# On x86 every core has an L2 of its own (512 KB Zen 3, 1 MB Zen 4, 2 MB Sapphire Rapids) and
# reads the other core's output through L3, so the split by channels costs more there: the
# MobileNetV2 expand/project convs at 14x14 and 7x7 (weights 98 KB - 1.2 MB) split by channels
# between depthwise convs split by rows ran slower on 2 threads than on 1 (AMD EPYC Zen 4:
# 14x14x384 depthwise 24 -> 43 us a call). Split by rows up to this weight size on x86.
X86_OWN_WEIGHT_SLICE_BYTES = 1536 << 10


@dataclass
class ReductionBlock:
    """The reduction block's iterators mapped to its loops, with the vector and register axes
    (`analyse`; indices are into `loops` and `iters`, one loop per iterator)."""
    loops: list  # LoopRVs, TE's order
    iters: list  # the block's IterVars
    spatial: list[int]  # the data-parallel iterators
    vec: int  # vector axis: the spatial iterator indexing the output's innermost dimension
    reg: int | None  # register axis: a spatial iterator the vector operand does not depend on
    operand: object  # the vector operand's buffer (contiguous along the vector axis)
    reads_with_vec: int  # operands (not the output) whose access depends on the vector axis
    n_reads: int  # operands (not the output)

    def kind(self, name: str) -> str:
        """The stats key: "conv2d", "depthwise", "dense" or "generic" (pooling and the rest)."""
        if "conv" in name:
            # Depthwise: every operand (input and weight) follows the output channel.
            return "depthwise" if self.n_reads > 1 and self.reads_with_vec == self.n_reads else "conv2d"
        if "matmul" in name or "dense" in name:
            return "dense"
        return "generic"


def analyse(sch, block) -> ReductionBlock:
    """Map the reduction block's iterators to loops and find the vector and register axes."""
    tvm = load_tvm()
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    iters = list(stmt.iter_vars)
    # The rule relies on TE's one-loop-per-iterator nest; anything else is not ours to touch.
    if len(loops) != len(iters) or len(stmt.writes) != 1:
        raise NotRecognised("loop nest is not one loop per block iterator")
    for loop, iv in zip(loops, iters):
        if th.extent(sch, loop) != int(iv.dom.extent):
            raise NotRecognised("loop extents differ from iterator domains")
    spatial = [i for i, iv in enumerate(iters) if iv.iter_type == tvm.tirx.IterVar.DataPar]
    out_idx = [r.min for r in stmt.writes[0].region]
    vec = next((i for i in spatial if iters[i].var.same_as(out_idx[-1])), None)
    if vec is None:
        raise NotRecognised("the output's innermost index is not a plain spatial iterator")
    out_buf = th.buffer(stmt.writes[0])
    reads = [r for r in stmt.reads if not th.buffer(r).same_as(out_buf)]
    operand = next((r for r in reads if r.region and th.uses(r.region[-1].min, iters[vec].var)
                    and r.region[-1].min.same_as(iters[vec].var)), None)
    if operand is None:
        # e.g. NCHW/OIHW: no operand is contiguous along the output's innermost axis, so vector
        # loads would be gathers (measured slower than scalar code on MobileNetV2). The rule
        # table falls back to the parallel-only rule (multi_reduction).
        raise NotRecognised("no operand is contiguous along the vector axis")
    # A spatial axis the vector operand does not depend on: each loaded vector is reused for
    # every position of that axis. Prefer the output's second-innermost (conv width).
    free = [i for i in spatial if i != vec and int(iters[i].dom.extent) > 1
            and not any(th.uses(r.min, iters[i].var) for r in operand.region)]
    second = [i for i in free if len(out_idx) > 1 and iters[i].var.same_as(out_idx[-2])]
    reg = (second or free or [None])[0]
    reads_with_vec = sum(1 for r in reads if any(th.uses(x.min, iters[vec].var) for x in r.region))
    return ReductionBlock(loops, iters, spatial, vec, reg, th.buffer(operand), reads_with_vec, len(reads))


def _is_padding(sch, block) -> bool:
    """A producer that changes the shape (zero padding), as opposed to a plain copy."""
    stmt = sch.get(block)
    if len(stmt.writes) != 1 or len(stmt.reads) != 1:
        return False
    out, src = th.buffer(stmt.writes[0]), th.buffer(stmt.reads[0])
    return [int(d) for d in out.shape] != [int(d) for d in src.shape]


def _isolate(sch, block, kind: str, operand, inline_pad_cin: int,
             pad_stage: bool = False) -> tuple[object, list[str], object]:
    """Inline the producers (all but a padding stage the kind keeps) and every epilogue step but
    the last; give the reduction its tile-sized accumulator. Returns (the reduction block, the
    names of the producers kept, the epilogue block that writes the output)."""
    main = th.name(sch, block)
    # Padding inlined into the conv puts a bounds check on every load of the inner loop (and
    # for regular convs a branch per register-tile row per input channel); as a separate
    # parallel, vectorized copy it costs one pass over the input. Copies are always inlined.
    keep = {main}
    # A first conv over RGB (3 input channels) is the exception: its 27 taps per output are too
    # few to pay for a separate pass over the image (measured 1.07 -> 0.65 ms inlined, 224x224).
    if pad_stage or (kind not in INLINE_PAD_KINDS and int(operand.shape[-2]) > inline_pad_cin):
        keep |= {th.name(sch, p) for p in sch.get_producers(block) if _is_padding(sch, p)}
    th.inline_all_but_outputs(sch, keep=keep)
    children = sch.get_child_blocks(th.root(sch))
    names = [th.name(sch, b) for b in children]
    producers, others = names[:names.index(main)], children[names.index(main) + 1:]
    block = sch.get_sblock(main)
    if len(others) > 1:
        raise NotRecognised(f"{len(others)} blocks after the reduction after inlining")
    if any(p not in keep for p in producers):
        raise NotRecognised("a producer of the reduction could not be inlined")
    # Accumulate in a tile-sized buffer (ACC_SCOPE): LLVM keeps it in registers once the tile is
    # unrolled, where an accumulator in the output (or a full-size intermediate) is reloaded
    # every iteration.
    if others:
        sch.set_scope(block, 0, th.ACC_SCOPE)
        return block, producers, others[0]
    return block, producers, sch.cache_write(block, 0, th.ACC_SCOPE)


def register_tile(vext: int, vl: int, rext: int, prefer_rows: bool, max_vectors: int = MAX_ACCUMULATORS,
                  max_accumulators: int = MAX_ACCUMULATORS) -> tuple[int, int]:
    """(rb, nv): the register tile, rb rows x nv vectors of vl lanes, for a vector axis of vext
    and a register axis of rext (1: none).

    The most accumulators within budget, with no tail (rb divides the register axis, nv*vl the
    vector axis); ties go to more vectors per row (or, prefer_rows, to more rows). Without a
    register axis (a matmul of one row) the vectors are the only independent accumulators: any
    divisor of the vector count (1000 = 8 x 5 x 25 channels: 5; one accumulator left each FMA
    waiting on the last, 4 GFLOPS). max_vectors caps nv (a kernel whose weight block must be
    one vector wide). max_accumulators: the tile's vector budget (MAX_ACCUMULATORS, AVX2's)."""
    best = (0, 0, 1, 1)
    for nv in ((2, 1) if rext > 1 else range(MAX_ACCUMULATORS // 2, 0, -1)):
        if vext % (vl * nv) or nv > max_vectors:
            continue
        rb = max(d for d in range(1, min(rext, max_accumulators // nv) + 1) if rext % d == 0)
        best = max(best, (rb * nv, -nv if prefer_rows else nv, rb, nv))
    if rext > 1 and best[2] == 1:
        # A prime row (SqueezeNet's 13x13 maps) leaves one row: then the vectors alone make the
        # accumulators, as without a register axis. Measured (AMD EPYC Zen 4, 1 thread): the
        # 512->1000 1x1 conv at 13x13 ran 1 row x 2 vectors at 7.9 GMAC/s, 56% of the net.
        return register_tile(vext, vl, 1, prefer_rows, max_vectors)
    return best[2], best[3]


def _tile_loops(sch, block, red: ReductionBlock, kind: str, vl: int, rb: int, nv: int,
                own_slice_bytes: int = OWN_WEIGHT_SLICE_BYTES):
    """Split, order, fuse and annotate the loop nest: [parallel tiles, reduction loops, rb rows
    (unrolled), nv vectors (unrolled), vl lanes (vectorized)]. Returns (the parallel tile loop,
    the reduction loops)."""
    loops, iters, spatial, vec, reg = red.loops, red.iters, red.spatial, red.vec, red.reg
    v_o, v_m, v_l = sch.split(loops[vec], [None, nv, vl])
    outer = []
    inner = []
    if reg is not None and rb > 1:
        r_o, r_i = sch.split(loops[reg], [None, rb])
        inner.append(r_i)
    for i in spatial:
        if i != vec:
            outer.append(r_o if (i == reg and rb > 1) else loops[i])
    # conv2d/dense: output-channel block outermost, so a thread sweeps the spatial tiles with
    # one weight slice (rows of the HWIO weight) hot in L1/L2. Depthwise/pooling have no weight
    # reuse to win but read the input at the vector axis: channel block innermost keeps each
    # pixel's channels together. So does a conv whose whole weight is small (own_slice_bytes).
    if kind in ("conv2d", "dense") and _nbytes(red.operand) > own_slice_bytes:
        outer.insert(0, v_o)
    else:
        outer.append(v_o)
    reduce_loops = [loops[i] for i in range(len(iters)) if i not in spatial]
    inner += [v_m, v_l]
    # Reduction loops keep TE's order (kh, kw, ci): the input channel innermost reads the NHWC
    # input and the HWIO weight sequentially. Inside: rb rows x nv vectors, all registers.
    sch.reorder(*outer, *reduce_loops, *inner)
    tile = sch.fuse(*outer)
    if th.work(sch, block) >= PARALLEL_MIN_WORK and th.extent(sch, tile) > 1:
        sch.parallel(tile)
    for loop in inner[:-1]:
        sch.unroll(loop)
    if vl > 1:
        sch.vectorize(v_l)
    return tile, reduce_loops


def schedule_reduction(sch, block, lanes: int, prefer_rows: bool = False, tile=None,
                       inline_pad_cin: int = INLINE_PAD_MAX_CIN, max_vectors: int = MAX_ACCUMULATORS,
                       pad_stage: bool = False, epilogue_lanes: int | None = None, on_update=None,
                       own_slice_bytes: int = OWN_WEIGHT_SLICE_BYTES, stage=None,
                       max_accumulators: int = MAX_ACCUMULATORS) -> str:
    """The reduction rule (module doc) on `block`, the function's single reduction block.
    prefer_rows: register-tile ties go to more rows of one vector, for kernels whose per-vector
    weight preparation costs more than a load (the int8 widening kernels transpose or interleave
    the weight rows in registers). tile: a rule's own register-tile choice, (kind, vext, vl,
    rext) -> (rb, nv), instead of register_tile's. inline_pad_cin: regular convs over at most
    this many input channels read their zero padding inlined. max_vectors: see register_tile.
    pad_stage: keep zero padding as its own stage for every kind (INLINE_PAD_KINDS inline it
    otherwise). epilogue_lanes: the epilogue's vector width, where it divides a tile row's
    channels, instead of the update's (neon_dot.py). on_update: called with (sch, the update
    block) once its loops are tiled, before the producers are scheduled. own_slice_bytes: a
    conv2d/dense whose weight is at most this many bytes splits its threads' work by pixel rows
    (OWN_WEIGHT_SLICE_BYTES). stage: how a producer kept as its own stage is scheduled, (sch,
    block, lanes) -> None, instead of schedule_padding_rows (pad_stage) or
    schedule_injective_block. max_accumulators: register_tile's budget for a conv2d/dense that
    reads a separate padding stage (the rest keep MAX_ACCUMULATORS). Returns the stats key."""
    main = th.name(sch, block)
    red = analyse(sch, block)
    kind = red.kind(main)
    block, producers, epilogue = _isolate(sch, block, kind, red.operand, inline_pad_cin, pad_stage)
    vext = int(red.iters[red.vec].dom.extent)
    vl = th.pow2_lanes(vext, lanes)
    rext = int(red.iters[red.reg].dom.extent) if red.reg is not None else 1
    # Wider tiles only where the pad is its own stage: the 7x7 stem over RGB (padding inlined)
    # ran 2.7 -> 5.1 ms with 16 accumulators instead of 8 (AMD EPYC Zen 4, 1 thread).
    budget = max_accumulators if kind in ("conv2d", "dense") and producers else MAX_ACCUMULATORS
    rb, nv = tile(kind, vext, vl, rext) if tile else \
        register_tile(vext, vl, rext, prefer_rows, max_vectors, budget)
    tile, reduce_loops = _tile_loops(sch, block, red, kind, vl, rb, nv, own_slice_bytes)
    # Epilogue (bias, ReLU6, residual add or the plain write-back) on the tile while it is hot.
    sch.reverse_compute_at(epilogue, tile, preserve_unit_loops=True)
    wide = epilogue_lanes and (nv * vl) % epilogue_lanes == 0
    _vectorize_tail(sch, epilogue, skip=1, lanes=epilogue_lanes if wide else vl)
    if reduce_loops:
        init = sch.decompose_reduction(block, reduce_loops[0])
        _vectorize_tail(sch, init, skip=1, lanes=vl)
    if on_update is not None:
        on_update(sch, block)
    stage = stage or (schedule_padding_rows if pad_stage else schedule_injective_block)
    for name in producers:
        stage(sch, sch.get_sblock(name), lanes)
    if kind in ("conv2d", "dense"):  # the tile's weights contiguous (prepack)
        pack_last_axis(sch, block, red.operand, vl * nv)
    return kind


def _nbytes(buf) -> int:
    n = 1
    for d in buf.shape:
        n *= int(d)
    return n * buf.dtype.bits // 8


def _vectorize_tail(sch, block, skip: int, lanes: int) -> None:
    """Unroll the tile-sized loops of an init/epilogue block and vectorize its innermost one in
    vectors of exactly `lanes`: the tile buffer must be accessed with the same vector width as
    the update, or LLVM's SROA cannot split it into registers and every FMA goes through the stack.
    """
    loops = sch.get_loops(block)[skip:]
    if not loops:
        return
    last = loops[-1]
    ext = th.extent(sch, last)
    if lanes > 1 and ext % lanes == 0:
        if ext > lanes:
            o, last = sch.split(last, [None, lanes])
            loops = loops[:-1] + [o]
        else:
            loops = loops[:-1]
        sch.vectorize(last)
    else:
        loops = loops[:-1]
    for loop in loops:
        if th.extent(sch, loop) <= 16:
            sch.unroll(loop)


class ReductionRule(Rule):
    """Functions with exactly one reduction block (schedule_reduction at the target's lanes)."""

    name = "reduction"

    def schedule(self, sch, target: RuleTarget) -> str:
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1:
            raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
        budget = AVX512_MAX_ACCUMULATORS if target.lanes == 16 else MAX_ACCUMULATORS
        return schedule_reduction(sch, sch.get_sblock(reductions[0]), target.lanes,
                                  own_slice_bytes=own_slice_bytes(target), max_accumulators=budget)


def own_slice_bytes(target: RuleTarget) -> int:
    """The weight size up to which a conv2d/dense splits its threads' work by rows on `target`.
    lanes 8/16: x86 (every NEON target is aarch64, 4 lanes: isa.features.widening_isa)."""
    return X86_OWN_WEIGHT_SLICE_BYTES if target.lanes >= 8 else OWN_WEIGHT_SLICE_BYTES
