"""Weight prepacking: conv2d/dense weights stored blocked by the kernel's output-channel tile.

An HWIO conv weight (or a KxN matmul weight) is contiguous along the output channel, but one
register tile of the reduction rule reads only its nv*vl channels of every (kh, kw, ci) row: rows
O*4 bytes apart. For a 3x3x512x512 weight that is 4608 rows spread over 9.4 MB per tile, a TLB
and cache-line miss each (ResNet-18's last stage measured 22 GFLOPS). Stored as
(O/B, KH, KW, I, B), B = the tile's channel count, a tile reads one contiguous slice instead
(the same kernel: 48 GFLOPS), which is what ONNX Runtime's and XNNPACK's packed weights do.

Mechanism in three steps, all at compile time (the artifact ships the packed constants):
1. TVM's AttachAttrLayoutFreeBuffers (the last of passes.run_graph_passes) lists, per PrimFunc,
   the params that are Relax constants at every call site ("layout_free_buffers");
2. pack_last_axis (called by the reduction rule): transform_layout of such a param buffer,
   (..., O) -> (O // B, ..., O % B); the PrimFunc's signature changes, nothing is copied at run
   time. A record of the tuning database replays the same step (it is in the trace);
3. repack_constants: every call site whose constant no longer matches its param's shape gets
   the constant rearranged the same way (numpy, once).
"""

from __future__ import annotations

import numpy as np

from edgecls.compile.tvm.core import load_tvm

LAYOUT_FREE_ATTR = "layout_free_buffers"
C4 = 4  # input channels per sdot lane group (pack_c4)


def _constant_param(sch, buffer) -> bool:
    """Is `buffer` a param of the scheduled function that is a constant at every call site?"""
    func = sch.mod["main"]
    free = [int(i) for i in ((func.attrs or {}).get(LAYOUT_FREE_ATTR) or [])]
    return any(func.params[i].same_as(buffer) for i in free if i < len(func.params))


