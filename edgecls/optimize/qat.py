"""Quantization-aware training with torchao's PT2E flow, exported as QDQ ONNX (int8 weights).

The QDQ file is the same kind ptq_onnx (quantize.py) writes, so `compile` treats both alike.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError, ModelError, UsageError, first_line
from edgecls.export.onnx import export_onnx
from edgecls.optimize.quantize import QuantizeResult, weight_dtypes
from edgecls.quiet import silenced


def _torchao_pt2e():
    """torchao's PT2E entry points (torch.ao.quantization.quantize_pt2e is gone in torch 2.13)."""
    # Importing torchao on a CPU-only box logs "Failed to load ..._C_cutlass_90a.abi3.so" (CUDA
    # kernels) and torch's pytree warns about torchao's KernelPreference enum: noise, not errors.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    try:
        with silenced(("torch.utils._pytree",)):
            from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer, get_default_x86_inductor_quantization_config)
            from torchao.quantization.pt2e.utils import _fuse_conv_bn_
    except ImportError as exc:
        raise EdgeclsError(f"QAT is not available: torchao's PT2E quantization cannot be imported ({exc}); "
                           f"install the torchao version pinned in pyproject.toml") from None
    return {"prepare_qat_pt2e": prepare_qat_pt2e, "convert_pt2e": convert_pt2e,
            "to_eval": move_exported_model_to_eval, "to_train": move_exported_model_to_train,
            "quantizer": X86InductorQuantizer, "config": get_default_x86_inductor_quantization_config,
            "fuse_conv_bn": _fuse_conv_bn_}


@contextlib.contextmanager
def _quiet_torch():
    # torch.onnx prints its progress and torch/torchao emit Future/Deprecation warnings per op.
    with silenced(("torch.onnx", "torch._dynamo", "torch.export", "torchao"), stdout=True):
        yield


def _xy(data, what: str):
    x, y = getattr(data, "x", None), getattr(data, "y", None)
    if x is None and isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray) or len(x) != len(y) or len(x) == 0:
        raise UsageError(f"{what} data must be an edgecls Dataset or an (x, y) pair of equal-length arrays")
    return np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64)


def _accuracy(fn, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    import torch
    with torch.no_grad():
        pred = np.concatenate([fn(torch.from_numpy(x[i:i + batch])).argmax(1).numpy()
                               for i in range(0, len(x), batch)])
    return float((pred == y).mean())


def _fake_quant_modules(gm):
    return [m for m in gm.modules() if hasattr(m, "disable_observer") and hasattr(m, "enable_observer")]


def qat_pt2e(model, train, val, epochs: int = 2, onnx_out: str | os.PathLike = "model.int8.onnx", *,
             lr: float = 1e-4, batch_size: int = 32, seed: int = 0, threads: int = 1,
             reduce_range: bool = True, fold_bn: bool = True, log=lambda msg: None) -> QuantizeResult:
    """Quantization-aware fine-tuning with torchao's PT2E flow, exported as QDQ ONNX (int8 weights).

    model: a trained float `torch.nn.Module` (NCHW image classifier); it is not modified.
    train / val: `edgecls.data.Dataset` (or (x, y) arrays), preprocessed like inference input;
    val only measures accuracy (observers are frozen first, so it never sets a range).

    torch.export (dynamic batch) -> torchao X86InductorQuantizer (uint8 activations per tensor,
    int8 symmetric per-channel weights; `reduce_range` keeps weights in [-64, 63] as in
    `ptq_onnx`) -> prepare_qat_pt2e -> `epochs` of AdamW with cosine decay under fake quant ->
    convert_pt2e (weights folded to int8 constants) -> torch.onnx.export (dynamo) -> QDQ ONNX.

    fold_bn (default): BatchNorm is folded into the convs before QAT, so BN statistics stay
    frozen during fine-tuning (what QAT recipes do for the last epochs anyway). Without it
    torchao simulates conv+BN folding during training, and convert_pt2e then re-exports 96
    rewrite patterns to fold it, ~25-35 s even for a tiny net.
    """
    import torch

    t_start = time.perf_counter()
    api = _torchao_pt2e()
    tx, ty, vx, vy = _checked_inputs(model, train, val, epochs, batch_size, threads, lr)
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    float_model = copy.deepcopy(model).eval()
    timings: dict[str, float] = {}

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 3)
        log(f"qat: {name} {timings[name]:.1f}s")

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]), _quiet_torch():
            torch.manual_seed(seed)
            fp32_acc = _accuracy(float_model, vx, vy)
            t0 = time.perf_counter()
            train_model = float_model if fold_bn else copy.deepcopy(model).train()
            prepared = _prepared(api, train_model, torch.from_numpy(tx[:2]), max(1024, batch_size, len(vx)),
                                 fold_bn, reduce_range)
            lap("prepare_s", t0)
            t0 = time.perf_counter()
            _train(api, prepared, tx, ty, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
            lap("train_s", t0)
            api["to_eval"](prepared)
            for fq in _fake_quant_modules(prepared):
                fq.disable_observer()  # ranges are final: validation images must not move them
            fake_quant_acc = _accuracy(prepared, vx, vy)
            t0 = time.perf_counter()
            converted = api["convert_pt2e"](prepared)
            lap("convert_s", t0)
            int8_acc = _accuracy(converted, vx, vy)
            t0 = time.perf_counter()
            size_before = _export_qdq(float_model, converted, torch.from_numpy(tx[:1]), onnx_out)
            lap("export_s", t0)
    finally:
        torch.set_num_threads(prev_threads)

    dtypes = weight_dtypes(onnx_out)
    if not dtypes or any(v != "INT8" for v in dtypes.values()):
        raise EdgeclsError(f"QAT export did not store int8 weights: {dtypes}")
    return QuantizeResult(path=onnx_out, weight_dtypes=dtypes, size_bytes_before=size_before,
                          size_bytes_after=onnx_out.stat().st_size, method="qat", activation_type="uint8",
                          weight_type="int8", per_channel=True, calibration_images=int(len(tx)),
                          seconds=time.perf_counter() - t_start,
                          extra={"reduce_range": reduce_range, "fold_bn": fold_bn, "epochs": epochs,
                                 "fp32_accuracy": fp32_acc, "fake_quant_accuracy": fake_quant_acc,
                                 "int8_accuracy_torch": int8_acc, "timings": timings})


def _checked_inputs(model, train, val, epochs: int, batch_size: int, threads: int, lr: float):
    """(train x, train y, val x, val y) as contiguous arrays, or a one-line UsageError."""
    import torch
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"QAT needs a float torch.nn.Module, got {type(model).__name__}")
    if epochs < 1 or batch_size < 1 or threads < 1 or not lr > 0:
        raise UsageError(f"QAT needs epochs, batch_size, threads >= 1 and lr > 0 "
                         f"(got {epochs}, {batch_size}, {threads}, {lr})")
    tx, ty = _xy(train, "training")
    vx, vy = _xy(val, "validation")
    if tx.shape[1:] != vx.shape[1:]:
        raise UsageError(f"training images {list(tx.shape[1:])} and validation images "
                         f"{list(vx.shape[1:])} differ in shape")
    return tx, ty, vx, vy


