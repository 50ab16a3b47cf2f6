"""int8 quantization: post-training (ONNX Runtime, QDQ) and quantization-aware training (PT2E).

Both produce a QDQ ONNX file (QuantizeLinear/DequantizeLinear around float ops) whose weight
initializers are stored as int8: 4x smaller than fp32, and an input TVM's ONNX importer reads
like any other model (`edgecls compile model.int8.onnx --target ...`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.errors import EdgeclsError, ModelError, UsageError, first_line, last_line
from edgecls.export.onnx import export_onnx
from edgecls.quiet import ROOT_LOGGER, silenced

# Fewer images than this give ranges that depend on which few images were picked.
MIN_CALIBRATION_IMAGES = 16
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Ops whose input 1 is a weight (what `weight_dtypes` reports on).
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class QuantizeResult:
    path: Path
    weight_dtypes: dict[str, str]  # weight initializer of each Conv/Gemm/MatMul -> ONNX dtype name
    size_bytes_before: int
    size_bytes_after: int
    method: str  # "minmax" | "entropy" | "percentile" | "qat"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    calibration_images: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.size_bytes_after / self.size_bytes_before

    def to_dict(self) -> dict:
        return {"path": str(self.path), "method": self.method, "weight_dtypes": dict(self.weight_dtypes),
                "size_bytes_before": self.size_bytes_before, "size_bytes_after": self.size_bytes_after,
                "ratio": round(self.ratio, 4), "activation_type": self.activation_type,
                "weight_type": self.weight_type, "per_channel": self.per_channel,
                "calibration_images": self.calibration_images, "seconds": round(self.seconds, 3),
                **self.extra}


# --------------------------------------------------------------------------- inspection


def weight_dtypes(onnx_path: str | os.PathLike) -> dict[str, str]:
    """The stored dtype of every Conv/Gemm/MatMul weight, looking through DequantizeLinear.

    {"features.0.weight_quantized": "INT8", ...}; a float weight left unquantized shows as "FLOAT".
    """
    import onnx

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    out: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        # Weight -> [Transpose/Reshape ...] -> DequantizeLinear -> op: follow producers back.
        for _ in range(4):
            prod = producers.get(name)
            if prod is None or prod.op_type == "Constant":
                break
            if prod.op_type == "DequantizeLinear" or prod.op_type in ("Transpose", "Reshape", "Identity"):
                name = prod.input[0]
            else:
                break
        if name in inits:
            out[name] = onnx.TensorProto.DataType.Name(inits[name].data_type)
        elif name in consts:
            attr = next((a for a in consts[name].attribute if a.name == "value"), None)
            out[name] = onnx.TensorProto.DataType.Name(attr.t.data_type) if attr is not None else "UNKNOWN"
        else:
            out[name] = "COMPUTED"  # an activation x activation MatMul: no weight to store
    return out


def _input_spec(onnx_path: Path) -> tuple[str, list]:
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model {onnx_path}: {first_line(exc)}") from None
    init_names = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise ModelError(f"{onnx_path} has {len(inputs)} inputs; quantization supports single-input classifiers")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    return inputs[0].name, dims


# --------------------------------------------------------------------------- PTQ (ONNX Runtime)


def _check_calibration(calib, dims: list, min_images: int) -> np.ndarray:
    if not isinstance(calib, np.ndarray):
        raise UsageError(f"calibration data must be a numpy array, got {type(calib).__name__}")
    if calib.ndim != len(dims) or calib.ndim < 2:
        raise UsageError(f"calibration data has shape {list(calib.shape)}; the model input is {dims} "
                         f"(pass a batch of preprocessed images, N first)")
    for got, want in zip(calib.shape[1:], dims[1:]):
        if want not in (None, 0) and got != want:
            raise UsageError(f"calibration images have shape {list(calib.shape[1:])}, "
                             f"the model expects {dims[1:]}")
    n = int(calib.shape[0])
    need = max(MIN_CALIBRATION_IMAGES, int(min_images))
    if n < need:
        raise UsageError(f"too few calibration images: {n} given, at least {need} needed")
    if not np.issubdtype(calib.dtype, np.floating):
        raise UsageError(f"calibration data must be preprocessed float images, got dtype {calib.dtype}")
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if not np.isfinite(calib).all():
        raise UsageError("calibration data contains NaN or infinite values")
    return calib


def _make_reader(name: str, calib: np.ndarray, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            x = calib[self.i:self.i + batch]
            self.i += batch
            return {name: x}

        def rewind(self):
            self.i = 0

    return Reader()


@contextlib.contextmanager
def _quiet_ort():
    # quantize_static logs "Please consider to run pre-processing" etc. through the root logger
    # and the calibrators warn per tensor; none of it is actionable for a user.
    # The histogram calibrators print() their progress to stdout.
    with silenced((ROOT_LOGGER,), stdout=True):
        yield


def ptq_onnx(onnx_in: str | os.PathLike, onnx_out: str | os.PathLike, calib: np.ndarray,
             method: str = "minmax", per_channel: bool = True, *, activation_type: str = "uint8",
             reduce_range: bool = True, min_images: int = MIN_CALIBRATION_IMAGES,
             percentile: float = 99.999, preprocess: bool = True) -> QuantizeResult:
    """Static int8 post-training quantization with ONNX Runtime, QDQ format.

    calib: (N, C, H, W) float32 images preprocessed exactly like inference input (a calibration
    split, not the validation images). Weights are int8, symmetric, per output channel by
    default; activations uint8 (asymmetric, ORT's recommendation for x86 CPUs: U8S8) or "int8"
    (S8S8, ORT's recommendation for ARM cores).

    reduce_range (default on) keeps weights in 7 bits ([-64, 63], still stored as int8), ORT's
    advice for x86 CPUs without VNNI: there its U8S8 kernels (VPMADDUBSW) saturate int16 sums.
    Measured on the digits demo on an AVX2 EPYC without VNNI, full-range weights: ORT top-1
    97.4% (fp32 99.6%), the same file with ORT's graph optimisations off and compiled with TVM:
    99.6%, so `compile`'s check against ORT fails; with reduce_range ORT, TVM and fp32 all give
    99.6% and agree on every image. TVM itself computes without saturation either way.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t0 = time.perf_counter()
    onnx_in, onnx_out = Path(onnx_in), Path(onnx_out)
    if method not in CALIBRATION_METHODS:
        raise UsageError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if activation_type not in ("uint8", "int8"):
        raise UsageError(f"activation type must be uint8 or int8, got {activation_type!r}")
    if not onnx_in.is_file():
        raise ModelError(f"model file {onnx_in} does not exist")
    if onnx_out.resolve() == onnx_in.resolve():
        raise UsageError(f"quantized output {onnx_out} would overwrite its input")
    name, dims = _input_spec(onnx_in)
    calib = _check_calibration(calib, dims, min_images)
    # A static batch dimension (the exporters' default, 1) means one image per calibration run.
    batch = 32 if dims[0] in (None, 0) else int(dims[0])
    if len(calib) % batch:
        calib = calib[:len(calib) - len(calib) % batch]
        if len(calib) < max(MIN_CALIBRATION_IMAGES, int(min_images)):
            raise UsageError(f"too few calibration images: the model's fixed batch of {batch} leaves "
                             f"{len(calib)} usable, at least {max(MIN_CALIBRATION_IMAGES, int(min_images))} needed")

    calibrate_method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile}[method]
    extra = {"WeightSymmetric": True, "ActivationSymmetric": activation_type == "int8"}
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgecls-quant-", dir=onnx_out.parent) as tmp:
        src = onnx_in
        with _quiet_ort():
            if preprocess:
                # Symbolic shape inference + ORT's graph optimisations (Conv+BN folding, constant
                # folding), what ORT's quantizer expects to see first.
                from onnxruntime.quantization.shape_inference import quant_pre_process
                src = Path(tmp) / "pre.onnx"
                try:
                    quant_pre_process(str(onnx_in), str(src), skip_symbolic_shape=False)
                except Exception:
                    # Symbolic shape inference rejects some graphs; ONNX shape inference suffices.
                    quant_pre_process(str(onnx_in), str(src), skip_symbolic_shape=True)
            staged = Path(tmp) / "quant.onnx"
            try:
                quantize_static(
                    str(src), str(staged), _make_reader(name, calib, batch),
                    quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=calibrate_method, extra_options=extra)
            except EdgeclsError:
                raise
            except Exception as exc:
                raise ModelError(f"ONNX Runtime could not quantize {onnx_in.name}: {last_line(exc)}") from None
        os.replace(staged, onnx_out)
    dtypes = weight_dtypes(onnx_out)
    return QuantizeResult(path=onnx_out, weight_dtypes=dtypes, size_bytes_before=onnx_in.stat().st_size,
                          size_bytes_after=onnx_out.stat().st_size, method=method,
                          activation_type=activation_type, weight_type="int8", per_channel=per_channel,
                          calibration_images=int(len(calib)), seconds=time.perf_counter() - t0,
                          extra={"reduce_range": reduce_range, "preprocessed": preprocess})


# --------------------------------------------------------------------------- QAT (torchao PT2E)


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
    onnx_out = Path(onnx_out)
    onnx_out.parent.mkdir(parents=True, exist_ok=True)
    float_model = copy.deepcopy(model).eval()
    example = torch.from_numpy(tx[:2])
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
            batch_dim = torch.export.Dim("batch", min=1, max=max(1024, batch_size, len(vx)))
            try:
                if fold_bn:
                    gm = torch.export.export(float_model, (example,), dynamic_shapes=({0: batch_dim},)).module()
                    api["fuse_conv_bn"](gm)
                else:
                    train_model = copy.deepcopy(model).train()
                    gm = torch.export.export(train_model, (example,), dynamic_shapes=({0: batch_dim},)).module()
            except Exception as exc:
                raise ModelError(f"torch.export cannot capture the model for QAT: {first_line(exc)}") from None
            config = api["config"](is_qat=True)
            if reduce_range:
                config = dataclasses.replace(config, weight=dataclasses.replace(config.weight, quant_min=-64, quant_max=63))
            prepared = api["prepare_qat_pt2e"](gm, api["quantizer"]().set_global(config))
            lap("prepare_s", t0)

            t0 = time.perf_counter()
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
            x1 = torch.from_numpy(tx[:1])
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
