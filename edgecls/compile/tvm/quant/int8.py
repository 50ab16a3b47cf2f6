"""Integer compute for QDQ int8 models: a Relax rewrite of dequantize -> conv2d/matmul -> quantize.

TVM 0.27 imports a QDQ ONNX file (ONNX Runtime `quantize_static`, torchao PT2E) as float ops
between relax.quantize / relax.dequantize: FoldConstant then turns every int8 weight into a
float32 constant, so the "int8" build is an fp32 build with extra rounding. This pass, run right
after import (before the first FoldConstant), rewrites

    q = quantize(act(add(conv2d|matmul(dequantize(x_q), dequantize(W_q)), bias)), s_y, z_y)

into

    acc = conv2d|matmul(x_q, W_q, out_dtype="int32") + bias_i32      (int8/uint8 x int8 -> int32)
    q   = astype(clamp(round(astype(acc, f32) * M) + z_y, lo, hi), u8|i8)

* W_q stays an int8 constant (the artifact keeps 1/4 of the fp32 weight bytes).
* zero points: weights must be symmetric (z_w = 0); the activation zero point z_x is folded into
  the int32 bias as -z_x * sum(W_q[o]) (the sum-of-weights term). That is exact only where every
  tap reads a real input, so a padded conv with z_x != 0 gets an explicit pad with value z_x
  (real 0.0 in the quantized domain) and an unpadded conv2d.
* the input of regular (not depthwise) convs and matmuls is what the widening_int8 schedule's kernels
  multiply: on AVX2 with weights within [-64, 64], uint8 (an int8 input shifted by 128) for
  vpmaddubsw; with ARMv8.2 dotprod, int8 (a uint8 input shifted by -128) for sdot; both with
  channels padded to fours; otherwise int16(x_q) - z_x (zero padded, no correction term) for
  the int16-pair kernels, channels padded to pairs. Padding channels have zero weights.
  Depthwise convs on aarch64 read int16(x_q) - z_x with int16 weights (smlal by vector);
  elsewhere the 8-bit input as is. quant.operands decides and prepares it.
* bias: an ORT int32 bias whose scale is s_x * s_w is used as is; any other (float, torchao)
  bias is rounded to int32 at scale s_x * s_w (error <= half an accumulator step), unless it
  would overflow the int32 accumulator: then it is added in float after the multiplier.
* requantize: float32 multiply + round-half-even, M[o] = s_x * s_w[o] / s_y (float64, then
  float32). Chosen over a fixed-point multiplier + shift because it is what the QDQ reference
  computes (round(y / s_y)), the int32 accumulator (< 2^24 for these layers) converts exactly,
  and AVX2/NEON convert/multiply/round float32 vectors in one instruction each, where the
  fixed-point form needs 32x32->64 multiplies that TVM's vectorizer scalarizes on AVX2.
* activation: relu / maximum / minimum (ReLU, ReLU6 via our Clip converter) before the quantize
  become the clamp bounds lo/hi in the quantized domain (round is monotone, so max(y, c)
  quantizes to max(q, round(c / s_y) + z_y)).
* a conv/matmul + bias without a following quantize (torchao's float classifier output) gets the
  integer product and a float epilogue: astype(acc, f32) * (s_x * s_w) + bias.
"""

from __future__ import annotations

import numpy as np

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.quant.column_fold import column_folded_conv
from edgecls.compile.tvm.quant.elementwise import rewrite_elementwise
from edgecls.compile.tvm.quant.operands import Skip as _Skip
from edgecls.compile.tvm.quant.operands import input_mode, int_product, prepared_input
from edgecls.compile.tvm.quant.qdq import QRANGE


def _np(expr) -> np.ndarray:
    tvm = load_tvm()
    if not isinstance(expr, tvm.ir.GenericConst):
        raise _Skip("not a constant")
    return expr.value.numpy()


def _scalar(expr) -> float:
    a = _np(expr)
    if a.size != 1:
        raise _Skip("per-channel activation parameter")
    return float(a.reshape(-1)[0])


