"""Shapes both ISAs' int8 intrinsics share: a broadcast activation pair and two interleaved
weight rows (the widening intrinsics), and the c4 intrinsic's TVMScript (x86 vpdpbusd, ARM sdot)."""

from __future__ import annotations

from edgecls.compile.tvm.schedules.tir import ACC_SCOPE


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


C4_GROUP = 4  # input channels per c4 block: one vpdpbusd / sdot lane


def c4_prim_func(k: int, lanes: int, act: str, mac, implement: bool):
    """A c4 intrinsic's description (C[i] += A[r] * B[r // 4, i, r % 4], i < lanes vectorized as
    the reduction rule leaves it, r < k) or its implementation C[:] = mac(A, B, C[:]), over the
    same buffers: A k contiguous activations of dtype `act`, B the weight's [k / 4, lanes, 4] c4
    block (any group stride), C the tile's int32 accumulator in ACC_SCOPE."""
    from tvm.script import tirx as T
    groups, GROUP, LANES = k // C4_GROUP, C4_GROUP, lanes  # noqa: N806  (constants in the TVMScript)

    @T.prim_func(s_tir=True)
    def func(a: T.handle, b: T.handle, c: T.handle) -> None:
        s0 = T.int64()
        A = T.match_buffer(a, (T.int64(k),), act, offset_factor=1)
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
                C[T.ramp(T.int64(0), 1, LANES)] = mac(A, B, C[T.ramp(T.int64(0), 1, LANES)])

    return func
