"""Widening int8 multiply-accumulate for the integer conv2d/matmul kernels of tvm_int8.

tvm_schedules' reduction rule vectorizes an int8 x int8 -> int32 kernel like a float one: one
input channel at a time, each operand extended to int32 lanes, so a multiply does one MAC per
32-bit lane: 8 per instruction on AVX2 (LLVM picks vpmaddwd on dwords or vpmulld), 4 on NEON
(smlal by lane). This module keeps that rule's loop nest (register tile, fused epilogue,
parallel tiles, packed weights; ties of the tile shape go to more rows, see schedule_widening)
and only re-blocks its innermost step: k consecutive input channels x one vector of output
channels become one TIR tensor intrinsic that does several exact MACs per 32-bit lane. Which
one follows from the activation dtype tvm_int8 gave the kernel:

* uint8 on AVX2 (tvm_int8's "u8" mode, only for weights within [-64, 64]):
  byte pairs, k = 4. The 4 activation bytes broadcast to every 32-bit lane (vpbroadcastd), the
  4 weight rows transposed in registers to [w_k..k+3,o0  w_k..k+3,o1 ...]; vpmaddubsw sums
  each u8 x s8 byte pair into int16 (exact: 2 * 255 * 64 < 2^15, where full int8 weights
  could saturate), vpmaddwd by ones adds the two pairs of a lane into int32: 32 MACs per
  vpmaddubsw + vpmaddwd.
* int16 on AVX2 (int16(x_q) - z_x, written by the producer's epilogue): int16 pairs, k = 4 or 2.
  The pair (x_k, x_k+1) is one vpbroadcastd load per tile row, the weight rows w[k, o:o+8],
  w[k+1, o:o+8] are interleaved and sign-extended to int16 ([w_k,o0 w_k+1,o0 w_k,o1 ...]);
  vpmaddwd gives per lane x_k*w_k,o + x_k+1*w_k+1,o in int32: 16 MACs per instruction, exact
  (|each sum| < 2^16).
* int8 on aarch64 with ARMv8.2 dotprod (Orin's A78, A55/A76; tvm_int8's "s8" mode): sdot, k = 4,
  4 output channels: the 4 activation bytes duplicated per lane, the weight rows transposed;
  16 exact MACs per instruction, accumulated in int32 (no saturation: any weights).
* int16 on aarch64 NEON (ARMv8.0, no dotprod: rk3399, rpi4), 4 output channels x 2: the
  interleaved, widened weight rows times the duplicated pair (ld1r .4s) give 8 int16 products
  (exact: |x*w| <= 255*128 < 2^15, mul.8h); sadalp adds each pair, widened, into the int32
  accumulators. 8 MACs per multiply where LLVM's code for the plain rule (smlal by lane) does 4.
* int8/uint8 pairs (a vpshufb or smull.8b per pair and row): what tvm_int8 gave these kernels
  before the int16 input (MobileNetV2 ~5 % slower on AVX2); registered so that records of
  earlier tuning databases still replay.

The weights stay the int8 constants tvm_int8 made, in the rule's layout (HWIO, blocked by the
tile's channels by tvm_prepack): transposed or interleaved in registers once per step and
vector, and reused by every row of the register tile. (A constant in the intrinsic's own
layout would save those shuffles; tvm_prepack's constant repacking only knows its blocking.)

Which kernels: regular conv2d (including 1x1) and dense whose input-channel count is a multiple
of k (tvm_int8 pads the rest with zero channels) and whose output channels fill the vectors (8
on AVX2, 4 on NEON). Depthwise convs keep the plain rule: with no input-channel reduction, the
pair would be two taps whose activations also change per channel, so both operands need
interleaving in registers, as many shuffles as the plain code's multiplies save.

The ceiling on this x86 host (no VNNI, benchmarks/mac_ceiling.py, one core): int16 pairs
(vpmaddwd + vpaddd) 0.82x its fp32 FMA throughput, byte pairs 1.44x. On NEON without dotprod
both int16-pair forms are 2x fp32 fmla per multiply.
"""

from __future__ import annotations

import contextlib
import functools

from edgecls.compile import tir_helpers as th
from edgecls.compile import tvm_schedules as ts
from edgecls.compile.tvm_adapter import _import_tvm