def _dtype(expr) -> str:
    return str(expr.ty.dtype)


def _patterns():
    load_tvm()
    from tvm.relax.dpl import is_const, is_op, wildcard

    p = {"x_q": wildcard(), "x_s": is_const(), "x_z": is_const(),
         "w_q": is_const(), "w_s": is_const(), "w_z": is_const()}
    p["deq_x"] = is_op("relax.dequantize")(p["x_q"], p["x_s"], p["x_z"])
    p["deq_w"] = is_op("relax.dequantize")(p["w_q"], p["w_s"], p["w_z"])
    p["w_t"] = is_op("relax.permute_dims")(p["deq_w"])
    p["conv"] = is_op("relax.nn.conv2d")(p["deq_x"], p["deq_w"])
    p["mm"] = is_op("relax.matmul")(p["deq_x"], p["w_t"] | p["deq_w"])
    core = p["conv"] | p["mm"]
    p["b_deq"] = is_op("relax.dequantize")(is_const(), is_const(), is_const())
    p["b_const"] = is_const()
    b_val = p["b_deq"] | p["b_const"]
    bias = b_val | is_op("relax.reshape")(b_val, wildcard())
    p["add"] = is_op("relax.add")(core, bias)
    pre = p["add"] | core
    p["relu"] = is_op("relax.nn.relu")(pre)
    p["max"] = is_op("relax.maximum")(pre, is_const())
    lower = p["relu"] | p["max"] | pre
    p["min"] = is_op("relax.minimum")(lower, is_const())
    p["y_s"], p["y_z"] = is_const(), is_const()
    p["quant"] = is_op("relax.quantize")(p["min"] | lower, p["y_s"], p["y_z"])
    # A ReLU with its own QDQ pair (ORT, int8 activations): Q(relu(DQ(q, s, z)), s, z).
    p["r_q"], p["r_s"], p["r_z"] = wildcard(), is_const(), is_const()
    p["r_relu"] = is_op("relax.nn.relu")(is_op("relax.dequantize")(p["r_q"], p["r_s"], p["r_z"]))
    p["r_quant"] = is_op("relax.quantize")(p["r_relu"], is_const(), is_const())
    return p


def _weight(m, p):
    """(W_q int8 array as fed to the int op, per-output-channel scale, is_conv)."""
    w_q, w_s, w_z = _np(m[p["w_q"]]), _np(m[p["w_s"]]).astype(np.float64), _np(m[p["w_z"]])
    if w_q.dtype != np.int8 or np.any(w_z != 0) or np.any(w_s <= 0):
        raise _Skip("weights must be int8, symmetric, positive scale")
    deq = m[p["deq_w"]]
    axis = int(deq.attrs.axis) % w_q.ndim
    if w_s.size == 1:
        full = np.full(w_q.shape, w_s.reshape(-1)[0])
    elif w_s.size == w_q.shape[axis]:
        shape = [1] * w_q.ndim
        shape[axis] = -1
        full = np.broadcast_to(w_s.reshape(shape), w_q.shape)
    else:
        raise _Skip("weight scale shape")
    if p["conv"] in m:
        call = m[p["conv"]]
        if str(call.attrs.kernel_layout) != "OIHW" or str(call.attrs.data_layout) != "NCHW":
            raise _Skip("conv layout (the pass runs before ConvertLayout)")
        scale = full.reshape(full.shape[0], -1)
        if not np.all(scale == scale[:, :1]):
            raise _Skip("weight scale not per output channel")
        return w_q, scale[:, 0], True
    if p["w_t"] in m:
        axes = m[p["w_t"]].attrs.axes
        axes = None if axes is None else [int(a) for a in axes]
        w_q, full = np.transpose(w_q, axes), np.transpose(full, axes)
    if w_q.ndim != 2:
        raise _Skip("matmul weight must be 2-D")
    if not np.all(full == full[:1, :]):
        raise _Skip("weight scale not per output column")
    return np.ascontiguousarray(w_q), full[0], False


