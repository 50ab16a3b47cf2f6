"""fp16: weights stored as float16, arithmetic in float32 (what TFLite's float16 quantization does on CPU).

Cortex-A72/A53 (RK3399, Pi 4) have no half-precision arithmetic (that is ARMv8.2 `+fullfp16`), so a
graph computing in fp16 would convert every value back and forth there. Storing only the weights
in fp16 halves the model file that boards download and keeps accuracy within fp16 rounding of the
weights; TVM folds the Cast nodes into float32 constants at compile time. On Jetson, TensorRT
takes the same file and builds an fp16 engine with `trtexec --fp16`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.errors import ModelError, first_line

# Biases and BN vectors are tiny; halving them saves nothing and costs accuracy.
MIN_ELEMENTS = 64
_FP16_MAX = float(np.finfo(np.float16).max)


@dataclass
class Fp16Result:
    path: Path
    size_bytes_before: int
    size_bytes_after: int
    converted: int  # initializers stored as float16
    clipped_values: int  # weights beyond the fp16 range (saturated, reported)

    def to_dict(self) -> dict:
        return {"method": "fp16-weights", "path": str(self.path), "size_bytes_before": self.size_bytes_before,
                "size_bytes_after": self.size_bytes_after, "converted_initializers": self.converted,
                "clipped_values": self.clipped_values, "compute": "float32"}


def fp16_weights_onnx(src: Path, dst: Path) -> Fp16Result:
    """Rewrite every large float32 initializer as float16 followed by a Cast back to float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ModelError(f"{src}: not a readable ONNX model ({first_line(exc)})") from None
    graph = model.graph
    kept, casts, converted, clipped = [], [], 0, 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < MIN_ELEMENTS:
            kept.append(init)
            continue
        w = numpy_helper.to_array(init)
        clipped += int(np.count_nonzero(np.abs(w) > _FP16_MAX))
        half = np.clip(w, -_FP16_MAX, _FP16_MAX).astype(np.float16)
        kept.append(numpy_helper.from_array(half, init.name + "_fp16"))
        # The Cast keeps the original name, so every consumer is untouched.
        casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_to_fp32"))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return Fp16Result(dst, src.stat().st_size, dst.stat().st_size, converted, clipped)
