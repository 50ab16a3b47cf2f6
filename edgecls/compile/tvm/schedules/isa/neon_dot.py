"""The ARMv8.2 dotprod tensor intrinsic over c4-packed weights: k input channels x 4 output
channels of one pixel, summed into the tile's accumulator by sdot by lane.

XNNPACK's qs8/qc8 "c4" GEMM microkernels (e.g. 4x16c4 neondot) keep the weights packed so that
16 consecutive bytes are exactly one sdot operand: 4 output channels x 4 consecutive input
channels, [o0: k0..k3, o1: k0..k3, o2: .., o3: ..]. The activations of a pixel come in one
vector load (8 or 16 bytes) and sdot takes each group of 4 by lane (sdot v.4s, w.16b, x.4b[g]).
The weight buffer this intrinsic reads has that layout (neon_dot.py's rule transforms the
prepacked HWIO weight to [.., I/4, O, 4]; prepack.repack_constants rearranges the constant at
compile time): no shuffle of the weights in registers, one `ldr q` per 16 MACs per lane group,
shared by every row of the register tile (LLVM folds the repeated loads of an unrolled tile).

Before (isa/neon.py's _dot_by_lane on weights blocked by 4 channels, [k, 4]): one tbl per group
and vector to transpose the weights, tiles one vector wide, so each activation load fed 4 sdot.
"""

from __future__ import annotations

import functools

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules.isa.common import C4_GROUP, c4_prim_func

LANES = 4  # output channels per call: one int32x4 accumulator
GROUP = C4_GROUP  # input channels per sdot lane
K = (16, 8, 4)  # input channels per call, the widest that divides the kernel's count first


def dot_c4(A, B, acc, k: int):
    """acc + sum_r A[r] * B[r // 4, :, r % 4], r < k: the k activations in one load (ldr q/d/s),
    one sdot by lane per group of 4 against that group's 16 weight bytes (ldr q)."""
    from tvm import tirx
    zero = tirx.IntImm("int64", 0)
    x = tirx.reinterpret(f"int32x{k // GROUP}", A.vload([zero], f"int8x{k}"))
    for g in range(k // GROUP):
        x_g = x if k == GROUP else tirx.Shuffle([x], [g])
        x_g = tirx.reinterpret("int8x16", tirx.Broadcast(x_g, LANES))  # LLVM: sdot by element
        w_g = B.vload([tirx.IntImm("int64", g), zero, zero], "int8x16")
        acc = tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, w_g, x_g)
    return acc


def _prim_func(k: int, implement: bool):
    """The c4 intrinsic over k int8 activations and the weight's [k / 4, 4, 4] c4 block."""
    return c4_prim_func(k, LANES, "int8", lambda A, B, acc: dot_c4(A, B, acc, k), implement)


@functools.cache
def dot_c4_intrin(k: int) -> str:
    """Register (once) and name the c4 sdot intrinsic of k input channels."""
    load_tvm()
    from tvm.s_tir import TensorIntrin
    name = f"edgecls_neon_dot_c4_k{k}"
    TensorIntrin.register(name, _prim_func(k, False), _prim_func(k, True), override=True)
    return name
