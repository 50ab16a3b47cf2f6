"""The optimize job: prune -> fine-tune (distillation) -> quantize, accuracy checked after each.

Order matters (users report prune-then-quantize collapsing accuracy without the fine-tune in
between), so the stages always run in this order and each one is measured on the same held-out
validation split. The result is one ONNX file (QDQ int8 when quantized) that compile takes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgecls.artifact.gate import require_decidable
from edgecls.data import Dataset, Preprocess, load_image_folder, split
from edgecls.errors import UsageError, first_line
from edgecls.export.onnx import export_onnx
from edgecls.input_spec import ModelInput, module_input
from edgecls.load import load_torch_module, parse_shape
from edgecls.preprocessing import InputChoice, check_preprocessing, choose_input

QUANTIZE_MODES = ("none", "ptq", "qat", "fp16")
TFLITE_MODES = ("auto", "yes", "no")


@dataclass
class OptimizeRequest:
    model: Path  # a pickled nn.Module (torch.save(model, path))
    data: Path | None  # ImageFolder, split into fine-tune / calibration / validation
    preprocess: Preprocess | dict | None = None  # a dict overrides the defaults; None: a file saved with the model, else defaults
    train: Path | None = None  # or three separate ImageFolders
    calib: Path | None = None
    val: Path | None = None
    prune: float = 0.0
    importance: str = "magnitude"
    round_to: int = 8
    quantize: str = "none"
    epochs: int = 4
    calib_method: str = "minmax"
    seed: int = 0
    threads: int = 1
    tflite: str = "auto"  # also export model.tflite: auto = when edgecls[tflite] is installed
    input_shape: tuple[int, ...] | None = None  # None: channels from the model, size from the data
    max_accuracy_drop: float | None = None  # the compile gate: the split must be large enough to decide it
    expected_accuracy: float | None = None  # top-1 (%) the user measured: far below it stops before fine-tuning
    accuracy_check: bool = True  # stop when the original model is near chance on the data (preprocessing)

    @classmethod
    def from_options(cls, model: Path, data: Path | None, train: Path | None, calib: Path | None,
                     val: Path | None, *, prune: float, importance: str, quantize: str, epochs: int,
                     calib_method: str, seed: int, preprocess: Preprocess | dict | None,
                     input_shape: str | None, required: bool = False, tflite: str = "auto",
                     expected_accuracy: float | None = None, accuracy_check: bool = True):
        """The request `compile`/`optimize` options describe: None when no optimization was asked
        for (unless required); needs --data, or all three of --train/--calib/--val. `preprocess`
        is a Preprocess, or overrides (a dict) of the defaults for the input shape, which is
        `input_shape` (N,C,H,W text) or else read off the model and the data."""
        if not required and not prune and quantize == "none":
            return None
        if data is None and not (train and calib and val):
            raise UsageError("--prune/--quantize need --data DIR (an ImageFolder of labelled images), "
                             "or all three of --train, --calib and --val")
        return cls(model=model, data=data, train=train, calib=calib, val=val, preprocess=preprocess, prune=prune,
                   importance=importance, quantize=quantize, epochs=epochs, calib_method=calib_method,
                   seed=seed, tflite=tflite, input_shape=parse_shape(input_shape),
                   expected_accuracy=expected_accuracy, accuracy_check=accuracy_check)


@dataclass
class OptimizedModel:
    onnx: Path | None  # None for Keras input (TFLite only)
    variant: str
    stages: list[dict] = field(default_factory=list)
    val: Dataset | None = None
    tflite: Path | None = None  # the same variant for LiteRT (int8 when quantized), when exported
    original_onnx: Path | None = None  # the unoptimized model, for comparisons on other image sets
    input: InputChoice | None = None  # the input shape and preprocessing used, and where they came from


def _onnx_size_and_accuracy(path: Path, val: Dataset) -> tuple[int, float]:
    from edgecls.artifact.reference import onnx_top1
    return path.stat().st_size, onnx_top1(path, val.x, val.y)


def _export(model, example, path: Path) -> Path:
    export_onnx(model.eval(), example, path)
    return path


def _stage(name: str, model, example, val: Dataset, onnx_path: Path | None = None, **extra) -> dict:
    from edgecls.optimize.finetune import evaluate
    from edgecls.optimize.prune import count_macs_params
    row = {"stage": name, "n": len(val)}
    if model is not None:
        macs, params = count_macs_params(model, example)
        row.update(evaluate(model, val), macs=int(macs), params=int(params))
    if onnx_path is not None:
        size, top1 = _onnx_size_and_accuracy(onnx_path, val)
        row.update(size_bytes=size, onnx_top1=top1)
        row.setdefault("top1", top1)
    row.update(extra)
    return row


def _load_splits(req: OptimizeRequest, preprocess: Preprocess, log):
    """(all, fine-tune, calibration, validation) datasets from --data or --train/--calib/--val."""
    if req.train and req.calib and req.val:
        tune, calib, val = (load_image_folder(p, preprocess) for p in (req.train, req.calib, req.val))
        data = val
    elif req.data is not None:
        data = load_image_folder(req.data, preprocess)
        tune, calib, val = split(data, seed=req.seed)
    else:
        raise UsageError("give --data DIR, or all three of --train, --calib and --val")
    skipped = sum(d.skipped for d in {id(d): d for d in (data, tune, calib, val)}.values())
    if skipped:
        log(f"data: skipped {skipped} unreadable image(s)")
    if len(val) == 0 or len(tune) == 0:
        raise UsageError(f"{req.data or req.val}: {len(data)} images are too few to split into fine-tune / calibration / validation")
    return data, tune, calib, val


def optimize_model(req: OptimizeRequest, work_dir: Path, log=lambda m: None) -> OptimizedModel:
    import torch

    from edgecls.optimize.keras_qat import is_keras_model

    _check_request(req)
    keras = is_keras_model(req.model)
    model = None if keras else load_torch_module(req.model)
    choice = choose_input(ModelInput() if keras else module_input(model), Path(req.model), req.input_shape,
                          req.preprocess, req.data or req.train)
    log(f"input {list(choice.shape)} ({choice.shape_from}); preprocessing {choice.describe()}")
    data, tune, calib, val = _load_splits(req, choice.preprocess, log)
    require_decidable(len(val), req.max_accuracy_drop)  # before minutes of fine-tuning
    if keras:
        return replace(_optimize_keras(req, tune, calib, val, work_dir, log), input=choice)
    example = torch.from_numpy(val.x[:1])
    _check_model_fits_data(model, example, req, data, choice)
    log(f"data: {len(tune)} fine-tune / {len(calib)} calibration / {len(val)} validation images, "
        f"{len(data.classes)} classes")

    if req.accuracy_check:  # before any export or fine-tuning: a preprocessing mismatch is never optimized
        check_preprocessing(_predict(model, val.x), val.x, val.y, len(data.classes), choice,
                            str(req.data or req.val), req.expected_accuracy, lambda alt: _predict(model, alt))
    work_dir = Path(work_dir)
    stages = [_stage("original", model, example, val, _export(model, example, work_dir / "original.onnx"))]
    log(f"original: top-1 {stages[0]['top1']:.4f} on {len(val)} validation images, {stages[0]['macs']:,} MACs")
    variant, current = [], model
    if req.prune > 0:
        current = _prune_and_finetune(req, model, example, tune, val, work_dir, stages, log)
        variant.append(f"pruned{int(round(req.prune * 100))}")
    fp32_onnx = work_dir / ("pruned.onnx" if req.prune > 0 else "original.onnx")
    final = fp32_onnx
    if req.quantize != "none":
        final = _quantized(req, current, fp32_onnx, example, tune, calib, val, work_dir, stages, log)
        variant.append("fp16" if req.quantize == "fp16" else "int8")
        log(f"quantized ({req.quantize}): {stages[-1]['size_bytes']:,} bytes, top-1 {stages[-1]['top1']:.4f}")
    tflite = _export_tflite(req, current, example, calib, val, work_dir, stages, log)
    return OptimizedModel(onnx=final, variant="-".join(variant) or "fp32", stages=stages, val=val, tflite=tflite,
                          original_onnx=work_dir / "original.onnx", input=choice)


def _predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    from edgecls.optimize.finetune import _logits
    with torch.no_grad():
        return _logits(model, x).argmax(1).numpy()


def _check_request(req: OptimizeRequest) -> None:
    from edgecls.optimize.keras_qat import KERAS_PRUNE_MESSAGE, is_keras_model
    if req.quantize not in QUANTIZE_MODES:
        raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE_MODES)}, got '{req.quantize}'")
    if req.tflite not in TFLITE_MODES:
        raise UsageError(f"tflite must be one of {', '.join(TFLITE_MODES)}, got '{req.tflite}'")
    if Path(req.model).suffix.lower() in (".onnx", ".pt2"):
        raise UsageError(f"--prune/--quantize need the trained torch module, not {Path(req.model).suffix}: "
                         f"save it with torch.save(model, 'model.pth')")
    if not 0 <= req.prune < 1:
        raise UsageError(f"--prune {req.prune} must be a number in [0, 1) (fraction of channels removed per layer)")
    if is_keras_model(req.model) and req.prune > 0:
        raise UsageError(KERAS_PRUNE_MESSAGE)


def _check_model_fits_data(model, example, req: OptimizeRequest, data, choice: InputChoice) -> None:
    """The model takes the data's images and has one output per class folder, or a UsageError
    naming the option to pass."""
    import torch
    try:
        with torch.no_grad():
            out = model(example)
    except Exception as exc:
        fit = ",".join(map(str, (*choice.shape[:-2], "H", "W")))
        raise UsageError(f"the model does not accept the images of {req.data or req.val} (shape {list(example.shape)}; "
                         f"{choice.shape_from}): {first_line(exc)}; pass --input-shape {fit} with the image size "
                         f"it was trained on") from None
    if out.shape[-1] != len(data.classes):
        raise UsageError(f"the model outputs {out.shape[-1]} classes but {req.data or req.val} has {len(data.classes)} class folders")


def _prune_and_finetune(req: OptimizeRequest, model, example, tune, val, work_dir: Path, stages: list, log):
    """Structured pruning, then distillation fine-tuning from the original; both stages recorded.
    Returns the fine-tuned module (its ONNX in work_dir/pruned.onnx)."""
    import torch

    from edgecls.optimize.finetune import finetune
    from edgecls.optimize.prune import prune_model
    pr = prune_model(model, example, req.prune, importance=req.importance, round_to=req.round_to,
                     calib_batches=[(torch.from_numpy(tune.x[:64]), torch.from_numpy(tune.y[:64]))])
    stages.append(_stage("pruned", pr.model, example, val, ratio=req.prune, importance=req.importance))
    log(f"pruned {req.prune}: MACs x{pr.macs_ratio:.3f}, params x{pr.params_ratio:.3f}, "
        f"top-1 {stages[-1]['top1']:.4f} before fine-tuning")
    ft = finetune(pr.model, model, tune, val, epochs=req.epochs, seed=req.seed, threads=req.threads,
                  progress=lambda e: log(f"fine-tune epoch {e['epoch']}/{e['epochs']}: loss "
                                         f"{e['loss']:.4f}, val top-1 {e['val_top1']:.4f}"))
    onnx_ft = _export(ft.model, example, work_dir / "pruned.onnx")
    stages.append(_stage("fine-tuned", ft.model, example, val, onnx_ft, epochs=req.epochs, history=ft.history))
    return ft.model


def _quantized(req: OptimizeRequest, current, fp32_onnx: Path, example, tune, calib, val, work_dir: Path,
               stages: list, log) -> Path:
    """PTQ (ONNX Runtime), QAT (torchao PT2E) or fp16 weights; the stage recorded, its file returned."""
    from edgecls.optimize.fp16 import fp16_weights_onnx
    from edgecls.optimize.qat import qat_pt2e
    from edgecls.optimize.quantize import ptq_onnx
    size = {"macs": stages[-1]["macs"], "params": stages[-1]["params"]}
    if req.quantize == "ptq":
        q = ptq_onnx(fp32_onnx, work_dir / "int8.onnx", calib.x, method=req.calib_method)
        stages.append(_stage("quantized", None, example, val, q.path, method=f"ptq-{req.calib_method}", **size))
    elif req.quantize == "qat":
        q = qat_pt2e(current, tune, val, epochs=max(1, req.epochs // 2), onnx_out=work_dir / "int8.onnx",
                     seed=req.seed, threads=req.threads, log=log)
        stages.append(_stage("quantized", None, example, val, q.path, method="qat", **size))
    else:  # fp16
        q = fp16_weights_onnx(fp32_onnx, work_dir / "fp16.onnx")
        stages.append(_stage("quantized", None, example, val, q.path,
                             **{k: v for k, v in q.to_dict().items() if k != "path"}, **size))
    return q.path


def _optimize_keras(req: OptimizeRequest, tune, calib, val, work_dir: Path, log) -> OptimizedModel:
    """Keras input: TF-MOT QAT (or PTQ) -> TFLite int8; no ONNX, so it stops before TVM."""
    from edgecls.optimize.keras_qat import optimize_keras
    kr = optimize_keras(Path(req.model), tune, calib, val, Path(work_dir), quantize=req.quantize,
                        epochs=req.epochs, seed=req.seed, log=log)
    if kr.layout == "NHWC":  # the carried batch must match the .tflite's input
        val = replace(val, x=np.ascontiguousarray(val.x.transpose(0, 2, 3, 1)))
    return OptimizedModel(onnx=None, variant=kr.variant, stages=kr.stages, val=val, tflite=kr.tflite)


def tflite_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert"))


def _export_tflite(req: OptimizeRequest, model, example, calib: Dataset, val: Dataset, work_dir: Path,
                   stages: list[dict], log) -> Path | None:
    """The same variant as a .tflite for LiteRT, so boards can compare runtimes on one artifact.

    int8 variants are full-int8 TFLite from the (pruned, fine-tuned) float model and the same
    calibration images; fp16 and fp32 variants give an fp32 .tflite (LiteRT's CPU kernels compute
    fp16 weights in fp32 anyway). Its top-1 is measured and listed as its own row.
    """
    if req.tflite == "no" or (req.tflite == "auto" and not tflite_available()):
        return None
    from edgecls.export.tflite import export_tflite, run_tflite
    int8 = req.quantize in ("ptq", "qat")
    log(f"tflite: exporting {'full-int8' if int8 else 'fp32'} model.tflite with litert-torch")
    res = export_tflite(model, example, work_dir / "model.tflite", int8_calib=calib.x[:128] if int8 else None)
    top1 = float((run_tflite(res.path, val.x).argmax(-1) == val.y).mean())
    stages.append({"stage": "tflite", "n": len(val), "runtime": "litert", "how": f"ai-edge-litert ({'int8' if int8 else 'fp32'})",
                   "top1": top1, "size_bytes": res.size_bytes,
                   "dtype": "int8" if int8 else "float32", "macs": stages[-1].get("macs"),
                   "params": stages[-1].get("params")})
    log(f"tflite: {res.size_bytes:,} bytes, top-1 {top1:.4f} in ai-edge-litert")
    return res.path


def write_optimized(result: OptimizedModel, out_dir: Path, force: bool = False) -> Path:
    """`edgecls optimize -o DIR`: model.onnx + optimize.json (stages), atomically."""
    from edgecls.artifact.package import staging_dir
    import shutil
    with staging_dir(Path(out_dir), force) as tmp:
        if result.onnx is not None:
            shutil.copy2(result.onnx, tmp / "model.onnx")
        if result.tflite is not None:
            shutil.copy2(result.tflite, tmp / "model.tflite")
        np.save(tmp / "val_x.npy", result.val.x[:64])
        np.save(tmp / "val_y.npy", result.val.y[:64])
        inputs = {"preprocess": result.input.preprocess.to_dict(), **result.input.record()} if result.input else {}
        (tmp / "optimize.json").write_text(json.dumps(
            {"variant": result.variant, "stages": result.stages, **inputs}, indent=2, default=str) + "\n")
    return Path(out_dir)


def temp_work_dir():
    return tempfile.TemporaryDirectory(prefix="edgecls-optimize-", dir=os.environ.get("TMPDIR"))
