"""x86 VNNI multiply-accumulates (vpdpbusd, AVX512-VNNI + AVX512VL or AVX-VNNI, 256-bit): per
int32 lane, 4 u8 x s8 products summed into the accumulator in one instruction, exact for
full-range int8 weights (|sum| <= 4 * 255 * 128 < 2^31, no int16 intermediate to saturate,
where AVX2's vpmaddubsw needs weights within [-64, 64]).

Operands as AVX2's byte pairs (avx2.py): the 4 activation bytes of a pixel (uint8: quant.int8's
"u8" mode, the zero point folded into the bias) broadcast to every 32-bit lane (vpbroadcastd),
4 input channels x 8 output channels of weights per call. Two weight layouts:
* rows_mac: the weight as the reduction rule leaves it, [4 rows, 8 channels]: the rows
  transposed in registers (widening_int8's rule, for kernels the c4 rule does not take);
* c4_mac: the weight prepacked c4 (prepack.pack_c4: [.., I/4, B, 4]), so 32 consecutive bytes
  are one vpdpbusd operand (8 output x 4 input channels): one load, no shuffle (x86_vnni.py's
  rule, as XNNPACK's and oneDNN's packed VNNI GEMMs).

256-bit, not 512: Zen 4 executes a 512-bit vpdpbusd as two 256-bit halves (no more MACs per
cycle), and 8-lane vectors keep the reduction rule's 8-channel tiles and epilogue of AVX2.
"""

from __future__ import annotations

import functools

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules.tir import ACC_SCOPE

LANES = 8  # output channels per call: one int32x8 accumulator (ymm)
GROUP = 4  # input channels per vpdpbusd lane
VPDPBUSD = "llvm.x86.avx512.vpdpbusd.256"  # LLVM selects the VEX form (AVX-VNNI) where there is no AVX512VL


def _broadcast_x(A):
    """The 4 activation bytes A[0:4] as one int32 repeated in every lane (vpbroadcastd)."""
    from tvm import tirx
    return tirx.Broadcast(tirx.reinterpret("int32", A.vload([tirx.IntImm("int64", 0)], "uint8x4")), LANES)


def _vpdpbusd(acc, x, w):
    # LLVM 22's signature: (<8 x i32> acc, <32 x i8> unsigned, <32 x i8> signed).
    from tvm import tirx
    return tirx.call_llvm_pure_intrin("int32x8", VPDPBUSD, acc, tirx.reinterpret("int8x32", x), w)


def rows_mac(A, B, act: str, pairs: int, acc):
    """acc + sum_r A[r] * B[r, :], r < 4, B [4, 8] (any row stride): the rows transposed to
    [w_0..3,o0  w_0..3,o1 ..] in registers, then one vpdpbusd."""
    from tvm import tirx
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], "int8x8") for r in range(GROUP)]
    w = tirx.Shuffle(rows, [LANES * r + o for o in range(LANES) for r in range(GROUP)])
    return _vpdpbusd(acc, _broadcast_x(A), w)


rows_mac.accumulates = True  # intrinsics._prim_func: the accumulator is vpdpbusd's own input


def c4_mac(A, B, acc):
    """acc + sum_r A[r] * B[0, :, r], r < 4, B the c4 block [1, 8, 4]: one 32-byte load."""
    from tvm import tirx
    zero = tirx.IntImm("int64", 0)
    return _vpdpbusd(acc, _broadcast_x(A), B.vload([zero, zero, zero], "int8x32"))


def _c4_prim_func(implement: bool):
    """The c4 intrinsic's description (C[i] += A[r] * B[0, i, r], i < 8 vectorized as the
    reduction rule leaves it, r < 4) or its implementation: A 4 contiguous uint8 activations, B
    the weight's [1, 8, 4] c4 block, C the tile's int32 accumulator in ACC_SCOPE."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (T.int64(GROUP),), "uint8", offset_factor=1)
        B = T.match_buffer(b, (T.int64(1), T.int64(LANES), T.int64(GROUP)), "int8", offset_factor=1,
                           strides=[s0, T.int64(GROUP), T.int64(1)])
        C = T.match_buffer(c, (T.int64(LANES),), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:LANES], A[0:GROUP], B[0:1, 0:LANES, 0:GROUP])
            T.writes(C[0:LANES])
            if not implement:
                for i in T.vectorized(T.int64(LANES)):
                    for r in T.serial(T.int64(GROUP)):
                        with T.sblock("update"):
                            vi, vr = T.axis.remap("SR", [i, r])
                            C[vi] = C[vi] + T.Cast("int32", A[vr]) * T.Cast("int32", B[vr // 4, vi, vr % 4])
            else:
                C[T.ramp(T.int64(0), 1, LANES)] = c4_mac(A, B, C[T.ramp(T.int64(0), 1, LANES)])

    return func


@functools.cache
def vnni_c4_intrin() -> str:
    """Register (once) and name the c4 vpdpbusd intrinsic (4 input x 8 output channels)."""
    load_tvm()
    from tvm.s_tir import TensorIntrin
    name = "edgecls_x86_vnni_c4_k4"
    TensorIntrin.register(name, _c4_prim_func(False), _c4_prim_func(True), override=True)
    return name
