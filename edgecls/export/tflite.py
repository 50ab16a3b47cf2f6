"""TFLite (LiteRT) export: fp32, or full int8 (weights and activations) from calibration images.

Needs the optional extra `edgecls[tflite]` (litert-torch + ai-edge-litert); both are imported lazily
so the rest of edgecls works without them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecls.errors import EdgeclsError, UsageError, first_line
from edgecls.quiet import silenced

_MISSING = "TFLite export needs the optional extra: pip install 'edgecls[tflite]'"


@dataclass(frozen=True)
class TfliteResult:
    path: Path
    size_bytes: int
    quantized: bool


def _import_litert_torch():
    # The progress printer and torch-log silencing are read from the environment at call time.
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    try:
        import litert_torch
    except ImportError as e:
        raise EdgeclsError(_MISSING) from e
    return litert_torch


@contextlib.contextmanager
def _quiet():
    """Silence Python warnings/logs and the converter's C++ logging (written straight to fd 2).

    The captured C++ output is replayed if the block raises, so a conversion failure keeps its cause.
    """
    saved_env = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with tempfile.TemporaryFile() as cap:
        os.dup2(cap.fileno(), 2)
        failed = False
        try:
            with silenced(("torch", "torchao", "absl", "jax", "litert_torch")):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
            if saved_env is None:
                os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
            else:
                os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved_env
            if failed:
                cap.seek(0)
                tail = cap.read()[-4000:].decode(errors="replace")
                if tail.strip():
                    sys.stderr.write(tail)


def _quantize_int8(model: torch.nn.Module, example: torch.Tensor, calib: np.ndarray):
    """PT2E static int8: per-channel symmetric weights, per-tensor int8 activations."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import quant_config as qc
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model, (example,)).module()
    graph = quantize_pt2e.prepare_pt2e(graph, quantizer)
    # The exported graph is specialised to the example's batch of 1: calibrate image by image.
    with torch.no_grad():
        for i in range(len(calib)):
            graph(torch.from_numpy(np.ascontiguousarray(calib[i:i + 1], dtype=np.float32)))
    graph = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
    return graph, qc.QuantConfig(pt2e_quantizer=quantizer)


def export_tflite(model: torch.nn.Module, example: torch.Tensor, out_path: str | os.PathLike, *,
                  int8_calib: np.ndarray | None = None) -> TfliteResult:
    """Convert `model` (traced with `example`, shape (1, C, H, W)) to a .tflite file.

    Without `int8_calib` the model stays float32. With it (calibration images shaped like
    `example`, any count), weights and activations are int8, and so are the model's input and
    output tensors: `run_tflite` applies their scale/zero-point.
    """
    with _quiet():  # importing torchao/litert_torch prints kernel-load failures and pytree warnings
        litert_torch = _import_litert_torch()
    if example.ndim != 4 or example.shape[0] != 1:
        raise UsageError(f"TFLite export needs a (1, C, H, W) example, got {tuple(example.shape)}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        model = model.eval()
    except (NotImplementedError, RuntimeError):
        pass  # ExportedProgram.module() refuses eval(); it was exported in inference mode already
    example = example.detach().to(torch.float32)
    quantized = int8_calib is not None
    if quantized:
        calib = np.asarray(int8_calib, dtype=np.float32)
        if calib.ndim != 4 or calib.shape[1:] != tuple(example.shape[1:]) or len(calib) == 0:
            raise UsageError(f"int8 calibration images must be (N, {', '.join(map(str, example.shape[1:]))})"
                             f" with N >= 1, got {calib.shape}")
    try:
        with _quiet():
            if quantized:
                graph, qcfg = _quantize_int8(model, example, calib)
                edge = litert_torch.convert(graph, (example,), quant_config=qcfg)
            else:
                edge = litert_torch.convert(model, (example,))
            edge.export(str(out))
    except EdgeclsError:
        raise
    except Exception as e:  # converter errors are long multi-line MLIR dumps
        raise EdgeclsError(f"TFLite conversion failed: {first_line(e)}") from e
    return TfliteResult(out, out.stat().st_size, quantized)


def _interpreter(path: str | os.PathLike):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise EdgeclsError(_MISSING) from e
    with _quiet():  # "INFO: Created TensorFlow Lite XNNPACK delegate" goes to fd 2
        interp = Interpreter(model_path=str(path))
        interp.allocate_tensors()
    return interp


def run_tflite(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Run a .tflite classifier on x (N, ...) one image at a time; returns float32 outputs (N, ...).

    An int8 model's input is quantized and its output dequantized with the tensors' own parameters.
    """
    interp = _interpreter(path)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = outp["quantization"]
    in_dtype = inp["dtype"]
    x = np.asarray(x, dtype=np.float32)
    if tuple(x.shape[1:]) != tuple(inp["shape"][1:]):
        raise UsageError(f"input images are {x.shape[1:]}, the TFLite model expects {tuple(inp['shape'][1:])}")
    results = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        if np.issubdtype(in_dtype, np.integer):
            info = np.iinfo(in_dtype)
            xi = np.clip(np.round(xi / in_scale + in_zp), info.min, info.max)
        interp.set_tensor(inp["index"], xi.astype(in_dtype))
        interp.invoke()
        o = interp.get_tensor(outp["index"])
        if np.issubdtype(o.dtype, np.integer) and out_scale:
            o = (o.astype(np.float32) - out_zp) * out_scale
        results.append(np.asarray(o, dtype=np.float32))
    return np.concatenate(results)