def _bias_i32(m, p, acc_scale: np.ndarray, n_out: int) -> np.ndarray:
    if p["add"] not in m:
        return np.zeros(n_out, np.int64)
    if p["b_deq"] in m:
        b_q, b_s, b_z = (_np(a) for a in m[p["b_deq"]].args)
        b_s = b_s.astype(np.float64)
        exact = (b_q.dtype == np.int32 and np.all(b_z == 0) and b_q.size == n_out
                 and np.allclose(np.broadcast_to(b_s.reshape(-1), (n_out,)), acc_scale, rtol=1e-6, atol=0))
        if exact:
            return b_q.reshape(-1).astype(np.int64)
        b = (b_q.astype(np.float64) - b_z.astype(np.float64)) * b_s
    else:
        b = _np(m[p["b_const"]]).astype(np.float64)
    if b.size not in (1, n_out):
        raise _Skip("bias shape")
    return np.round(np.broadcast_to(b.reshape(-1), (n_out,)) / acc_scale).astype(np.int64)


def _int_bias(m, p, w_q: np.ndarray, is_conv: bool, n_out: int, z_in: int, acc_scale: np.ndarray):
    """(the int32 bias, the bias in real units when it must be added in float, else None) of a
    match: its own bias at the accumulator's scale, minus the zero-point correction."""
    # Zero-point correction: sum over everything one output channel reduces over.
    w_sum = w_q.reshape(n_out, -1).sum(1, dtype=np.int64) if is_conv else w_q.sum(0, dtype=np.int64)
    k = w_q.reshape(n_out, -1).shape[1] if is_conv else w_q.shape[0]
    correction = z_in * w_sum
    bias_int = _bias_i32(m, p, acc_scale, n_out)
    float_bias = None
    # The widest possible |acc| + bias must fit int32. A bias far beyond the products' range (a
    # channel whose weights pruning or training left near zero: tiny s_w, so bias / (s_x * s_w)
    # is huge; ORT then keeps that bias in float too) is added in float in the epilogue instead.
    if 255 * 128 * k + np.abs(bias_int - correction).max(initial=0) >= 2 ** 31:
        float_bias, bias = bias_int * acc_scale, -correction
    else:
        bias = bias_int - correction
    if 255 * 128 * k + np.abs(bias).max(initial=0) >= 2 ** 31:
        raise _Skip("accumulator could overflow int32")
    return bias, float_bias


def _int_core(m, p, bb_const, eight_bit: str | None = None, add_func=None):
    """The int32 conv2d/matmul + bias of a match: (acc expr, per-channel shape, acc scale, the
    bias in real units when it must be added in float, else None). add_func(name, prim_func) ->
    GlobalVar: where a kernel of the input's own (quant.column_fold) goes."""
    load_tvm()
    from tvm import relax

    x_q = m[p["x_q"]]
    x_dtype = _dtype(x_q)
    if x_dtype not in QRANGE:
        raise _Skip(f"activation dtype {x_dtype}")
    s_x, z_x = _scalar(m[p["x_s"]]), _scalar(m[p["x_z"]])
    if s_x <= 0 or z_x != int(z_x):
        raise _Skip("activation scale/zero point")
    w_q, s_w, is_conv = _weight(m, p)
    acc_scale = s_x * s_w
    n_out = w_q.shape[0] if is_conv else w_q.shape[1]
    mode, multiple = input_mode(m, p, w_q, is_conv, eight_bit)
    data, z_in = prepared_input(x_q, int(z_x), mode)
    # The kernels take input channels in pairs (fours): a count that is not a multiple (the RGB
    # stem conv, a pruned layer) gets zero weight channels (and input channels of any value).
    extra = -(w_q.shape[1] if is_conv else w_q.shape[0]) % multiple
    if extra:
        w_q = np.pad(w_q, [(0, 0), (0, extra), (0, 0), (0, 0)] if is_conv else [(0, extra), (0, 0)])
    bias, float_bias = _int_bias(m, p, w_q, is_conv, n_out, z_in, acc_scale)
    if mode == "int16" and multiple == 1:  # depthwise on aarch64: int16 x int16 (operands.input_mode)
        w_q = w_q.astype(np.int16)
    if mode == "s8_cols":
        acc, ch_shape = column_folded_conv(m[p["conv"]].attrs, data, x_q.ty.shape, w_q, z_in, bb_const, add_func)
    else:
        acc, ch_shape = int_product(m, p, x_q, data, bb_const(w_q), extra, z_in, is_conv, n_out)
    if np.any(bias != 0):
        acc = relax.op.add(acc, bb_const(bias.astype(np.int32).reshape(ch_shape)))
    if float_bias is not None:
        float_bias = float_bias.reshape(ch_shape)
    return acc, ch_shape, acc_scale, float_bias


