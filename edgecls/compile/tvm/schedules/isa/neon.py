"""AArch64 NEON widening multiply-accumulates: 4 output channels per call.

* int8 with ARMv8.2 dotprod (Orin's A78, A55/A76; quant.int8's "s8" mode): sdot, k = 4: the 4
  activation bytes duplicated per lane, the weight rows transposed; 16 exact MACs per
  instruction, accumulated in int32 (no saturation: any weights). With 16 or 8 channels per
  call (tiles one vector wide): sdot by lane, _dot_by_lane. MobileNetV2 int8 on
  jetson-orin-nano, qemu -cpu cortex-a76: 133.7 M -> 95.5 M instructions per inference.
* int16 on ARMv8.0 (no dotprod: rk3399, rpi4), one pair per call: the interleaved, widened weight
  rows times the duplicated pair (ld1r .4s) give 8 int16 products (exact: |x*w| <= 255*128 <
  2^15, mul.8h); sadalp adds each pair, widened, into the int32 accumulators. 8 MACs per
  multiply where LLVM's code for the plain rule (smlal by lane) does 4: 2x fp32 fmla per
  multiply. int8/uint8 pairs (smull.8b) are what quant.int8 gave these kernels before the int16
  input; registered so that records of earlier tuning databases still replay.
* int8 on ARMv8.0, k = 16 or 8 input channels per call (quant.int8's "s8_mull" mode: the uint8
  activation shifted to int8, weights within [-127, 127]): mull_mac.
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules.isa.common import pair_broadcast, rows_interleaved


def dot_mac(A, B, act: str, pairs: int, acc):
    # acc: the tile's accumulator, sdot's own input (intrinsics._prim_func: dot_mac.accumulates).
    # A zeroed register per call plus an add into the tile cost 2 of 61 instructions per sdot row
    # of MobileNetV2's 96 -> 576 1x1 conv, where LLVM did not fold the add into sdot.
    if pairs > 2:
        return _dot_by_lane(A, B, 2 * pairs, acc)
    # ARMv8.2 dotprod: 4 input channels x 4 output channels per sdot (16 MACs, int8 x int8 summed
    # straight into int32: exact for any weights). The 4 activation bytes duplicated per 32-bit
    # lane (ld1r .4s), the 4 weight rows transposed to [w_k..k+3,o0  w_k..k+3,o1 ..], summed
    # into the tile's accumulator.
    from tvm import tirx
    x = tirx.reinterpret("int8x16", tirx.Broadcast(
        tirx.reinterpret("int32", A.vload([tirx.IntImm("int64", 0)], "int8x4")), 4))
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], "int8x4") for r in range(4)]
    w = tirx.Shuffle(rows, [4 * r + o for o in range(4) for r in range(4)])
    return tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, x, w)


dot_mac.accumulates = True


def pairs_mac(A, B, act: str, pairs: int):
    # 8 int16 products of the duplicated pair and the interleaved rows, exact (|x*w| <= 255*128
    # < 2^15): int8 by smull.8b (widens and multiplies in one); uint8 (255 is no int8) widened to
    # int16 first and multiplied in int16 (mul.8h). saddlp + the add (LLVM: sadalp) sums each
    # pair, widened, into its channel's int32. 8 MACs per multiply where the plain rule's smlal
    # by lane does 4. One pair per call: ld1r loads the pair already duplicated.
    from tvm import tirx
    x, w = pair_broadcast(A, act, 4), rows_interleaved(B, 4)
    if act == "int8":
        prod = tirx.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.smull.v8i16", x, w)
    elif act == "int16":  # |x - z_x| <= 255: the int16 product is exact as for uint8
        prod = x * tirx.Cast("int16x8", w)
    else:
        prod = tirx.Cast("int16x8", x) * tirx.Cast("int16x8", w)
    return tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16", prod)


def mull_mac(A, B, act: str, pairs: int):
    # k = 2 * pairs (64, 48, 32, 24, 16 or 8) input channels x 4 output channels on 8-bit lanes, as
    # XNNPACK's neon-mlal "c8" kernels, in chunks of 16 (and one of 8): per chunk the
    # activations in one ldr q/d, times each output channel's weights: smull.8b (+ smlal2.16b
    # for 16: two products per int16 lane, exact for |x| <= 128, |w| <= 127: 2 * 16256 < 2^15);
    # the first chunk's int16 sums widen into int32 by saddlp, the next ones add in by sadalp;
    # then addp twice reduces the 4 channels' partial sums to one int32x4. Per row: k = 16,
    # 64 MACs in 17 instructions; k = 32, 128 MACs in 30 (not 34: one reduction per call).
    # The int16 pairs take 32 per 64 (ld1r, add, mul, sadalp per 8 MACs). The weights are the
    # rule's [k, 4] block, contiguous (the rule blocks the weight by exactly 4 channels and
    # checks it): per chunk one 64-byte (32-byte) load de-interleaved by 4 (LLVM: ld4), once
    # per step, shared by the tile's rows. (Loaded row by row, a block 8 channels wide compiled
    # to tbl shuffles.)
    from tvm import tirx
    k = 2 * pairs
    # A chunk of 8 first (k = 24): LLVM then kept fewer of its products live across the rows,
    # MobileNetV2's 24 -> 144 conv 8.33 -> 8.16 M instructions per inference (cortex-a72).
    chunks = sorted([(s, min(16, k - s)) for s in range(0, k, 16)], key=lambda c: c[1])
    xs = [A.vload([tirx.IntImm("int64", s)], f"int8x{n}") for s, n in chunks]
    ws = [B.vload([tirx.IntImm("int64", s), tirx.IntImm("int64", 0)], f"int8x{4 * n}") for s, n in chunks]

    def smull(a, b, half):
        part = list(range(8 * half, 8 * half + 8))
        return tirx.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.smull.v8i16",
                                          tirx.Shuffle([a], part), tirx.Shuffle([b], part))

    sums = []
    for o in range(4):
        acc = None
        for (_, n), x, w in zip(chunks, xs, ws):
            w_o = tirx.Shuffle([w], [4 * i + o for i in range(n)])  # rows 4 apart
            prod = smull(x, w_o, 0) if n == 8 else smull(x, w_o, 0) + smull(x, w_o, 1)
            wide = tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.saddlp.v4i32.v8i16", prod)
            acc = wide if acc is None else acc + wide  # LLVM: sadalp
        sums.append(acc)
    addp = [tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.addp.v4i32", sums[i], sums[i + 1])
            for i in (0, 2)]
    return tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.addp.v4i32", *addp)


def _dot_by_lane(A, B, k: int, acc):
    # k = 16 or 8 input channels per call: the k activation bytes in one load (ldr q/d), each
    # group of 4 broadcast by sdot's lane index (sdot v.4s, w.16b, x.4b[g]), against the
    # [k, 4] weight block (contiguous, as for mull_mac) transposed to [w_4g..4g+3,o0 ..] per
    # group. Per row and 16 channels: 1 load + 4 sdot, where k = 4 per call takes an ld1r, an
    # address add and an sdot per 4 channels.
    from tvm import tirx
    x = tirx.reinterpret(f"int32x{k // 4}", A.vload([tirx.IntImm("int64", 0)], f"int8x{k}"))
    w = B.vload([tirx.IntImm("int64", 0), tirx.IntImm("int64", 0)], f"int8x{4 * k}")  # rows 4 apart
    for g in range(k // 4):
        x_g = tirx.reinterpret("int8x16", tirx.Broadcast(tirx.Shuffle([x], [g]), 4))
        w_g = tirx.Shuffle([w], [(4 * g + j) * 4 + o for o in range(4) for j in range(4)])
        acc = tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.sdot.v4i32.v16i8", acc, w_g, x_g)
    return acc