ACT_DTYPES = ("int8", "uint8", "int16")  # int16: tvm_int8's centered input (int16(x_q) - z_x)
_LANES = {"avx2": 8, "neon": 4}  # output channels per intrinsic call
# Input channels per call, the widest dividing the kernel's count first. AVX2 takes 4 (2 pairs):
# one 4-byte broadcast load per tile row and a vpshufb per pair, where a single pair costs a
# 16-bit broadcast + widening (two shuffle uops per row and pair, on Zen 3's two shuffle pipes:
# the bound of those loops). Measured on MobileNetV2's 1x1 convs, 2 threads: 14x14x96->576
# 0.93 -> 0.69 ms, 7x7x320->1280 0.43 -> 0.34 ms. 8 (4 pairs) spilled the tile (4 masks + 4
# weight vectors + 7 accumulators > 16 ymm) and measured no better. NEON's ld1r duplicates a
# pair as it loads: one pair per call.
_K = {"avx2": (4, 2), "neon": (2,)}
_enabled = [True]


@contextlib.contextmanager
def widening_disabled():
    """Schedule int8 kernels with the plain rule only (the reference the tests and
    benchmarks/int8.py compare the intrinsics with)."""
    _enabled[0] = False
    try:
        yield
    finally:
        _enabled[0] = True


# --------------------------------------------------------------------------- tensor intrinsics


def _pair_broadcast(A, act: str, lanes: int, j: int = 0):
    """The pair (x_2j, x_2j+1) repeated `lanes` times (one broadcast load: vpbroadcastw/d,
    ld1r .4h/.4s), as a vector of 2 * lanes elements of the activation dtype."""
    from tvm import tirx
    bits = 32 if act == "int16" else 16
    pair = tirx.reinterpret(f"int{bits}", A.vload([tirx.IntImm("int64", 2 * j)], f"{act}x2"))
    return tirx.reinterpret(f"{act}x{2 * lanes}", tirx.Broadcast(pair, lanes))


def _pairs_widened_avx2(A, act: str, pairs: int):
    """Per pair j, (x_2j, x_2j+1) widened to int16 and repeated 8 times (int16x16), from one
    broadcast load of the 2 * pairs bytes and one vpshufb per pair that moves the pair's bytes
    into 16-bit lanes: zero-extended for uint8 (-128 in the mask writes a zero byte); for int8
    into the high bytes, then an arithmetic shift by 8 sign-extends. (Written as plain shuffles,
    LLVM turns this back into a 16-bit broadcast load + widening per pair: two shuffle uops.)"""
    from tvm import tirx
    raw = tirx.reinterpret(f"int{16 * pairs}", A.vload([tirx.IntImm("int64", 0)], f"{act}x{2 * pairs}"))
    src = tirx.reinterpret("int8x32", tirx.Broadcast(raw, 16 // pairs))
    out = []
    for j in range(pairs):
        word = [2 * j, -128, 2 * j + 1, -128] if act == "uint8" else [-128, 2 * j, -128, 2 * j + 1]
        mask = tirx.Shuffle([tirx.IntImm("int8", b) for b in word * 8], list(range(32)))
        picked = tirx.reinterpret("int16x16",
                                  tirx.call_llvm_pure_intrin("int8x32", "llvm.x86.avx2.pshuf.b", src, mask))
        out.append(picked if act == "uint8" else picked >> tirx.Broadcast(tirx.IntImm("int16", 8), 16))
    return out


def _rows_interleaved(B, lanes: int, j: int = 0):
    """[w_2j,o0 w_2j+1,o0 w_2j,o1 ...]: weight rows 2j and 2j+1 zipped, as 2 * lanes int8."""
    from tvm import tirx
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], f"int8x{lanes}")
            for r in (2 * j, 2 * j + 1)]
    return tirx.Shuffle(rows, [c for i in range(lanes) for c in (i, i + lanes)])


def _avx2_mac(A, B, act: str, pairs: int):
    # Per pair, vpmaddwd of the widened pair and the widened interleaved rows:
    # x_k*w_k,o + x_k+1*w_k+1,o per int32 lane, exact (|each sum| < 2^16).
    from tvm import tirx
    if act == "int16":  # already widened: a 32-bit broadcast load per pair, no shuffle
        xs = [_pair_broadcast(A, act, 8, j) for j in range(pairs)]
    elif pairs == 1:
        xs = [tirx.Cast("int16x16", _pair_broadcast(A, act, 8))]
    else:
        xs = _pairs_widened_avx2(A, act, pairs)
    out = None
    for j, x in enumerate(xs):
        mac = tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", x,
                                         tirx.Cast("int16x16", _rows_interleaved(B, 8, j)))
        out = mac if out is None else out + mac
    return out


