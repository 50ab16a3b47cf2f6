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


def onnx_session(onnx_path: Path, threads: int = 0):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def onnx_reference(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    sess = onnx_session(onnx_path)
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
