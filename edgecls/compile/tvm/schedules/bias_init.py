"""The int32 bias as the accumulator's initial value: after scheduling, a reduction whose only
readers add a per-channel constant param to it starts from that param instead of 0.

quant.int8 gives every conv/dense `acc + bias_i32` (its own bias minus the zero-point
correction). The schedules keep the sum in registers and fuse the add into the epilogue: per 4
outputs a `movi` to zero the accumulator and an `add` of the bias vector after the MACs. With the
bias as the initial value the zeroing becomes a copy of the bias vector (one load per tile column,
shared by its rows) and the add goes: 1 of about 8 epilogue instructions per 4 outputs, which
the low-K 1x1 convs of MobileNetV2 pay as often as their sdots. Integer addition is associative
(two's complement wraps the same in any order), so every output stays bit-exact. Measured
(qemu 7.2 -cpu cortex-a76, one thread, jetson-orin-nano builds, instructions per inference):
MobileNetV2 int8 51.3 -> 50.0 M, ResNet-18 int8 158.4 -> 157.0 M.

On ARMv8.0 (rk3399's smull kernels) too: MobileNetV2 int8
92.80 -> 91.49 M (qemu 7.2 -cpu cortex-a72), fewer even where one smull call takes all input
channels (24 -> 144 conv 8.16 -> 7.79 M: the bias vector's copy is a register move LLVM
schedules, its add was a step after the MAC chain).

Only on aarch64 targets (the x86 artifacts stay byte-identical), only where every read of the
accumulator outside its init block is such an add, with the same param at the same channel.
"""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm


def _index_map(acc_idx, bias_idx):
    """For each index of the bias load: the position of the same variable in the accumulator's
    index, or None for a constant 0; None overall when neither."""
    tvm = load_tvm()
    out = []
    for j in bias_idx:
        if isinstance(j, tvm.tirx.IntImm) and int(j.value) == 0:
            out.append(None)
            continue
        pos = [d for d, i in enumerate(acc_idx) if i.same_as(j)]
        if not pos:
            return None
        out.append(pos[0])
    return tuple(out)


class _Finder:
    """The accumulators (int32 buffers stored 0 by an "_init" block) and, per accumulator, the
    bias adds that read it and how many plain loads of it there are."""

    def __init__(self, params):
        self.params, self.inits, self.adds, self.loads = params, {}, {}, {}

    def visit(self, node, visitor):
        self.note(node)
        visitor.default_visit(node)

    def note(self, node):
        tvm = load_tvm()
        tx, Load = tvm.tirx, tvm.ir.expr.TensorLoad  # what tirx.BufferLoad(...) builds
        from tvm import s_tir
        if isinstance(node, s_tir.SBlock) and node.name_hint.endswith("_init") \
                and isinstance(node.body, tx.BufferStore):
            value = node.body.value
            if isinstance(value, tx.IntImm) and str(value.ty.dtype) == "int32" and int(value.value) == 0:
                self.inits[node.body.buffer] = node
        elif isinstance(node, tx.Add):
            for acc, bias in ((node.a, node.b), (node.b, node.a)):
                if (isinstance(acc, Load) and isinstance(bias, Load)
                        and any(bias.source.same_as(p) for p in self.params)):
                    mapping = _index_map(acc.indices, bias.indices)
                    if mapping is not None:
                        self.adds.setdefault(acc.source, []).append((node, bias.source, mapping))
        elif isinstance(node, Load):
            self.loads[node.source] = self.loads.get(node.source, 0) + 1

    def foldable(self) -> dict:
        """{accumulator: (bias buffer, index mapping)} where the fold is exact."""
        out = {}
        for acc in self.inits:
            adds = self.adds.get(acc, [])
            kinds = {(b, m) for _, b, m in adds}
            if adds and len(kinds) == 1 and self.loads.get(acc, 0) == len(adds):
                out[acc] = next(iter(kinds))
        return out


def _fold(func):
    """func with each foldable accumulator initialised to its bias (module doc), or func."""
    tvm = load_tvm()
    import tvm_ffi
    tx = tvm.tirx
    from tvm import s_tir
    finder = _Finder(list(func.params))
    tvm_ffi.structural_visit(func.body, [(t, finder.visit) for t in (s_tir.SBlock, tx.Add, tvm.ir.expr.TensorLoad)])
    fold = finder.foldable()
    if not fold:
        return func

    def bias_load(acc, indices):
        bias, mapping = fold[acc]
        zero = tx.IntImm(str(indices[0].ty.dtype), 0)
        return tx.BufferLoad(bias, [zero if m is None else indices[m] for m in mapping])

    def block(node, mutator):
        node = mutator.default_mutate(node)
        store = node.body
        if node.name_hint.endswith("_init") and isinstance(store, tx.BufferStore) and store.buffer in fold:
            load = bias_load(store.buffer, store.indices)
            region = [tvm.ir.Range.from_min_extent(i, 1) for i in load.indices]
            reads = [*node.reads, tx.BufferRegion(load.source, region)]
            new_store = tx.BufferStore(store.buffer, load, store.indices)
            return s_tir.SBlock(node.iter_vars, reads, node.writes, node.name_hint, new_store, node.init,
                                node.alloc_buffers, node.match_buffers, node.annotations)
        return node

    def add(node, mutator):
        Load = tvm.ir.expr.TensorLoad
        for acc, other in ((node.a, node.b), (node.b, node.a)):
            if isinstance(acc, Load) and acc.source in fold and isinstance(other, Load) \
                    and other.source.same_as(fold[acc.source][0]):
                return acc
        return mutator.default_mutate(node)

    return func.with_body(tvm_ffi.structural_mutate(func.body, [(s_tir.SBlock, block), (tx.Add, add)]))


def fold_bias_into_init(mod, tvm_target: dict):
    """Every PrimFunc of `mod` with its bias folded into its accumulator's init (module doc) on an
    aarch64 target; (mod, number of functions changed)."""
    tvm = load_tvm()
    if not str(tvm_target.get("mtriple", "")).startswith("aarch64"):
        return mod, 0
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            new = _fold(func)
            if not new.same_as(func):
                updates[gvar] = new
    if updates:
        mod = mod.clone()
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
    return mod, len(updates)