def _avx2_byte_pairs_mac(A, B, act: str, pairs: int):
    # 4 input channels x 8 output channels: the 4 uint8 activations broadcast to every 32-bit
    # lane (one vpbroadcastd load), the 4 weight rows transposed to [w_k..k+3,o0  w_k..k+3,o1 ..];
    # vpmaddubsw sums each byte pair into int16, exact only for weights within [-64, 64] (tvm_int8
    # gives these kernels a uint8 input only then), vpmaddwd by ones sums the two pairs of a lane.
    from tvm import tirx
    x = tirx.reinterpret("uint8x32", tirx.Broadcast(
        tirx.reinterpret("int32", A.vload([tirx.IntImm("int64", 0)], "uint8x4")), 8))
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], "int8x8") for r in range(4)]
    w = tirx.Shuffle(rows, [8 * r + o for o in range(8) for r in range(4)])
    pairs16 = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", x, w)
    ones = tirx.Broadcast(tirx.IntImm("int16", 1), 16)
    return tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs16, ones)


def _neon_dot_mac(A, B, act: str, pairs: int):
    # ARMv8.2 dotprod: 4 input channels x 4 output channels per sdot (16 MACs, int8 x int8 summed
    # straight into int32: exact for any weights). The 4 activation bytes duplicated per 32-bit
    # lane (ld1r .4s), the 4 weight rows transposed to [w_k..k+3,o0  w_k..k+3,o1 ..]. sdot of a
    # zero accumulator + the tile's: LLVM folds the add into sdot's accumulator.
    from tvm import tirx
    x = tirx.reinterpret("int8x16", tirx.Broadcast(
        tirx.reinterpret("int32", A.vload([tirx.IntImm("int64", 0)], "int8x4")), 4))
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], "int8x4") for r in range(4)]
    w = tirx.Shuffle(rows, [4 * r + o for o in range(4) for r in range(4)])
    zeros = tirx.Broadcast(tirx.IntImm("int32", 0), 4)
    return tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", zeros, x, w)


def _neon_mac(A, B, act: str, pairs: int):
    # 8 int16 products of the duplicated pair and the interleaved rows, exact (|x*w| <= 255*128
    # < 2^15): int8 by smull.8b (widens and multiplies in one); uint8 (255 is no int8) widened to
    # int16 first and multiplied in int16 (mul.8h). saddlp + the add (LLVM: sadalp) sums each
    # pair, widened, into its channel's int32. 8 MACs per multiply where the plain rule's smlal
    # by lane does 4. One pair per call: ld1r loads the pair already duplicated.
    from tvm import tirx
    x, w = _pair_broadcast(A, act, 4), _rows_interleaved(B, 4)
    if act == "int8":
        prod = tirx.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.smull.v8i16", x, w)
    elif act == "int16":  # |x - z_x| <= 255: the int16 product is exact as for uint8
        prod = x * tirx.Cast("int16x8", w)
    else:
        prod = tirx.Cast("int16x8", x) * tirx.Cast("int16x8", w)
    return tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16", prod)


