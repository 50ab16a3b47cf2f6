"""What the QDQ rewrites share: the integer range of each quantized dtype, and a constant's
per-tensor value."""

from __future__ import annotations

from edgecls.compile.tvm.core import load_tvm

QRANGE = {"uint8": (0, 255), "int8": (-128, 127)}


def scalar_const(expr) -> float | None:
    """The value of a one-element constant (a per-tensor scale or zero point), else None."""
    tvm = load_tvm()
    if not isinstance(expr, tvm.ir.GenericConst):
        return None
    a = expr.value.numpy()
    return float(a.reshape(-1)[0]) if a.size == 1 else None
