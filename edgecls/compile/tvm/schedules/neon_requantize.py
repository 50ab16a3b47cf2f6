"""The int8 requantize epilogue on aarch64: round-and-convert in one instruction, clamp in int16.

quant.int8 requantizes as astype(clamp(round(acc * M) + z, lo, hi), u8|i8), in float32 (see
its module doc). After the schedules inline that chain into the conv's tile, LLVM compiles it
per 4 outputs (one NEON vector) to scvtf, fmul, frinti, [fadd z], fmaxnm, fminnm, fcvtzs, xtn,
xtn, str: in MobileNetV2's 112x112 16 -> 96 1x1 conv, 8 rows x 4 channels take 120 MAC
instructions (smull, smlal2, saddlp, addp) and 72 for the epilogue. This pass rewrites the TIR expression, after scheduling, into

    q16 = sqxtn(fcvtns(acc * M))                  (round half to even and convert, saturating)
    out = astype(clamp(q16, lo - z, hi - z) + z, u8|i8)

fcvtns rounds to nearest, ties to even, as frinti does in the default rounding mode (the QDQ
reference's round), and saturates; sqxtn saturates to int16 (LLVM selects it for a clamp to
the int16 range followed by a truncation); clamping before the zero point keeps the int16 add
exact (|q16| <= 383 after the clamp). Outside int16 the saturations meet the clamp bounds
first, so every output equals the float chain's. Per 4 outputs: scvtf, fmul, fcvtns, sqxtn,
smax, smin, [add], xtn, str.

Measured (qemu 7.2 -cpu cortex-a72, one thread, 224x224, ptq_onnx nets, instructions per
inference): MobileNetV2 int8 111.32 M -> 111.11 M, ResNet-18 int8 526.98 M -> 526.72 M;
on jetson-orin-nano (sdot, -cpu cortex-a76) MobileNetV2 int8 76.00 M -> 75.15 M. Less
than the 2-3 per 4 outputs hoped for: the relu / relu6 bounds still cost smax + smin (as
fmaxnm + fminnm did), the int8 narrowing a xtn, and 4-lane vectors leave no 8 / 16-lane
saturating narrow (sqxtun .8b) to fold the bounds into; what goes is frinti (fcvtns rounds and
converts) and, for int16 consumers, the xtn (sqxtn narrows and saturates).

After a ReLU (lower bound lo = z, the zero point) the saturating narrow takes that bound too:

    u16 = sqxtun(fcvtns(acc * M))                 (saturates to [0, 65535])
    out = astype(min(u16, hi - z) + z, u8|i8)

sqxtun + umin where sqxtn + smax + smin were (|fcvtns| past 65535 meets hi - z <= 255 first).
Measured (qemu 7.2, one thread, instructions per inference, MobileNetV2 int8): rk3399 (-cpu
cortex-a72) 97.19 -> 96.03 M, jetson-orin-nano (-cpu cortex-a76) 45.36 -> 44.87 M.

Only on aarch64 (the x86 model.so stays byte-identical), and only in scalar code or loops
vectorized 4 wide: fcvtns is a target intrinsic LLVM cannot split (8 or 16 lanes would not
compile); 8- and 16-lane epilogues (schedules/neon_dot.py, neon_dot_depthwise.py) round
and convert with LLVM's generic intrinsics, which fcvtns_after_vectorize turns back into one
fcvtns per 4 lanes once the loops are vectors; other widths keep the float chain.
"""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm

_QTYPES = {"int8": (-128, 127), "uint8": (0, 255)}
_LANES_OK = (1, 2, 4)
_WIDE_LANES = (8, 16)


def _float_imm(expr):
    tvm = load_tvm()
    if isinstance(expr, tvm.tirx.FloatImm):
        return float(expr.value)
    if isinstance(expr, tvm.tirx.Broadcast):
        return _float_imm(expr.value)
    return None


def _round_arg(expr):
    """y of round(y) / nearbyint(y), else None."""
    tvm = load_tvm()
    if isinstance(expr, tvm.ir.expr.Call) and getattr(expr.op, "name", "") in ("tirx.round", "tirx.nearbyint"):
        return expr.args[0]
    return None


