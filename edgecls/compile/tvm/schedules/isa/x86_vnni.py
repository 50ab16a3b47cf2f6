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

256-bit, not 512 (measured, C4_LANES): 8-lane vectors keep the reduction rule's 8-channel
tiles and epilogue of AVX2, and run on AVX-VNNI CPUs (no AVX-512) too.
"""

from __future__ import annotations

import functools

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules.isa.common import C4_GROUP, c4_prim_func

LANES = 8  # output channels per call: one int32x8 accumulator (ymm)
# The c4 intrinsic's widths. 16 (zmm, where the CPU has AVX512-VNNI) measured no faster: Zen 4,
# one thread, benchmarks/int8.py: ResNet-18 12.21 ms (ymm 12.19), MobileNetV2 5.50 (ymm 4.51:
# coarser channel tiles, 24-channel layers back on ymm), though a zmm vpdpbusd loop alone runs
# 228 GMAC/s against ymm's 187 (benchmarks/mac_ceiling.py). So the rule takes ymm.
C4_LANES = (8,)
GROUP = C4_GROUP  # input channels per vpdpbusd lane
# LLVM selects the VEX form (AVX-VNNI) of the 256-bit one where there is no AVX512VL.
VPDPBUSD = {8: "llvm.x86.avx512.vpdpbusd.256", 16: "llvm.x86.avx512.vpdpbusd.512"}


def _broadcast_x(A, lanes: int):
    """The 4 activation bytes A[0:4] as one int32 repeated in every lane (vpbroadcastd)."""
    from tvm import tirx
    return tirx.Broadcast(tirx.reinterpret("int32", A.vload([tirx.IntImm("int64", 0)], "uint8x4")), lanes)


def _vpdpbusd(acc, x, w, lanes: int):
    # LLVM 22's signature: (<N x i32> acc, <4N x i8> unsigned, <4N x i8> signed).
    from tvm import tirx
    return tirx.call_llvm_pure_intrin(f"int32x{lanes}", VPDPBUSD[lanes], acc,
                                      tirx.reinterpret(f"int8x{4 * lanes}", x), w)


def rows_mac(A, B, act: str, pairs: int, acc):
    """acc + sum_r A[r] * B[r, :], r < 4, B [4, 8] (any row stride): the rows transposed to
    [w_0..3,o0  w_0..3,o1 ..] in registers, then one vpdpbusd."""
    from tvm import tirx
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], "int8x8") for r in range(GROUP)]
    w = tirx.Shuffle(rows, [LANES * r + o for o in range(LANES) for r in range(GROUP)])
    return _vpdpbusd(acc, _broadcast_x(A, LANES), w, LANES)


rows_mac.accumulates = True  # intrinsics._prim_func: the accumulator is vpdpbusd's own input


def c4_mac(A, B, acc, lanes: int):
    """acc + sum_r A[r] * B[0, :, r], r < 4, B the c4 block [1, lanes, 4]: one 4 * lanes-byte load."""
    from tvm import tirx
    zero = tirx.IntImm("int64", 0)
    return _vpdpbusd(acc, _broadcast_x(A, lanes), B.vload([zero, zero, zero], f"int8x{4 * lanes}"), lanes)


def _c4_prim_func(lanes: int, implement: bool):
    """The c4 intrinsic over 4 uint8 activations and the weight's [1, lanes, 4] c4 block."""
    return c4_prim_func(GROUP, lanes, "uint8", lambda A, B, acc: c4_mac(A, B, acc, lanes), implement)


@functools.cache
def vnni_c4_intrin(lanes: int) -> str:
    """Register (once) and name the c4 vpdpbusd intrinsic (4 input x `lanes` output channels)."""
    load_tvm()
    from tvm.s_tir import TensorIntrin
    name = f"edgecls_x86_vnni_c4_k4_x{lanes}"
    TensorIntrin.register(name, _c4_prim_func(lanes, False), _c4_prim_func(lanes, True), override=True)
    return name
