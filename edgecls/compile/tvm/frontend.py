"""Model import: ONNX or a torch.export program -> a Relax IRModule with embedded weights."""

from __future__ import annotations

import numpy as np

from edgecls.compile.tvm.core import load_tvm
from edgecls.errors import ModelError, last_line


def _clip_as_relax_ops(onnx_frontend, relax):
    """An ONNX Clip converter that emits relax maximum/minimum ops.

    TVM's own converter lowers Clip (ReLU6) to pre-built TIR kernels via emit_te; ConvertLayout
    cannot see through those, so NHWC graphs get a transpose pair around every ReLU6 and the
    conv is no longer fused with its activation. Binary relax ops have layout inference.
    """
    tvm = load_tvm()

    def bound(expr, default):
        if expr is None:
            return default
        if isinstance(expr, tvm.ir.Constant):
            return float(np.asarray(expr.value.numpy()).reshape(-1)[0])
        return None  # a computed bound: fall back to TVM's converter

    class Clip(onnx_frontend.OnnxOpConverter):
        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):
            lo, hi = bound(inputs[1], -np.inf), bound(inputs[2], np.inf)
            if lo is None or hi is None:
                return onnx_frontend.Clip._impl_v13(bb, inputs, attr, params)
            x, dtype = inputs[0], inputs[0].ty.dtype
            if lo != -np.inf:
                x = bb.emit(relax.op.maximum(x, relax.const(lo, dtype)))
            if hi != np.inf:
                x = bb.emit(relax.op.minimum(x, relax.const(hi, dtype)))
            return x

        _impl_v11 = _impl_v13

        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):
            return onnx_frontend.Clip._impl_v1(bb, inputs, attr, params)

    return Clip


def import_onnx(onnx_model, input_name: str, shape: tuple[int, ...], dtype: str = "float32"):
    """ONNX -> Relax IRModule with weights embedded as constants (so FoldConstant sees them)."""
    tvm = load_tvm()
    from tvm import relax
    from tvm.relax.frontend.onnx import onnx_frontend

    original = onnx_frontend._get_convert_map
    clip = _clip_as_relax_ops(onnx_frontend, relax)

    def patched_map():
        table = dict(original())
        table["Clip"] = clip
        return table

    onnx_frontend._get_convert_map = patched_map
    try:
        return onnx_frontend.from_onnx(onnx_model, shape_dict={input_name: list(shape)},
                                       dtype_dict={input_name: dtype}, keep_params_in_input=False)
    except tvm.error.OpNotImplemented as exc:
        ops = str(exc).split("frontend ONNX:")[-1].strip().splitlines()[0]
        raise ModelError(f"unsupported operator(s) for TVM's ONNX importer: {ops}") from None
    except NotImplementedError as exc:
        raise ModelError(f"unsupported by TVM's ONNX importer: {exc}") from None
    except Exception as exc:
        raise ModelError(f"TVM could not import the ONNX model: {last_line(exc)}") from None
    finally:
        onnx_frontend._get_convert_map = original


def import_exported_program(exported_program):
    """torch.export program -> Relax IRModule (this route keeps clip as a relax op)."""
    load_tvm()
    from tvm.relax.frontend.torch import from_exported_program
    try:
        return from_exported_program(exported_program, keep_params_as_input=False)
    except Exception as exc:
        raise ModelError(f"TVM could not import the torch.export program: {last_line(exc)}") from None
