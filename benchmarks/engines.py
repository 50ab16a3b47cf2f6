"""Timed engines the benchmark scripts share: a kept LiteRT interpreter and an ONNX Runtime
session, each a callable x -> first output. Not a test."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgecls.artifact.reference import onnx_session  # noqa: E402


def litert_engine(path: Path, threads: int):
    """A kept interpreter (XNNPACK, `threads`); an int8 model's input is quantized once, outside
    the timed call, and its output dequantized."""
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    cache: dict = {}

    def run(x: np.ndarray) -> np.ndarray:
        key = id(x)
        if key not in cache:
            xi = x
            if np.issubdtype(inp["dtype"], np.integer):
                s, z = inp["quantization"]
                info = np.iinfo(inp["dtype"])
                xi = np.clip(np.round(x / s + z), info.min, info.max)
            cache.clear()
            cache[key] = np.ascontiguousarray(xi.astype(inp["dtype"]))
        interp.set_tensor(inp["index"], cache[key])
        interp.invoke()
        o = interp.get_tensor(outp["index"])
        if np.issubdtype(o.dtype, np.integer):
            s, z = outp["quantization"]
            o = (o.astype(np.float32) - z) * s
        return o

    return run


def ort_engine(path: Path, threads: int):
    sess = onnx_session(path, threads=threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]
