"""The widening multiply-accumulate tensor intrinsics (avx2.py, neon.py), registered with TVM
under stable names: a tuning database's records tensorize with them by name."""

from __future__ import annotations

import functools

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules.isa import avx2, lane_fma, neon, neon_dot, x86_vnni
from edgecls.compile.tvm.schedules.tir import ACC_SCOPE

ACT_DTYPES = ("int8", "uint8", "int16")  # int16: quant.int8's centered input (int16(x_q) - z_x)
LANES = {"avx2": 8, "neon": 4}  # output channels per intrinsic call
# Input channels per call, the widest dividing the kernel's count first. AVX2 takes 4 (2 pairs):
# one 4-byte broadcast load per tile row and a vpshufb per pair, where a single pair costs a
# 16-bit broadcast + widening (two shuffle uops per row and pair, on Zen 3's two shuffle pipes:
# the bound of those loops). Measured on MobileNetV2's 1x1 convs, 2 threads: 14x14x96->576
# 0.93 -> 0.69 ms, 7x7x320->1280 0.43 -> 0.34 ms. 8 (4 pairs) spilled the tile (4 masks + 4
# weight vectors + 7 accumulators > 16 ymm) and measured no better. NEON's ld1r duplicates a
# pair as it loads: one pair per call.
K = {"avx2": (4, 2), "neon": (2,)}
_PAIRS_MAC = {"avx2": avx2.pairs_mac, "neon": neon.pairs_mac}
# 8-bit-input kernels: name -> (base ISA, MAC). quant.int8's "u8" and "s8" input modes (k = 4:
# AVX2 byte pairs, x86 VNNI vpdpbusd, sdot),
# and "s8_mull" (ARMv8.0 smull on 8-bit lanes, k in MULL_K).
# Input channels per call, the widest dividing the kernel's count first. neon_mull: up to 32
# (8 weight registers of the 32-register file; the tile's rows hold the rest); one reduction
# (saddlp, addp) per call, so wider calls pay it less often: MULL_K (16, 8) -> (32, 24, 16, 8)
# took MobileNetV2 int8 rk3399 from 143.4 M to 131.0 M and ResNet-18 int8 from 598.8 M to
# 527.0 M instructions per inference (qemu 7.2 -cpu cortex-a72, one thread). 64 and 48 (16 and 12
# weight registers) where they divide the channels: MobileNetV2 96.03 -> 93.21 M (its two 960 ->
# 160 convs 3.74 -> 3.48 M, 144 -> 24 + residual add 3.65 -> 3.15 M), except as a single call
# (MULL_K_SINGLE_MAX); 96 and wider spilled (MobileNetV2 106.1 M). sdot by lane: 16.
MULL_K = (64, 48, 32, 24, 16, 8)
# The widest k of a kernel whose input channels take one call: its 64 -> 384 conv with one call of
# 64 (LLVM interleaved the unrolled tile's rows and spilled) 5.54 M, two of 32 5.33 M. (64 for
# each tap of a 3x3 conv over 64 channels, nine calls a tile, was worse: ResNet-18 439.9 -> 478.1 M.)
MULL_K_SINGLE_MAX = 48
DOT_K = (16, 8)
EIGHT_BIT = {"avx2_byte_pairs": ("avx2", avx2.byte_pairs_mac), "x86_vnni": ("avx2", x86_vnni.rows_mac),
             "neon_dot": ("neon", neon.dot_mac),
             "neon_mull": ("neon", neon.mull_mac)}


def _prim_func(lanes: int, act: str, k: int, mac=None):
    """The intrinsic's description (mac None) or implementation, over the same buffers: A k
    contiguous activations, B k rows of the weight (any row stride: HWIO, or blocked by
    prepack), C the tile accumulator in ACC_SCOPE, as the reduction rule leaves it.

    Description: C[i] += A[r] * B[r, i], i < lanes (the vectorized output channels, so the loop
    is vectorized, as the rule leaves it, or the pattern does not match), r < k.
    Implementation: C[0:lanes] += mac(A, B), one expression (named temporaries would each become
    a buffer in TVMScript); a mac marked `accumulates` gets C[0:lanes] as its accumulator input
    instead (sdot accumulates in place: no zeroed register and add per call)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (T.int64(k),), act, offset_factor=1)
        B = T.match_buffer(b, (T.int64(k), T.int64(lanes)), "int8", offset_factor=1, strides=[s0, T.int64(1)])
        C = T.match_buffer(c, (T.int64(lanes),), "int32", offset_factor=1, scope=ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:k, 0:lanes])
            T.writes(C[0:lanes])
            if mac is None:
                for i in T.vectorized(T.int64(lanes)):
                    for r in T.serial(T.int64(k)):
                        with T.sblock("update"):
                            vi, vr = T.axis.remap("SR", [i, r])
                            C[vi] = C[vi] + T.Cast("int32", A[vr]) * T.Cast("int32", B[vr, vi])
            elif getattr(mac, "accumulates", False):  # the MAC's own accumulator input (sdot)
                C[T.ramp(T.int64(0), 1, lanes)] = mac(A, B, act, k // 2, C[T.ramp(T.int64(0), 1, lanes)])
            else:
                C[T.ramp(T.int64(0), 1, lanes)] = C[T.ramp(T.int64(0), 1, lanes)] + mac(A, B, act, k // 2)

    return func


@functools.cache
def intrin_name(isa: str, act: str, k: int = 2) -> str:
    """Register (once) and name the widening intrinsic for an ISA, activation dtype and number
    of input channels per call (k: 2, or 4 on AVX2)."""
    load_tvm()
    from tvm.s_tir import TensorIntrin

    if isa in EIGHT_BIT:  # the 8-bit kernels: their own MAC on the base ISA's vector width
        base, mac = EIGHT_BIT[isa]
        name, lanes = f"edgecls_{isa}_mac_{act}_k{k}", LANES[base]
    else:
        name = f"edgecls_{isa}_widening_mac_{act}_k{k}"
        lanes, mac = LANES[isa], _PAIRS_MAC[isa]
    TensorIntrin.register(name, _prim_func(lanes, act, k), _prim_func(lanes, act, k, mac), override=True)
    return name


def register_intrinsics() -> None:
    """Register every intrinsic of this module. A schedule trace that tensorizes with one (a
    zero-trial record of the tuning database) can only be replayed once it is registered:
    tuning.database registers them whenever it opens a database."""
    for isa, ks in K.items():
        for act in ACT_DTYPES:
            for k in ks:
                intrin_name(isa, act, k)
    intrin_name("avx2_byte_pairs", "uint8", 4)
    intrin_name("x86_vnni", "uint8", 4)
    for lanes in x86_vnni.C4_LANES:
        x86_vnni.vnni_c4_intrin(lanes)
    for k in (*DOT_K, 4):
        intrin_name("neon_dot", "int8", k)
    for k in MULL_K:
        intrin_name("neon_mull", "int8", k)
    for k in lane_fma.K:
        lane_fma.lane_fma_intrin(k)
    for k in neon_dot.K:
        neon_dot.dot_c4_intrin(k)