def _requantize(m, p, acc, ch_shape, acc_scale, float_bias, bb_const):
    from tvm import relax

    quant = m[p["quant"]]
    out_dtype = str(quant.attrs.out_dtype)
    if out_dtype not in QRANGE:
        raise _Skip(f"output dtype {out_dtype}")
    s_y, z_y = _scalar(m[p["y_s"]]), _scalar(m[p["y_z"]])
    if s_y <= 0 or z_y != int(z_y):
        raise _Skip("output scale/zero point")
    lo, hi = QRANGE[out_dtype]
    if p["relu"] in m:
        lo = max(lo, int(z_y))
    if p["max"] in m:
        lo = max(lo, int(np.round(_scalar(m[p["max"]].args[1]) / s_y) + z_y))
    if p["min"] in m:
        hi = min(hi, int(np.round(_scalar(m[p["min"]].args[1]) / s_y) + z_y))
    mult = (acc_scale / s_y).astype(np.float32).reshape(ch_shape)
    y = relax.op.multiply(relax.op.astype(acc, "float32"), bb_const(mult))
    if float_bias is not None:
        y = relax.op.add(y, bb_const((float_bias / s_y).astype(np.float32)))
    y = relax.op.round(y)
    if z_y:
        y = relax.op.add(y, relax.const(float(z_y), "float32"))
    y = relax.op.maximum(y, relax.const(float(lo), "float32"))
    y = relax.op.minimum(y, relax.const(float(hi), "float32"))
    return relax.op.astype(y, out_dtype)


class _Rewrites:
    """The rewrite_call callbacks of quantize_int8, counting into `stats`."""

    def __init__(self, p: dict, stats: dict, eight_bit: str | None):
        self.p, self.stats, self.eight_bit = p, stats, eight_bit
        self.builder = None  # a relax.BlockBuilder on the module: the PrimFuncs the rewrites call

    def add_func(self, name: str, func):
        """(quant.column_fold) Put a PrimFunc into the module; its GlobalVar."""
        return self.builder.add_func(func, name)

    @staticmethod
    def const(a):
        from tvm import relax
        return relax.const(np.ascontiguousarray(a))

    def _count(self, m, what):
        self.stats[what if what == "float_out" else ("conv2d" if self.p["conv"] in m else "matmul")] += 1

    def _skip(self, orig, exc):
        self.stats["skipped"] += 1
        self.stats["skipped_reasons"].append(str(exc))
        return orig

    def quantized(self, orig, m):
        """dequantize -> conv2d/matmul (+ bias, activation) -> quantize: integer, requantized."""
        try:
            out = _requantize(m, self.p, *_int_core(m, self.p, self.const, self.eight_bit, self.add_func), self.const)
        except _Skip as exc:
            return self._skip(orig, exc)
        self._count(m, "quant")
        return out

    def float_out(self, orig, m):
        """conv2d/matmul + bias without a quantize after it: integer product, float epilogue."""
        from tvm import relax
        p = self.p
        if p["add"] not in m:
            return orig
        try:
            acc, ch_shape, acc_scale, float_bias = _int_core(m, p, self.const, self.eight_bit, self.add_func)
        except _Skip as exc:
            return self._skip(orig, exc)
        self._count(m, "float_out")
        # The integer bias is inside acc already; only the scale is left (and a float bias).
        scale = self.const(acc_scale.astype(np.float32).reshape(ch_shape))
        y = relax.op.multiply(relax.op.astype(acc, "float32"), scale)
        return y if float_bias is None else relax.op.add(y, self.const(float_bias.astype(np.float32)))

    def relu(self, orig, m):
        """Q(relu(DQ(q, s, z)), s, z) -> max(q, z)."""
        from tvm import relax
        p = self.p
        q, (s_in, z_in), (s_out, z_out) = m[p["r_q"]], m[p["r_quant"]].args[1:], (m[p["r_s"]], m[p["r_z"]])
        same = (_dtype(q) == str(m[p["r_quant"]].attrs.out_dtype) and _np(s_in).size == 1 and _np(z_in).size == 1
                and float(_np(s_in).reshape(-1)[0]) == _scalar(s_out) and float(_np(z_in).reshape(-1)[0]) == _scalar(z_out))
        if not same:
            return orig
        self.stats["relu"] += 1
        return relax.op.maximum(q, relax.const(int(_scalar(z_out)), _dtype(q)))