def _match(cast):
    """(y, z, lo, hi) of cast(clamp(round(y) [+ z], lo, hi)) to int8/uint8, else None."""
    tvm = load_tvm()
    tx = tvm.tirx
    dtype = str(cast.ty.dtype)  # a vector cast ("int8x4") is no key of _QTYPES
    if dtype not in _QTYPES or str(cast.value.ty.dtype) != "float32":
        return None
    mn = cast.value
    if not isinstance(mn, tx.Min) or not isinstance(mn.a, tx.Max):
        return None
    hi, lo = _float_imm(mn.b), _float_imm(mn.a.b)
    inner, z = mn.a.a, 0.0
    if isinstance(inner, tx.Add) and _float_imm(inner.b) is not None:
        inner, z = inner.a, _float_imm(inner.b)
    y = _round_arg(inner)
    t_lo, t_hi = _QTYPES[dtype]
    if y is None or hi is None or lo is None or z != int(z) or not (t_lo <= lo <= hi <= t_hi):
        return None
    return y, int(z), int(lo), int(hi)


def _rounded_int32(y, generic: bool):
    """round-half-even(y) as a saturating int32: fcvtns, or LLVM's generic fptosi.sat(roundeven)
    in loops vectorized wider than fcvtns compiles (see _integer_requantize)."""
    tx = load_tvm().tirx
    if generic:
        return tx.call_llvm_pure_intrin("int32", "llvm.fptosi.sat",
                                        tx.call_llvm_pure_intrin("float32", "llvm.roundeven", y))
    return tx.call_llvm_pure_intrin("int32", "llvm.aarch64.neon.fcvtns", y)


def _integer_requantize(cast, generic: bool = False):
    """The rewritten expression of a matched cast (module doc), or the cast itself. generic:
    round and convert with LLVM's generic fptosi.sat(roundeven(y)), which it splits at any
    vector width (the target intrinsic only compiles 1-4 lanes); TVM 0.27's LLVM selects it
    as frintn + fcvtzs per 4 lanes, one more than fcvtns, which the 8-lane narrowing (sqxtn2,
    one smax/smin/store per 8) more than pays back: MobileNetV2 int8 on cortex-a76 52.5 -> 51.6 M."""
    tvm = load_tvm()
    tx = tvm.tirx
    found = _match(cast)
    if found is None:
        return cast
    y, z, lo, hi = found
    i16 = lambda v: tx.IntImm("int16", v)  # noqa: E731
    r32 = _rounded_int32(y, generic)
    if lo == z:  # a ReLU's lower bound: sqxtun saturates to it, one umin takes the upper one
        u16 = tx.Cast("uint16", tx.Min(tx.Max(r32, tx.IntImm("int32", 0)), tx.IntImm("int32", 65535)))
        v = tx.Cast("int16", tx.Min(u16, tx.IntImm("uint16", hi - z)))
    else:
        q16 = tx.Cast("int16", tx.Min(tx.Max(r32, tx.IntImm("int32", -32768)), tx.IntImm("int32", 32767)))
        v = tx.Min(tx.Max(q16, i16(lo - z)), i16(hi - z))
    if z:
        v = tx.Add(v, i16(z))
    return tx.Cast(str(cast.ty.dtype), v)


def _integer_dequantize(read_back, z_sub: float, generic: bool):
    """float(cast(clamp(round(y) + z, lo, hi))) - z_sub, a requantized value read back as float
    (ResNet-18's residual adds: the conv's requantize, then its dequantize), as
    float(clamp(round(y), lo - z, hi - z) + (z - z_sub)) in int32: no narrowing and widening
    back, no float clamp. Exact: every value is a small integer (|.| < 2^24), so the float
    subtraction was exact too. None when the read-back is no matched cast."""
    tx = load_tvm().tirx
    found = _match(read_back.value)
    if found is None or z_sub != int(z_sub):
        return None
    y, z, lo, hi = found
    i32 = lambda v: tx.IntImm("int32", v)  # noqa: E731
    v = tx.Min(tx.Max(_rounded_int32(y, generic), i32(lo - z)), i32(hi - z))
    if z != int(z_sub):
        v = tx.Add(v, i32(z - int(z_sub)))
    return tx.Cast(str(read_back.ty.dtype), v)


