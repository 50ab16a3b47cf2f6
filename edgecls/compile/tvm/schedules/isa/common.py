"""Operand shapes both ISAs' widening intrinsics build: a broadcast activation pair and two
interleaved weight rows."""

from __future__ import annotations


def pair_broadcast(A, act: str, lanes: int, j: int = 0):
    """The pair (x_2j, x_2j+1) repeated `lanes` times (one broadcast load: vpbroadcastw/d,
    ld1r .4h/.4s), as a vector of 2 * lanes elements of the activation dtype."""
    from tvm import tirx
    bits = 32 if act == "int16" else 16
    pair = tirx.reinterpret(f"int{bits}", A.vload([tirx.IntImm("int64", 2 * j)], f"{act}x2"))
    return tirx.reinterpret(f"{act}x{2 * lanes}", tirx.Broadcast(pair, lanes))


def rows_interleaved(B, lanes: int, j: int = 0):
    """[w_2j,o0 w_2j+1,o0 w_2j,o1 ...]: weight rows 2j and 2j+1 zipped, as 2 * lanes int8."""
    from tvm import tirx
    rows = [B.vload([tirx.IntImm("int64", r), tirx.IntImm("int64", 0)], f"int8x{lanes}")
            for r in (2 * j, 2 * j + 1)]
    return tirx.Shuffle(rows, [c for i in range(lanes) for c in (i, i + lanes)])