def quantize_int8(mod, stats: dict | None = None, eight_bit: str | None = None):
    """Rewrite every QDQ conv2d/matmul of `main` into integer compute (see the module doc).

    Run right after import, before FoldConstant. eight_bit: the target's 8-bit kernels
    (schedules.isa.eight_bit_kernels): "u8" AVX2 byte pairs (7-bit weights), "s8" ARMv8.2
    sdot, None (int16 pairs only). `stats` (a dict) receives the counts:
    conv2d / matmul (requantized to int8/uint8), float_out (integer product, float epilogue),
    relu (a QDQ-wrapped ReLU turned into max(q, z)), add / max_pool (quant.elementwise),
    skipped (matched, left in float: the reasons in skipped_reasons).
    """
    load_tvm()
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    stats = {} if stats is None else stats
    for key in ("conv2d", "matmul", "float_out", "relu", "skipped"):
        stats.setdefault(key, 0)
    stats.setdefault("skipped_reasons", [])
    r = _Rewrites(_patterns(), stats, eight_bit)
    r.builder = relax.BlockBuilder(mod)
    func = mod["main"]
    func = rewrite_call(r.p["quant"], r.quantized, func)
    # residual adds, max pools: layout-free, integer; on aarch64 ("s8" modes) the global average pool's dequantize too
    func = rewrite_elementwise(func, stats, layout_free_mean=str(eight_bit).startswith("s8"))
    func = rewrite_call(r.p["r_quant"], r.relu, func)
    func = rewrite_call(r.p["add"], r.float_out, func)
    mod = r.builder.get()  # a copy of the module with the added PrimFuncs
    mod["main"] = func
    mod = relax.transform.DeadCodeElimination(["main"])(mod)
    return mod


def int8_summary(mod) -> dict:
    """What the module computes in: int/float conv2d & matmul counts and constant bytes by dtype."""
    tvm = load_tvm()
    from tvm import relax

    ops: dict[str, int] = {}
    consts: dict[str, int] = {}

    def visit(expr):
        if isinstance(expr, tvm.ir.GenericConst):
            a = expr.value
            dt = str(a.dtype)
            consts[dt] = consts.get(dt, 0) + int(np.prod(a.shape)) * np.dtype(dt).itemsize
        elif isinstance(expr, relax.Call) and getattr(expr.op, "name", None) in ("relax.nn.conv2d", "relax.matmul"):
            kind = expr.op.name.split(".")[-1]
            key = f"{kind}_{expr.ty.dtype}"
            ops[key] = ops.get(key, 0) + 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return {"ops": ops, "const_bytes": consts}