def _rewrite(stmt):
    """stmt with every matched cast rewritten, except inside loops vectorized wider than 4; a
    requantized value read back as float (a fused dequantize: ResNet-18's residual adds) in int32
    (_integer_dequantize) in the same pass. Rewriting only the outer casts of such a function
    left LLVM scalarizing it (+2 M each). Measured (qemu 7.2, one thread, instructions per
    inference): ResNet-18 int8 jetson-orin-nano (-cpu cortex-a76) 149.76 -> 148.19 M (its 56x56
    residual convs 10.0 -> 9.6 M each), rk3399 (-cpu cortex-a72) 439.87 -> 438.62 M; MobileNetV2
    int8 a72 91.49 -> 91.19 M, a76 44.75 -> 44.30 M; outputs unchanged."""
    tvm = load_tvm()
    import tvm_ffi
    tx = tvm.tirx
    generic = []  # inside a loop vectorized 8 or 16 wide

    def loop(node, mutator):
        if node.kind == tx.ForKind.VECTORIZED:
            ext = int(node.extent.value) if isinstance(node.extent, tx.IntImm) else 0
            if ext in _WIDE_LANES:
                generic.append(node)
                try:
                    return mutator.default_mutate(node)
                finally:
                    generic.pop()
            if ext not in _LANES_OK:
                return node  # left as is, no descent
        return mutator.default_mutate(node)

    def read_back(node) -> bool:
        return isinstance(node, tx.Cast) and str(node.ty.dtype) == "float32" and isinstance(node.value, tx.Cast)

    def sub(node, mutator):
        z = _float_imm(node.b)
        if read_back(node.a) and z is not None:
            new = _integer_dequantize(node.a, z, bool(generic))
            if new is not None:
                return new
        return mutator.default_mutate(node)

    def cast(node, mutator):
        if read_back(node):
            new = _integer_dequantize(node, 0.0, bool(generic))
            if new is not None:
                return new
        return _integer_requantize(mutator.default_mutate(node), bool(generic))

    return tvm_ffi.structural_mutate(stmt, [(tx.For, loop), (tx.Sub, sub), (tx.Cast, cast)])


def neon_requantize(mod, tvm_target: dict):
    """Every PrimFunc of `mod` with its requantize epilogues rewritten (module doc) when the
    target is aarch64; (mod, number of functions changed)."""
    tvm = load_tvm()
    if not str(tvm_target.get("mtriple", "")).startswith("aarch64"):
        return mod, 0
    updates = {}
    for gvar, func in mod.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            body = _rewrite(func.body)
            if not body.same_as(func.body):
                updates[gvar] = func.with_body(body)
    if updates:
        mod = mod.clone()
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
    return mod, len(updates)


def _intrinsic_id(name: str) -> int:
    from tvm.target import codegen
    return int(codegen.llvm_lookup_intrinsic_id(name))


def _fcvtns_by_quarters(call, ids: dict):
    """fptosi.sat(roundeven(y)) of 8 or 16 lanes (after vectorization) as fcvtns of each 4-lane
    slice of y, concatenated; None for any other expression. Same value: both round half to
    even and saturate to int32 (NaN to 0)."""
    tvm = load_tvm()
    tx = tvm.tirx
    if getattr(call.op, "name", "") != "tirx.call_llvm_pure_intrin" or int(call.args[0].value) != ids["sat"]:
        return None
    lanes = call.ty.dtype.lanes
    if lanes not in _WIDE_LANES:
        return None
    inner = call.args[1]
    if not isinstance(inner, tvm.ir.expr.Call) or getattr(inner.op, "name", "") != "tirx.call_llvm_pure_intrin" \
            or int(inner.args[0].value) != ids["roundeven"]:
        return None
    y = inner.args[1]
    quarters = [tx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.fcvtns",
                                         tx.Shuffle([y], [tx.IntImm("int32", i + j) for j in range(4)]))
                for i in range(0, lanes, 4)]
    return tx.Shuffle(quarters, [tx.IntImm("int32", i) for i in range(lanes)])


def fcvtns_after_vectorize():
    """A TIR pass for after VectorizeLoop (lower.py runs it after TVM's TIR pipeline on aarch64):
    the wide epilogues' generic rounding (_integer_requantize's generic form, which TVM 0.27's
    LLVM selects as frintn + fcvtzs per 4 lanes) becomes one fcvtns per 4 lanes; the 8-lane
    narrowing stays. Measured (qemu 7.2 -cpu cortex-a76, jetson-orin-nano, one thread,
    instructions per inference): MobileNetV2 int8 48.31 -> 46.66 M."""
    tvm = load_tvm()
    import tvm_ffi
    tx = tvm.tirx
    ids = {"sat": _intrinsic_id("llvm.fptosi.sat"), "roundeven": _intrinsic_id("llvm.roundeven")}

    def call(node, mutator):
        node = mutator.default_mutate(node)
        new = _fcvtns_by_quarters(node, ids)
        return node if new is None else new

    def rewrite(func, _mod, _ctx):
        body = tvm_ffi.structural_mutate(func.body, [(tvm.ir.expr.Call, call)])
        return func if body.same_as(func.body) else func.with_body(body)

    return tx.transform.prim_func_pass(rewrite, opt_level=0, name="edgecls.FcvtnsAfterVectorize")