def _prim_func(lanes: int, act: str, k: int, mac=None):
    """The intrinsic's description (mac None) or implementation, over the same buffers: A k
    contiguous activations, B k rows of the weight (any row stride: HWIO, or blocked by
    tvm_prepack), C the tile accumulator in tvm_schedules.ACC_SCOPE, as the rule leaves it.

    Description: C[i] += A[r] * B[r, i], i < lanes (the vectorized output channels, so the loop
    is vectorized, as the rule leaves it, or the pattern does not match), r < k.
    Implementation: C[0:lanes] += mac(A, B), one expression (named temporaries would each become
    a buffer in TVMScript)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (T.int64(k),), act, offset_factor=1)
        B = T.match_buffer(b, (T.int64(k), T.int64(lanes)), "int8", offset_factor=1, strides=[s0, T.int64(1)])
        C = T.match_buffer(c, (T.int64(lanes),), "int32", offset_factor=1, scope=ts.ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:k], B[0:k, 0:lanes])
            T.writes(C[0:lanes])
            if mac is None:
                for i in T.vectorized(T.int64(lanes)):
                    for r in T.serial(T.int64(k)):
                        with T.sblock("update"):
                            vi, vr = T.axis.remap("SR", [i, r])
                            C[vi] = C[vi] + T.Cast("int32", A[vr]) * T.Cast("int32", B[vr, vi])
            else:
                C[T.ramp(T.int64(0), 1, lanes)] = C[T.ramp(T.int64(0), 1, lanes)] + mac(A, B, act, k // 2)

    return func


# 8-bit-input kernels (k = 4): name -> (base ISA, MAC). tvm_int8's "u8" and "s8" input modes.
_EIGHT_BIT = {"avx2_byte_pairs": ("avx2", _avx2_byte_pairs_mac), "neon_dot": ("neon", _neon_dot_mac)}


@functools.cache
def intrin_name(isa: str, act: str, k: int = 2) -> str:
    """Register (once) and name the widening intrinsic for an ISA, activation dtype and number
    of input channels per call (k: 2, or 4 on AVX2)."""
    _import_tvm()
    from tvm.s_tir import TensorIntrin

    if isa in _EIGHT_BIT:  # the 8-bit kernels: their own MAC on the base ISA's vector width
        base, mac = _EIGHT_BIT[isa]
        name, lanes = f"edgecls_{isa}_mac_{act}_k{k}", _LANES[base]
    else:
        name = f"edgecls_{isa}_widening_mac_{act}_k{k}"
        lanes, mac = _LANES[isa], (_avx2_mac if isa == "avx2" else _neon_mac)
    TensorIntrin.register(name, _prim_func(lanes, act, k), _prim_func(lanes, act, k, mac), override=True)
    return name


def register_intrinsics() -> None:
    """Register every intrinsic of this module. A schedule trace that tensorizes with one (a
    zero-trial record of the tuning database) can only be replayed once it is registered: the
    integer rewrite calls this, so any integer-kernel compile can replay such records."""
    for isa, ks in _K.items():
        for act in ACT_DTYPES:
            for k in ks:
                intrin_name(isa, act, k)
    intrin_name("avx2_byte_pairs", "uint8", 4)
    intrin_name("neon_dot", "int8", 4)


def _has_dotprod() -> bool:
    """Is the current target an aarch64 one with the ARMv8.2 dot product (sdot)?"""
    tvm = _import_tvm()
    from tvm.target import codegen
    target = tvm.target.Target.current(allow_none=True)
    return (target is not None and target.kind.name == "llvm"
            and str(target.attrs.get("mtriple", "")).startswith("aarch64")
            and bool(codegen.target_has_features("dotprod", target)))


def eight_bit_kernels(tvm_target: dict) -> str | None:
    """Which 8-bit input the target's kernels take (tvm_int8.quantize_int8's eight_bit): "u8"
    on AVX2 (vpmaddubsw byte pairs, for 7-bit weights), "s8" on aarch64 with dotprod (sdot),
    None elsewhere (int16 pairs only)."""
    tvm = _import_tvm()
    with tvm.target.Target(tvm_target):
        if _has_dotprod():
            return "s8"
        return "u8" if widening_isa(0) == "avx2" else None


# --------------------------------------------------------------------------- target


def widening_isa(lanes: int) -> str | None:
    """Which intrinsic the target of a schedule can run: "avx2", "neon" or None.

    rule_schedule only knows the target's fp32 SIMD width (tvm_schedules.simd_lanes), so a
    target context, when one is active, decides; otherwise lanes == 4 means NEON (every NEON
    target of edgecls is aarch64, targets/*.toml) and 8/16 means the x86 host target, which
    edgecls always resolves to this machine's CPU: its AVX2 is asked of LLVM.
    """
    tvm = _import_tvm()
    from tvm.target import codegen

    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "llvm":
        triple = str(target.attrs.get("mtriple", ""))
        if triple.startswith("aarch64"):
            return "neon"
        if triple and not triple.startswith("x86"):
            return None
        return "avx2" if codegen.target_has_features("avx2", target) else None
    if lanes == 4:
        return "neon"
    host = tvm.target.Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu())})
    return "avx2" if lanes >= 8 and codegen.target_has_features("avx2", host) else None


# --------------------------------------------------------------------------- schedule


def _int8_operands(stmt):
    """(activation region, weight region) of an int8 x int8 -> int32 reduction, or raise."""
    out = th.buffer(stmt.writes[0])
    if str(out.dtype) != "int32":
        raise ts.NotRecognised("not an int32 accumulation")
    reads = [r for r in stmt.reads if not th.buffer(r).same_as(out)]
    if len(reads) != 2 or {str(th.buffer(r).dtype) for r in reads} - set(ACT_DTYPES):
        raise ts.NotRecognised("not an int8/uint8 x int8 product")
    return reads


def _pair_loop(sch, block):
    """(index in the block's loops, activation dtype) of the innermost reduction iterator k, when
    it indexes the activation's innermost dimension and the weight's second-innermost one
    (NHWC x HWIO, or [.., K] x [K, N])."""
    tvm = _import_tvm()
    stmt = sch.get(block)
    vec_var = stmt.writes[0].region[-1].min
    # The weight: the read whose innermost index follows the vector axis (HWIO's O, or O % B once
    # tvm_prepack has blocked it by the tile's channels).
    weight = next((r for r in _int8_operands(stmt) if th.uses(r.region[-1].min, vec_var)), None)
    act = next((r for r in _int8_operands(stmt) if r is not weight), None)
    if weight is None or act is None or len(weight.region) < 2 or str(th.buffer(weight).dtype) != "int8":
        raise ts.NotRecognised("no int8 weight along the vector axis")
    k = act.region[-1].min
    if not weight.region[-2].min.same_as(k):
        raise ts.NotRecognised("activation and weight do not share the innermost reduction")
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if iv.var.same_as(k) and iv.iter_type == tvm.tirx.IterVar.CommReduce:
            for i, lp in enumerate(loops):
                if sch.get(lp).loop_var.same_as(value):
                    return i, str(th.buffer(act).dtype)
    raise ts.NotRecognised("the pair iterator is not a plain loop")


def schedule_widening(sch, block, lanes: int) -> str:
    """tvm_schedules' reduction rule with the widening intrinsic as its innermost step.

    Raises NotRecognised for anything that is not an int8/uint8 x int8 -> int32 reduction or
    runs on a target without an intrinsic here (rule_schedule then tries the plain rule);
    depthwise kernels get the plain rule from here.
    """
    _int8_operands(sch.get(block))
    isa = widening_isa(lanes) if _enabled[0] else None
    if isa is None:
        raise ts.NotRecognised("no widening int8 intrinsic for this target")
    name = th.name(sch, block)
    # More rows per tile: each vector's weights are transposed (byte pairs) or interleaved and
    # widened (int16 pairs) in registers once per step and tile, then reused by every row.
    # ResNet-18's 3x3 56x56x64 conv: 8 rows x 1 vector 1.9 ms, 4 x 2 2.9 ms (one thread).
    kind = ts.schedule_reduction(sch, block, _LANES[isa], prefer_rows=True)
    if kind not in ("conv2d", "dense"):
        return kind
    update = sch.get_sblock(name + "_update")
    loops = sch.get_loops(update)
    at, act = _pair_loop(sch, update)
    # An 8-bit input to these kernels is tvm_int8's "u8" mode on AVX2 (7-bit weights: byte
    # pairs) or its "s8" mode on a dotprod target (sdot), 4 channels per call. Otherwise int16
    # (or, replaying old records, 8-bit) pairs.
    eight = {("avx2", "uint8"): "avx2_byte_pairs", ("neon", "int8"): "neon_dot"}.get((isa, act))
    if eight == "neon_dot" and not _has_dotprod():
        eight = None
    if eight and th.extent(sch, loops[at]) % 4:
        eight = None
    k = 4 if eight else next((k for k in _K[isa] if th.extent(sch, loops[at]) % k == 0), None)
    if k is None or th.extent(sch, loops[-1]) != _LANES[isa]:
        raise ts.NotRecognised("odd input channels or a vector narrower than the intrinsic")
    # [.., ci, rows (unrolled), vectors (unrolled), lanes] -> [.., ci/k, rows, vectors, lanes, k]
    k_o, k_i = sch.split(loops[at], [None, k])
    sch.reorder(k_o, *loops[at + 1:], k_i)
    sch.tensorize(sch.get_loops(update)[-2], intrin_name(eight or isa, act, k))
    return kind
