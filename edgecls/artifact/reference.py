"""Reference data stored in every artifact: one input and ONNX Runtime's output for it.

The runner's result on any machine (host, qemu, a board) is compared with this, so a
miscompiled or wrong-arch build is caught where it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reference_input(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(np.dtype(dtype))
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


def onnx_session(onnx_path: Path | bytes, threads: int = 0, optimize: bool = True):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    model = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)  # a file, or a serialized model
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def onnx_reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    # Graph optimisations off: ORT's fused int8 kernels (QDQ models) may saturate on CPUs
    # without VNNI and differ from the QDQ semantics by a quantisation step; the plain graph
    # is the exact reference, for fp32 and int8 alike.
    sess = onnx_session(onnx_path, optimize=False)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def onnx_predictions(onnx_path: Path | bytes, x: np.ndarray) -> np.ndarray:
    """Top-1 class per image in ONNX Runtime, one image at a time (models take a batch of one)."""
    sess = onnx_session(onnx_path, optimize=False)
    name = sess.get_inputs()[0].name
    return np.array([int(sess.run(None, {name: x[i:i + 1]})[0].argmax()) for i in range(len(x))], np.int64)


def onnx_top1(onnx_path: Path | bytes, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 of the model in ONNX Runtime over labelled images."""
    return float((onnx_predictions(onnx_path, x) == y).mean())
