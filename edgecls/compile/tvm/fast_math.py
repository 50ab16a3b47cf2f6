"""Legalizations of the transcendental activations with TOPI's vectorizable approximations.

TIR's exp and erf lower, in LLVM, to one libm call per lane (`expf`, `erff`): a vectorized loop
is taken apart into scalar calls, and the activation costs more than the conv or matmul it is
fused into. Measured on x86-host (AMD EPYC Zen 4, 1 thread): EfficientNet-B0's SiLU/sigmoid
epilogues made 9348 `expf` call sites, its stride-2 expand conv with SiLU 4.30 ms; ConvNeXt's
GELU epilogues (496 `erff` call sites) made the 64->256 stage-1 MLP matmul 7.0 ms per call
against 1.36 ms for its 256->64 partner with the same MACs and no GELU.

TOPI's `fast_exp` (2^n scaling times a degree-5 polynomial, clamped to [-88.4, 88.4]) and
`fast_erf` (Eigen's rational approximation, clamped to [-4, 4]) are plain arithmetic, which the
schedules vectorize at the target's SIMD width like any other epilogue. Both are within a few
float32 ulps of libm (tests/test_fast_math.py checks against numpy/scipy on the ranges that
matter). The activations keep their names (sigmoid, gelu), so profiles and fused kernel names
read as before.
"""

from __future__ import annotations

import math


def _fast_softmax(bb, call):
    """Softmax with TOPI's fast_exp rather than TIR's exp: ViT-tiny's softmax ran 12 calls x 116k
    scalar expf (row_reduction.py's kernels, AMD EPYC, 1 thread)."""
    from tvm import topi
    return bb.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis)


def _fast_sigmoid(bb, call):
    """sigmoid(x) = 1 / (1 + fast_exp(-x)); fast_exp's clamp keeps 1 + e finite (exp(88.4) < FLT_MAX)."""
    from tvm import te, topi

    def sigmoid(x):
        e = topi.fast_exp(topi.negative(x))
        one = te.const(1.0, x.dtype)
        return te.compute(x.shape, lambda *i: one / (one + e(*i)), name="sigmoid")

    return bb.call_te(sigmoid, call.args[0], primfunc_name_hint="sigmoid")


def _fast_gelu(bb, call):
    """GELU (erf form, torch's default and ONNX Gelu's): x * (1/2 + erf(x / sqrt 2) / 2)."""
    from tvm import te, topi

    def gelu(x):
        erf = topi.fast_erf(topi.multiply(x, te.const(math.sqrt(0.5), x.dtype)))
        half = te.const(0.5, x.dtype)
        return te.compute(x.shape, lambda *i: x(*i) * (half + erf(*i) * half), name="gelu")

    return bb.call_te(gelu, call.args[0], primfunc_name_hint="gelu")


def _fast_erf(bb, call):
    """A bare Erf: GELU as older ONNX opsets export it (x * 0.5 * (1 + erf(x / sqrt 2)))."""
    from tvm import topi
    return bb.call_te(topi.fast_erf, call.args[0], primfunc_name_hint="erf")


def _float32_only(legalize):
    """fast_exp/fast_erf are float32 approximations (their constants, their clamps): other
    dtypes keep TVM's own legalization (the op's registered FLegalize)."""
    def legalize_if_float32(bb, call):
        if call.ty.dtype != "float32":
            return call.op.get_attr("FLegalize")(bb, call)
        return legalize(bb, call)
    return legalize_if_float32


# op name -> legalization: LegalizeOps' customize map.
FAST_MATH_LEGALIZE = {
    "relax.nn.softmax": _fast_softmax,
    "relax.sigmoid": _float32_only(_fast_sigmoid),
    "relax.nn.gelu": _float32_only(_fast_gelu),
    "relax.erf": _float32_only(_fast_erf),
}
