"""AVX2 widening multiply-accumulates: 4 or 2 input channels x 8 output channels per call.

* uint8 (quant.int8's "u8" mode, only for weights within [-64, 64]): byte pairs, k = 4. The 4
  activation bytes broadcast to every 32-bit lane (vpbroadcastd), the 4 weight rows transposed
  in registers to [w_k..k+3,o0  w_k..k+3,o1 ...]; vpmaddubsw sums each u8 x s8 byte pair into
  int16 (exact: 2 * 255 * 64 < 2^15, where full int8 weights could saturate), vpmaddwd by ones
  adds the two pairs of a lane into int32: 32 MACs per vpmaddubsw + vpmaddwd.
* int16 (int16(x_q) - z_x, written by the producer's epilogue): int16 pairs, k = 4 or 2. The pair
  (x_k, x_k+1) is one vpbroadcastd load per tile row, the weight rows w[k, o:o+8], w[k+1, o:o+8]
  are interleaved and sign-extended to int16 ([w_k,o0 w_k+1,o0 w_k,o1 ...]); vpmaddwd gives per
  lane x_k*w_k,o + x_k+1*w_k+1,o in int32: 16 MACs per instruction, exact (|each sum| < 2^16).
* int8/uint8 pairs (a vpshufb per pair and row): what quant.int8 gave these kernels before the
  int16 input (MobileNetV2 ~5 % slower); registered so that records of earlier tuning databases
  still replay.

The ceiling on this x86 host (no VNNI, benchmarks/mac_ceiling.py, one core): int16 pairs
(vpmaddwd + vpaddd) 0.82x its fp32 FMA throughput, byte pairs 1.44x.
"""

from __future__ import annotations

from edgecls.compile.tvm.schedules.isa.common import pair_broadcast, rows_interleaved


def _pairs_widened(A, act: str, pairs: int):
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


def pairs_mac(A, B, act: str, pairs: int):
    # Per pair, vpmaddwd of the widened pair and the widened interleaved rows:
    # x_k*w_k,o + x_k+1*w_k+1,o per int32 lane, exact (|each sum| < 2^16).
    from tvm import tirx
    if act == "int16":  # already widened: a 32-bit broadcast load per pair, no shuffle
        xs = [pair_broadcast(A, act, 8, j) for j in range(pairs)]
    elif pairs == 1:
        xs = [tirx.Cast("int16x16", pair_broadcast(A, act, 8))]
    else:
        xs = _pairs_widened(A, act, pairs)
    out = None
    for j, x in enumerate(xs):
        mac = tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", x,
                                         tirx.Cast("int16x16", rows_interleaved(B, 8, j)))
        out = mac if out is None else out + mac
    return out


def byte_pairs_mac(A, B, act: str, pairs: int):
    # 4 input channels x 8 output channels: the 4 uint8 activations broadcast to every 32-bit
    # lane (one vpbroadcastd load), the 4 weight rows transposed to [w_k..k+3,o0  w_k..k+3,o1 ..];
    # vpmaddubsw sums each byte pair into int16, exact only for weights within [-64, 64] (quant.int8
    # gives these kernels a uint8 input only then), vpmaddwd by ones sums the two pairs of a lane.
    from tvm import tirx
    x = tirx.reinterpret("uint8x32", tirx.Broadcast(
        tirx.reinterpret("int32", A.vload([tirx.IntImm("int64", 0)], "uint8x4")), 8))
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], "int8x8") for r in range(4)]
    w = tirx.Shuffle(rows, [8 * r + o for o in range(8) for r in range(4)])
    pairs16 = tirx.call_llvm_pure_intrin("int16x16", "llvm.x86.avx2.pmadd.ub.sw", x, w)
    ones = tirx.Broadcast(tirx.IntImm("int16", 1), 16)
    return tirx.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", pairs16, ones)
