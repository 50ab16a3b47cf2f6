"""The fp32 by-lane FMA tensor intrinsic of AArch64 NEON: k input channels x 4 output channels.

The plain reduction rule multiplies one input channel at a time: every FMA of a tile row takes
its activation from a scalar load (`ldr s`, then `fmla v.4s, v.4s, v.s[0]`), so a 1x1 conv with
a 7-row tile spends 7 scalar loads, 1 weight load and 4 loop instructions on 7 fmla. This
intrinsic takes k = 4 input channels of one pixel as one vector (`ldr q`) and multiplies each
weight row by one of its lanes (`fmla v.4s, v.4s, v.s[j]`, LLVM's pattern for fma(dup(lane))),
which is what XNNPACK's aarch64 GEMM microkernels do. Each call loads its own operands; LLVM
folds the repeated loads of a register tile (the same pixel for every vector, the same weight
rows for every row) into one each, so a tile of rb rows x nv vectors costs rb + 4 nv vectors
loaded (rb + 2 nv instructions: weight rows come in ldp pairs) per 4 rb nv fmla. Measured on
MobileNetV2's 1x1 96->576 conv at 14x14 (qemu -cpu cortex-a72): 22.6 M -> 10.2 M instructions
with the NEON fp32 rule's tile (neon_fp32.py).
"""

from __future__ import annotations

import functools

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules.tir import ACC_SCOPE

LANES = 4  # output channels per call: one float32x4
K = (4,)  # input channels per call: one float32x4 of activations


def lane_fma(A, B, acc, k: int):
    """acc + sum_j A[j] * B[j, :], j < k: one vector load of A, k fma by lane (llvm.fma of a
    lane broadcast, which the AArch64 backend selects as fmla by element)."""
    from tvm import tirx
    zero = tirx.IntImm("int64", 0)
    a = A.vload([zero], f"float32x{k}")
    for j in range(k):
        lane = tirx.Shuffle([a], [tirx.IntImm("int32", j)] * LANES)
        row = B.vload([tirx.IntImm("int64", j), zero], f"float32x{LANES}")
        acc = tirx.call_llvm_pure_intrin(f"float32x{LANES}", "llvm.fma.v4f32", lane, row, acc)
    return acc


def _prim_func(k: int, implement: bool):
    """The intrinsic's description (C[i] += A[r] * B[r, i], i < 4 vectorized as the reduction
    rule leaves it, r < k) or its implementation, over the same buffers: A k contiguous
    activations, B k weight rows of any row stride (HWIO, or blocked by prepack), C the tile's
    accumulator in ACC_SCOPE."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (T.int64(k),), "float32", offset_factor=1)
        B = T.match_buffer(b, (T.int64(k), T.int64(LANES)), "float32", offset_factor=1, strides=[s0, T.int64(1)])
        C = T.match_buffer(c, (T.int64(LANES),), "float32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:k], B[0:k, 0:LANES])
            T.writes(C[0:LANES])
            if not implement:
                for i in T.vectorized(T.int64(LANES)):
                    for r in T.serial(T.int64(k)):
                        with T.sblock("update"):
                            vi, vr = T.axis.remap("SR", [i, r])
                            C[vi] = C[vi] + A[vr] * B[vr, vi]
            else:
                C[T.ramp(T.int64(0), 1, LANES)] = lane_fma(A, B, C[T.ramp(T.int64(0), 1, LANES)], k)

    return func


@functools.cache
def lane_fma_intrin(k: int = 4) -> str:
    """Register (once) and name the by-lane FMA intrinsic of k input channels."""
    load_tvm()
    from tvm.s_tir import TensorIntrin
    name = f"edgecls_neon_lane_fma_f32_k{k}"
    TensorIntrin.register(name, _prim_func(k, False), _prim_func(k, True), override=True)
    return name
