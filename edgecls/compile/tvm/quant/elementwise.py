"""QDQ residual adds and max pools computed on the quantized tensors (part of int8.quantize_int8).

A QDQ graph wraps every residual add as quantize(add(dequantize(a), dequantize(b))) and every max
pool as quantize(max_pool2d(dequantize(x))). relax.quantize / relax.dequantize have no layout
rule in ConvertLayout, so in an NHWC build each of them pinned its tensors to NCHW: the conv
outputs were transposed into every add, the add's output transposed back for the next conv, and
the max pool ran on a transposed float copy of its input (ResNet-18, one thread: 3.3 ms of
transposes and float pooling in 46 ms). Rewritten here into layout-free elementwise ops and an
integer max pool, the whole chain stays NHWC and fuses into the producers' epilogues.

* add: q = clip(round(((a - z_a) * s_a + (b - z_b) * s_b) / s_y) + z_y), the same float32 steps
  as dequantize -> add -> quantize (relax.quantize divides by the scale, then rounds).
* max pool: max commutes with the monotone dequantize/quantize, so when the output keeps the
  input's scale and zero point (ONNX Runtime gives MaxPool shared parameters) it is a max pool of
  the quantized tensor. Its padding value, the dtype's minimum, is below every real input.
* global average pool (aarch64 builds, rewrite_elementwise's layout_free_mean): mean(dequantize(x))
  becomes mean((x - z) * s) in float32, the same exact values (|x - z| <= 255) as dequantize's
  int32 subtraction then float multiply. The pinned dequantize had left a transpose of the last
  conv's NHWC output back to NCHW: MobileNetV2 int8's 7x7x1280, one scalar loop of 14
  instructions per element (qemu 7.2 -cpu cortex-a76: 0.88 M of 46.2 M per inference).
"""

from __future__ import annotations

import numpy as np

from edgecls.compile.tvm.core import load_tvm
from edgecls.compile.tvm.quant.qdq import QRANGE
from edgecls.compile.tvm.quant.qdq import scalar_const as _scalar


def _patterns():
    load_tvm()
    from tvm.relax.dpl import is_const, is_op, wildcard

    def deq(x):
        return is_op("relax.dequantize")(x, is_const(), is_const())

    p = {"a": wildcard(), "b": wildcard(), "x": wildcard()}
    p["deq_a"], p["deq_b"] = deq(p["a"]), deq(p["b"])
    p["add"] = is_op("relax.add")(p["deq_a"], p["deq_b"])
    p["qadd"] = is_op("relax.quantize")(p["add"], is_const(), is_const())
    p["deq_x"] = deq(p["x"])
    p["pool"] = is_op("relax.nn.max_pool2d")(p["deq_x"])
    p["qpool"] = is_op("relax.quantize")(p["pool"], is_const(), is_const())
    p["m_x"] = wildcard()
    p["deq_m"] = deq(p["m_x"])
    p["mean"] = is_op("relax.mean")(p["deq_m"])
    return p


def _params(call) -> tuple[float, float] | None:
    """(scale, zero point) of a quantize/dequantize call, when both are per-tensor constants."""
    s, z = _scalar(call.args[1]), _scalar(call.args[2])
    return None if s is None or z is None or s <= 0 or z != int(z) else (s, z)


def rewrite_elementwise(func, stats: dict, layout_free_mean: bool = False):
    """Rewrite the QDQ adds and max pools of a Relax function (see the module doc); counts go to
    stats["add"] and stats["max_pool"]. layout_free_mean: also the dequantize of a global average
    pool (stats["mean"]); only aarch64 builds ask, so the x86 model.so stays as it was."""
    load_tvm()
    from tvm import relax
    from tvm.relax.dpl import rewrite_call

    p = _patterns()
    for key in ("add", "max_pool", "mean"):
        stats.setdefault(key, 0)

    def f32(v: float):
        return relax.const(np.float32(v), "float32")

    def rewrite_add(orig, m):
        quant, ins = m[p["qadd"]], (m[p["a"]], m[p["b"]])
        params = [_params(m[p["deq_a"]]), _params(m[p["deq_b"]]), _params(quant)]
        out_dtype = str(quant.attrs.out_dtype)
        if None in params or out_dtype not in QRANGE or any(str(q.ty.dtype) not in QRANGE for q in ins):
            return orig
        terms = []
        for q, (s, z) in zip(ins, params):
            y = relax.op.astype(q, "float32")
            terms.append(relax.op.multiply(relax.op.subtract(y, f32(z)) if z else y, f32(s)))
        s_y, z_y = params[2]
        y = relax.op.round(relax.op.divide(relax.op.add(*terms), f32(s_y)))
        lo, hi = QRANGE[out_dtype]
        y = relax.op.minimum(relax.op.maximum(relax.op.add(y, f32(z_y)), f32(lo)), f32(hi))
        stats["add"] += 1
        return relax.op.astype(y, out_dtype)

    def rewrite_pool(orig, m):
        x, pool, quant = m[p["x"]], m[p["pool"]], m[p["qpool"]]
        params = _params(m[p["deq_x"]])
        if params is None or params != _params(quant) or str(x.ty.dtype) != str(quant.attrs.out_dtype):
            return orig
        a = pool.attrs
        stats["max_pool"] += 1
        return relax.op.nn.max_pool2d(x, pool_size=a.pool_size, strides=a.strides, padding=a.padding,
                                      dilation=a.dilation, ceil_mode=a.ceil_mode,
                                      count_include_pad=a.count_include_pad, layout=a.layout,
                                      out_layout=a.out_layout)

    def rewrite_mean(orig, m):
        x, params = m[p["m_x"]], _params(m[p["deq_m"]])
        if params is None or str(x.ty.dtype) not in QRANGE or str(m[p["deq_m"]].attrs.out_dtype) != "float32":
            return orig
        s, z = params
        y = relax.op.astype(x, "float32")
        y = relax.op.multiply(relax.op.subtract(y, f32(z)) if z else y, f32(s))
        stats["mean"] += 1
        return relax.op.mean(y, axis=orig.attrs.axis, keepdims=orig.attrs.keepdims)

    func = rewrite_call(p["qadd"], rewrite_add, func)
    func = rewrite_call(p["qpool"], rewrite_pool, func)
    return rewrite_call(p["mean"], rewrite_mean, func) if layout_free_mean else func
