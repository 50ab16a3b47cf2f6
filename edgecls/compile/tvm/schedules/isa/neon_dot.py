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
from edgecls.compile.tvm.schedules.tir import ACC_SCOPE

LANES = 4  # output channels per call: one int32x4 accumulator
GROUP = 4  # input channels per sdot lane
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
    """The intrinsic's description (C[i] += A[r] * B[r // 4, i, r % 4], i < 4 vectorized as the
    reduction rule leaves it, r < k) or its implementation, over the same buffers: A k
    contiguous int8 activations, B the weight's [k / 4, 4, 4] c4 block (any group stride), C the
    tile's int32 accumulator in ACC_SCOPE."""
    from tvm.script import tirx as T

    groups = k // GROUP

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (T.int64(k),), "int8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(groups), T.int64(LANES), T.int64(GROUP)), "int8", offset_factor=1,
                           strides=[s0, T.int64(GROUP), T.int64(1)])
        C = T.match_buffer(c, (T.int64(LANES),), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:k], B[0:groups, 0:LANES, 0:GROUP])
            T.writes(C[0:LANES])
            if not implement:
                for i in T.vectorized(T.int64(LANES)):
                    for r in T.serial(T.int64(k)):
                        with T.sblock("update"):
                            vi, vr = T.axis.remap("SR", [i, r])
                            C[vi] = C[vi] + T.Cast("int32", A[vr]) * T.Cast("int32", B[vr // 4, vi, vr % 4])
            else:
                C[T.ramp(T.int64(0), 1, LANES)] = dot_c4(A, B, C[T.ramp(T.int64(0), 1, LANES)], k)

    return func


@functools.cache
def dot_c4_intrin(k: int) -> str:
    """Register (once) and name the c4 sdot intrinsic of k input channels."""
    load_tvm()
    from tvm.s_tir import TensorIntrin
    name = f"edgecls_neon_dot_c4_k{k}"
    TensorIntrin.register(name, _prim_func(k, False), _prim_func(k, True), override=True)
    return name