def pack_last_axis(sch, block, buffer, block_size: int) -> bool:
    """Block the last axis of a constant param read by `block` into (O // B, ..., B).
    False (nothing done) when the buffer is not a constant param or B does not divide O."""
    shape = [int(d) for d in buffer.shape]
    if block_size < 2 or not shape or shape[-1] % block_size or shape[-1] == block_size \
            or not _constant_param(sch, buffer):
        return False
    b = block_size
    sch.transform_layout(block, buffer, lambda *idx: (idx[-1] // b, *idx[:-1], idx[-1] % b))
    return True


def pack_c4(sch, block, buffer, block_size: int, blocked: bool) -> bool:
    """Lay a constant weight param read by `block` out as (O // B, .., I // 4, B, 4): blocked by
    the tile's B output channels (as pack_last_axis, which ran first: `blocked` says whether it
    left the buffer (O // B, .., I, B) or, for O == B, as it was) and interleaved by groups of
    4 input channels, so 16 consecutive bytes are one sdot operand of 4 output channels x 4
    input channels (isa/neon_dot.py). Always two dimensions more than the param had, so
    repack_constants cannot mistake it for pack_last_axis's layout. False (nothing done) when the
    buffer is not a constant param or the shapes do not divide."""
    shape = [int(d) for d in buffer.shape]
    b = block_size
    if len(shape) < 2 or shape[-2] % C4 or shape[-1] % b or not _constant_param(sch, buffer):
        return False
    if blocked:
        sch.transform_layout(block, buffer, lambda *i: (*i[:-2], i[-2] // C4, i[-1], i[-2] % C4))
    else:  # O == B: add the (unit) block dimension too
        sch.transform_layout(block, buffer, lambda *i: (i[-1] // b, *i[:-2], i[-2] // C4, i[-1] % b, i[-2] % C4))
    return True


def pack_taps_inside(sch, block, buffer, k: int) -> None:
    """pack_c4's (O // B, KH, KW, I // 4, B, 4) conv weight as (O // B, KH, I // k, KW, k // 4,
    B, 4): the kernel-width taps inside each step of k input channels, as neon_dot's loop nest
    reads them when it unrolls the taps inside the step loop; a step's weights for all taps are
    then one contiguous run (ldp pairs at small offsets: with KW outside, taps I * B bytes apart
    were past ldp's reach from 128 input channels on, one ldr q each)."""
    g = k // C4
    sch.transform_layout(block, buffer, lambda o, kh, kw, i, b, c: (o, kh, i // g, kw, i % g, b, c))


def taps_inside_array(a: np.ndarray, block_size: int, k: int) -> np.ndarray:
    """(KH, KW, I, O) -> (O // B, KH, I // k, KW, k // 4, B, 4), the layout pack_taps_inside gives."""
    c4 = c4_array(a, block_size)
    o, kh, kw, i4, b, c = c4.shape
    moved = c4.reshape(o, kh, kw, i4 * C4 // k, k // C4, b, c)
    return np.ascontiguousarray(np.swapaxes(moved, 2, 3))


def taps_inside_shape(shape: list[int], block_size: int, k: int) -> list[int]:
    kh, kw, i, o = shape
    return [o // block_size, kh, i // k, kw, k // C4, block_size, C4]


def c4_array(a: np.ndarray, block_size: int) -> np.ndarray:
    """(.., I, O) -> (O // B, .., I // 4, B, 4), the layout pack_c4 gives the buffer."""
    packed = pack_array(a, block_size)
    moved = packed.reshape(*packed.shape[:-2], packed.shape[-2] // C4, C4, block_size)
    return np.ascontiguousarray(np.swapaxes(moved, -1, -2))


def c4_shape(shape: list[int], block_size: int) -> list[int]:
    return [shape[-1] // block_size, *shape[:-2], shape[-2] // C4, block_size, C4]


def packed_shape(shape: list[int], block_size: int) -> list[int]:
    return [shape[-1] // block_size, *shape[:-1], block_size]


def pack_array(a: np.ndarray, block_size: int) -> np.ndarray:
    """(..., O) -> (O // B, ..., B), the layout pack_last_axis gives the buffer."""
    moved = a.reshape(*a.shape[:-1], a.shape[-1] // block_size, block_size)
    return np.ascontiguousarray(np.moveaxis(moved, -2, 0))


def _blocked(have: list[int], want: list[int]) -> int | None:
    """The block size B if `want` is pack_last_axis's layout of `have`, else None."""
    if len(want) != len(have) + 1 or not have:
        return None
    b = want[-1]
    return b if b > 1 and want == packed_shape(have, b) else None


def _repacker(have: list[int], want: list[int]):
    """The numpy rearrangement from a constant of shape `have` to its packed param's `want`
    (pack_last_axis or pack_c4), or None."""
    b = _blocked(have, want)
    if b:
        return lambda a: pack_array(a, b)
    b = want[-2] if len(have) >= 2 and len(want) == len(have) + 2 else 0
    if b > 1 and have[-1] % b == 0 and have[-2] % C4 == 0 and want == c4_shape(have, b):
        return lambda a: c4_array(a, b)
    if len(have) == 4 and len(want) == 7:
        b, k = want[-2], want[-3] * C4
        if b > 1 and have[-1] % b == 0 and have[-2] % k == 0 and want == taps_inside_shape(have, b, k):
            return lambda a: taps_inside_array(a, b, k)
    return None


def _packed_args(mod, call, call_tir) -> dict:
    """{arg index: numpy rearrangement} of the constants of a call_tir whose params were packed."""
    tvm = load_tvm()
    from tvm import relax
    if not call.op.same_as(call_tir) or not isinstance(call.args[1], relax.Tuple):
        return {}
    params = mod[call.args[0]].params
    out = {}
    for i, arg in enumerate(call.args[1].fields):
        if i < len(params) and isinstance(arg, tvm.ir.GenericConst):
            repack = _repacker([int(d) for d in arg.value.shape], [int(d) for d in params[i].shape])
            if repack:
                out[i] = repack
    return out


def repack_constants(mod):
    """Rearrange each call_tir constant whose param was packed by pack_last_axis. Returns
    (module, number of constants packed).

    The packed PrimFuncs are re-added under new GlobalVars: a GlobalVar keeps the signature of
    the function it was made for, and CallTIRRewrite checks the call's arguments against it."""
    tvm = load_tvm()
    from tvm import relax
    call_tir = tvm.ir.Op.get("relax.call_tir")
    relax_funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, relax.Function)]
    packed_gvars = set()
    for _, func in relax_funcs:
        relax.analysis.post_order_visit(func, lambda e: packed_gvars.add(e.args[0]) if isinstance(
            e, relax.Call) and _packed_args(mod, e, call_tir) else None)
    if not packed_gvars:
        return mod, 0
    base = tvm.IRModule({gv: f for gv, f in mod.functions_items() if gv not in packed_gvars},
                        attrs=mod.attrs)
    bb = relax.BlockBuilder(base)
    renamed = {gv: bb.add_func(mod[gv], gv.name_hint) for gv in packed_gvars}
    count = [0]

    @relax.expr_functor.mutator
    class _Repack(relax.PyExprMutator):
        def visit_call_(self, call):
            packs = _packed_args(mod, call, call_tir)
            if not packs:
                return call
            args = list(call.args[1].fields)
            for i, repack in packs.items():
                args[i] = relax.const(repack(args[i].value.numpy()))
            count[0] += len(packs)
            return relax.Call(call.op, [renamed[call.args[0]], relax.Tuple(args)], call.attrs, call.ty_args)

    for gv, func in relax_funcs:
        bb.update_func(gv, _Repack(mod).visit_expr(func))
    return bb.get(), count[0]