def _prepared(api: dict, model, example, max_batch: int, fold_bn: bool, reduce_range: bool):
    """torch.export with a dynamic batch (BN folded first when fold_bn), then prepare_qat_pt2e."""
    import torch
    batch_dim = torch.export.Dim("batch", min=1, max=max_batch)
    try:
        gm = torch.export.export(model, (example,), dynamic_shapes=({0: batch_dim},)).module()
    except Exception as exc:
        raise ModelError(f"torch.export cannot capture the model for QAT: {first_line(exc)}") from None
    if fold_bn:
        api["fuse_conv_bn"](gm)
    config = api["config"](is_qat=True)
    if reduce_range:
        config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63))
    return api["prepare_qat_pt2e"](gm, api["quantizer"]().set_global(config))


def _train(api: dict, prepared, tx: np.ndarray, ty: np.ndarray, *, epochs: int, batch_size: int, lr: float,
           seed: int) -> None:
    """`epochs` of AdamW with cosine decay under fake quant, batches in a seeded order."""
    import torch
    api["to_train"](prepared)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(tx), torch.from_numpy(ty)
    steps = epochs * ((len(tx) + batch_size - 1) // batch_size)
    opt = torch.optim.AdamW(prepared.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        perm = torch.randperm(len(tx), generator=gen)
        for i in range(0, len(tx), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(prepared(xt[idx]), yt[idx]).backward()
            opt.step()
            sched.step()


def _export_qdq(float_model, converted, x1, onnx_out: Path) -> int:
    """Export the converted model as QDQ ONNX to onnx_out (atomically); returns the fp32 file's size."""
    with tempfile.TemporaryDirectory(prefix=".edgecls-qat-", dir=onnx_out.parent) as tmp:
        fp32_onnx, staged = Path(tmp) / "fp32.onnx", Path(tmp) / "qat.onnx"
        try:
            export_onnx(float_model, x1, fp32_onnx)
            export_onnx(converted, x1, staged)
        except Exception as exc:
            raise EdgeclsError(f"QAT is not available for this model: ONNX export of the converted "
                               f"model failed: {first_line(exc)}") from None
        size_before = fp32_onnx.stat().st_size
        os.replace(staged, onnx_out)
    return size_before
