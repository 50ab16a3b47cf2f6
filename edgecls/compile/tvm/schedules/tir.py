"""Small queries and steps over a TIR schedule that the CPU schedule rules share: names, loop
extents, block kinds, inlining; and where a register tile's accumulator lives."""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm

# Scope of the register tile's accumulator buffer (the reduction rule's, and the widening
# intrinsics' C operand). Not "local": TVM's LowerTVMBuiltin keeps only "global" constant-size
# allocations (< 1 KB) on the stack; a "local" tile became a TVMBackendAllocWorkspace call per
# tile, whose pointer LLVM cannot promote to registers across the outer reduction loops
# (depthwise 3x3 0.40 -> 0.16 ms, 1x1 16->96 at 112x112 0.98 -> 0.47). CompactBufferAllocation
# shrinks the buffer to the tile, so it is a small alloca here.
ACC_SCOPE = "global"


def root(sch):
    return sch.get_sblock(sch.mod["main"].body.block.name_hint)


def name(sch, block) -> str:
    return sch.get(block).name_hint


def is_reduction(sch, block) -> bool:
    tvm = load_tvm()
    return any(iv.iter_type == tvm.tirx.IterVar.CommReduce for iv in sch.get(block).iter_vars)


def reduction_blocks(sch) -> list[str]:
    """Names of the reduction blocks directly under the root, in order."""
    return [name(sch, b) for b in sch.get_child_blocks(root(sch)) if is_reduction(sch, b)]


def uses(expr, var) -> bool:
    tvm = load_tvm()
    return any(v.same_as(var) for v in tvm.tirx.analysis.undefined_vars(expr))


def buffer(region):
    # 0.27 made block read/write regions tvm.ir.TensorRegion (buffer under .source).
    return region.source if hasattr(region, "source") else region.buffer


def extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def pow2_lanes(extent: int, lanes: int) -> int:
    """Largest power of two <= lanes dividing extent: a split that never needs a tail."""
    while lanes > 1 and extent % lanes:
        lanes //= 2
    return lanes


def inline_all_but_outputs(sch, keep: set[str]) -> None:
    """compute_inline every block that does not write a function output (padding, the
    intermediate steps of an epilogue chain). A block that cannot be inlined stays."""
    outputs = {name(sch, b) for b in sch.get_output_blocks(root(sch))}
    for block in list(sch.get_child_blocks(root(sch))):
        label = name(sch, block)
        if label in keep or label in outputs:
            continue
        try:
            sch.compute_inline(block)
        except Exception:  # noqa: BLE001, S110  (ScheduleError: the caller checks what is left)
            pass


def work(sch, block) -> int:
    n = 1
    for loop in sch.get_loops(block):
        n *= extent(sch, loop)
    return n
