"""The widening int8 rule: the integer conv2d/matmul kernels of quant.int8 with a widening
multiply-accumulate tensor intrinsic (isa/) as their innermost step.

The reduction rule vectorizes an int8 x int8 -> int32 kernel like a float one: one input channel
at a time, each operand extended to int32 lanes, so a multiply does one MAC per 32-bit lane: 8
per instruction on AVX2 (LLVM picks vpmaddwd on dwords or vpmulld), 4 on NEON (smlal by lane).
This rule keeps that rule's loop nest (register tile, fused epilogue, parallel tiles, packed
weights; ties of the tile shape go to more rows, see schedule_widening) and only re-blocks its
innermost step: k consecutive input channels x one vector of output channels become one TIR
tensor intrinsic that does several exact MACs per 32-bit lane. Which one follows from the target
(isa.widening_isa) and from the activation dtype quant.int8 gave the kernel: uint8 byte pairs
(AVX2), int8 sdot (ARMv8.2 dotprod), int8 smull on 8-bit lanes (ARMv8.0: 8 to 64 channels
per step, tiles one vector wide), otherwise int16 pairs (isa/avx2.py, isa/neon.py).
Measured (instructions per inference, qemu 7.2 -cpu cortex-a72, one thread, 224x224): the
smull kernels took MobileNetV2 int8 from 233.3 M to 143.4 M and ResNet-18 int8 from 1208.0 M to
598.8 M (our fp32: 202.6 M and 1124.5 M).

The weights stay the int8 constants quant.int8 made, in the rule's layout (HWIO, blocked by the
tile's channels by prepack): transposed or interleaved in registers once per step and vector,
and reused by every row of the register tile. (A constant in the intrinsic's own layout would
save those shuffles; prepack's constant repacking only knows its blocking.)

Which kernels: regular conv2d (including 1x1) and dense whose input-channel count is a multiple
of k (quant.int8 pads the rest with zero channels) and whose output channels fill the vectors (8
on AVX2, 4 on NEON). Depthwise convs keep the plain rule: with no input-channel reduction, the
pair would be two taps whose activations also change per channel, so both operands need
interleaving in registers, as many shuffles as the plain code's multiplies save; on aarch64 the
int16 depthwise convs are neon_dot_depthwise.py's (earlier in the rule table).
"""

from __future__ import annotations

import contextlib

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.schedules import tir as th
from edgecls.compile.tvm.schedules.isa import ACT_DTYPES, DOT_K, K, LANES, MULL_K, MULL_K_SINGLE_MAX, has_dotprod, has_vnni, intrin_name, widening_isa
from edgecls.compile.tvm.schedules.reduction import analyse, schedule_reduction
from edgecls.compile.tvm.schedules.rule import NotRecognised, Rule, RuleTarget

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


def widening_enabled() -> bool:
    """False inside widening_disabled(): the int8 intrinsic rules (this one, x86_vnni) step aside."""
    return _enabled[0]


def _int8_operands(stmt):
    """(activation region, weight region) of an int8 x int8 -> int32 reduction, or raise."""
    out = th.buffer(stmt.writes[0])
    if str(out.dtype) != "int32":
        raise NotRecognised("not an int32 accumulation")
    reads = [r for r in stmt.reads if not th.buffer(r).same_as(out)]
    if len(reads) != 2 or {str(th.buffer(r).dtype) for r in reads} - set(ACT_DTYPES):
        raise NotRecognised("not an int8/uint8 x int8 product")
    return reads


def _pair_loop(sch, block):
    """(index in the block's loops, activation dtype, weight buffer) of the innermost reduction
    iterator k, when it indexes the activation's innermost dimension and the weight's
    second-innermost one (NHWC x HWIO, or [.., K] x [K, N])."""
    tvm = load_tvm()
    stmt = sch.get(block)
    vec_var = stmt.writes[0].region[-1].min
    # The weight: the read whose innermost index follows the vector axis (HWIO's O, or O % B once
    # prepack has blocked it by the tile's channels).
    weight = next((r for r in _int8_operands(stmt) if th.uses(r.region[-1].min, vec_var)), None)
    act = next((r for r in _int8_operands(stmt) if r is not weight), None)
    if weight is None or act is None or len(weight.region) < 2 or str(th.buffer(weight).dtype) != "int8":
        raise NotRecognised("no int8 weight along the vector axis")
    k = act.region[-1].min
    if not weight.region[-2].min.same_as(k):
        raise NotRecognised("activation and weight do not share the innermost reduction")
    loops = sch.get_loops(block)
    realize = sch.get(loops[-1]).body
    for iv, value in zip(realize.block.iter_vars, realize.iter_values):
        if iv.var.same_as(k) and iv.iter_type == tvm.tirx.IterVar.CommReduce:
            for i, lp in enumerate(loops):
                if sch.get(lp).loop_var.same_as(value):
                    return i, str(th.buffer(act).dtype), th.buffer(weight)
    raise NotRecognised("the pair iterator is not a plain loop")


def _intrinsic(sch, loop, isa: str, act: str, target) -> tuple[str, int]:
    """(intrinsic family for intrin_name, k input channels per call) for the pair loop `loop` of an `act` x int8 kernel.

    An 8-bit input to these kernels is quant.int8's "u8" mode on AVX2 (7-bit weights: byte
    pairs; any weights with VNNI: vpdpbusd) or its "s8" mode on a dotprod target (sdot), 4 channels per call, or its "s8_mull"
    mode on ARMv8.0 (smull on 8-bit lanes), 64 (not as a single call), 48, 32, 24, 16 or 8 channels per call. Otherwise int16 (or,
    replaying old records, 8-bit) pairs, the widest k that divides the channels."""
    eight = {("avx2", "uint8"): "avx2_byte_pairs", ("neon", "int8"): "neon_dot"}.get((isa, act))
    if eight == "neon_dot" and not has_dotprod(target):
        eight = "neon_mull"  # quant.int8's "s8_mull" mode: k in MULL_K
    if eight == "avx2_byte_pairs" and has_vnni(target):
        eight = "x86_vnni"  # quant.int8's "u8_vnni" mode: full-range weights, vpdpbusd
    channels = th.extent(sch, loop)
    ks = ([k for k in MULL_K if k <= MULL_K_SINGLE_MAX or channels > k] if eight == "neon_mull"
          else (*DOT_K, 4) if eight == "neon_dot" else (4,))
    k = next((k for k in ks if channels % k == 0), None) if eight else None
    if k:
        return eight, k
    k = next((k for k in K[isa] if th.extent(sch, loop) % k == 0), None)
    if k is None:
        raise NotRecognised("odd input channels")
    return isa, k


def schedule_widening(sch, block, lanes: int, target=None) -> str:
    """The reduction rule with the widening intrinsic as its innermost step.

    Raises NotRecognised for anything that is not an int8/uint8 x int8 -> int32 reduction or
    runs on a target without an intrinsic here (the rule table then tries the plain rule);
    depthwise kernels get the plain rule from here. target: a tvm.target.Target (None: the
    current one) whose features pick the intrinsic.
    """
    reads = _int8_operands(sch.get(block))
    isa = widening_isa(lanes, target) if _enabled[0] else None
    if isa is None:
        raise NotRecognised("no widening int8 intrinsic for this target")
    name = th.name(sch, block)
    # x86 depthwise on an AVX-512 target: the reduction rule at its 16 lanes instead of 8 (LLVM
    # multiplies by vpdpwssd/vpmaddwd on zmm). MobileNetV2 int8, Zen 4, one thread: 5.64 -> 5.00 ms.
    if isa == "avx2" and lanes > LANES[isa] and analyse(sch, block).kind(name) == "depthwise":
        raise NotRecognised("depthwise at the target's full width: the plain rule")
    # neon_mull and sdot by lane (k = 16, 8) load the weight block as one contiguous vector:
    # tiles of one vector (4 channels)
    # wide. The rows still share it: MobileNetV2 int8 rk3399, 143 M instructions per inference.
    mull = isa == "neon" and {str(th.buffer(r).dtype) for r in reads} == {"int8"}
    # More rows per tile: each vector's weights are transposed (byte pairs) or interleaved and
    # widened (int16 pairs) in registers once per step and tile, then reused by every row.
    # ResNet-18's 3x3 56x56x64 conv: 8 rows x 1 vector 1.9 ms, 4 x 2 2.9 ms (one thread).
    if isa == "neon" and {str(th.buffer(r).dtype) for r in reads} == {"int16"}:
        raise NotRecognised("int16 depthwise on aarch64: neon_dot_depthwise's (earlier in the table)")
    kind = schedule_reduction(sch, block, LANES[isa], prefer_rows=True, **({"max_vectors": 1} if mull else {}))
    if kind not in ("conv2d", "dense"):
        return kind
    update = sch.get_sblock(name + "_update")
    loops = sch.get_loops(update)
    at, act, weight = _pair_loop(sch, update)
    family, k = _intrinsic(sch, loops[at], isa, act, target)
    if th.extent(sch, loops[-1]) != LANES[isa]:
        raise NotRecognised("a vector narrower than the intrinsic")
    if (family == "neon_mull" or k > 4) and int(weight.shape[-1]) != LANES[isa]:
        raise NotRecognised("this kernel needs the weight blocked by exactly one vector")
    # [.., ci, rows (unrolled), vectors (unrolled), lanes] -> [.., ci/k, rows, vectors, lanes, k]
    k_o, k_i = sch.split(loops[at], [None, k])
    sch.reorder(k_o, *loops[at + 1:], k_i)
    sch.tensorize(sch.get_loops(update)[-2], intrin_name(family, act, k))
    return kind


class WideningInt8Rule(Rule):
    """Functions with exactly one reduction block that is an int8 x int8 -> int32 product, on a
    target with a widening intrinsic (schedule_widening)."""

    name = "widening-int8"

    def schedule(self, sch, target: RuleTarget) -> str:
        reductions = th.reduction_blocks(sch)
        if len(reductions) != 1:
            raise NotRecognised(f"{len(reductions)} reduction blocks, not one")
        return schedule_widening(sch, sch.get_sblock(reductions[0]), target.lanes, target.target)
