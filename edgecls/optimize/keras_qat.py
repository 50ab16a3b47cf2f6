"""Keras input: TF-MOT quantization-aware training or post-training int8, converted to LiteRT (.tflite).

A Keras classifier (`.keras` or `.h5`, Keras 2 via `tf_keras`) goes through TensorFlow's own tools,
not through torch/ONNX: QAT with `tensorflow_model_optimization`, then `TFLiteConverter` to a full
int8 (or fp16 / fp32) .tflite, measured with ai-edge-litert like the torch path's TFLite row.

Needs the optional extra `edgecls[keras]`; tensorflow is imported lazily so the rest of edgecls works
without it. Importing tensorflow in the same process as torch and tvm works in any order (checked
with tensorflow 2.21 / torch 2.13 / tvm 0.27).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.data import Dataset
from edgecls.errors import EdgeclsError, ModelError, UsageError, first_line

_MISSING = "Keras input needs the optional extra: pip install 'edgecls[keras]'"

KERAS_QUANTIZE_MODES = ("none", "ptq", "qat", "fp16")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
CALIB_MAX = 256  # representative images for the int8 converter; more only costs time
QAT_LR = 1e-4  # fine-tuning a trained model: small steps, the ranges settle in an epoch or two
BATCH = 32

# Measured (TF-MOT 0.8.1 prune_low_magnitude, ConstantSparsity 0.5, strip_pruning, then this module's
# _convert; LiteRT 2.3.0, 1 thread, x86_64 host, best of 5 interleaved rounds):
#   digits CNN (69k params, 49.8% kernel zeros): fp32 .tflite 279,580 -> 279,580 bytes, int8 78,584 ->
#     78,584 bytes; latency 0.0123 -> 0.0123 ms fp32, 0.0143 -> 0.0143 ms int8.
#   MobileNetV2 128x128, 10 classes (2.27M params, 48.5% zeros): fp32 8,853,104 -> 8,914,868 bytes (+0.7%), int8
#     2,662,312 -> 2,721,584 bytes (+2.2%); latency 2.92 -> 3.01 ms fp32, 3.39 -> 3.43 ms int8 (noise).
#   Only a gzip of the file shrinks (MobileNetV2 int8: 2,330,957 -> 1,652,846 bytes).
KERAS_PRUNE_MESSAGE = ("--prune is not supported for Keras models: TF-MOT pruning is unstructured (it zeroes "
                       "weights inside dense tensors), so the .tflite keeps its size and speed on Cortex-A; "
                       "use --quantize qat/ptq, or prune a torch model (structured channel pruning)")


@dataclass
class KerasResult:
    tflite: Path
    variant: str  # "int8" / "fp16" / "fp32"
    stages: list[dict] = field(default_factory=list)
    layout: str = "NHWC"  # the .tflite's input layout (Keras' own): what a runner must feed it


def _import_tf():
    """(tf, tf_keras, tfmot), or EdgeclsError naming the extra. Quiet: tensorflow prints to fd 2 on import."""
    # TF-MOT works only with Keras 2 (the tf_keras package). TF_USE_LEGACY_KERAS=1 makes `tf.keras`
    # that same Keras 2; it is read when tensorflow is first imported, so set it before the import.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from edgecls.export.tflite import _quiet
    try:
        with _quiet():  # "failed call to cuInit" and oneDNN banners from the CUDA-enabled wheel
            import tensorflow as tf
            import tensorflow_model_optimization as tfmot
            import tf_keras
    except ImportError as e:
        raise EdgeclsError(_MISSING) from e
    return tf, tf_keras, tfmot


def keras_available() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None
               for m in ("tensorflow", "tf_keras", "tensorflow_model_optimization", "ai_edge_litert"))


def is_keras_model(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in KERAS_SUFFIXES


def load_keras_model(path: str | os.PathLike):
    """tf_keras.Model from a .keras / .h5 file; ModelError (one line) when missing, corrupt or unsupported."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if not path.is_file() or not is_keras_model(path):
        raise ModelError(f"{path} is not a Keras model file ({'/'.join(KERAS_SUFFIXES)})")
    _, tf_keras, _ = _import_tf()
    from edgecls.export.tflite import _quiet
    try:
        with _quiet():
            model = tf_keras.models.load_model(str(path), compile=False)
    except Exception as e:  # zipfile/h5py/JSON/deserialization errors: all mean "not a usable model"
        raise ModelError(f"cannot load Keras model {path}: {first_line(e)}") from None
    if not isinstance(model, tf_keras.Model):
        raise ModelError(f"{path} holds no Keras model")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{path}: a classifier with one input and one output is needed, "
                         f"got {len(model.inputs)} inputs and {len(model.outputs)} outputs")
    return model


def _model_layout(model, data: Dataset) -> str:
    """"NHWC" or "NCHW": the layout of `data` that the model's input shape accepts (NHWC preferred)."""
    want = tuple(model.input_shape[1:])
    have = tuple(data.x.shape[1:])
    if data.preprocess.layout == "NHWC":
        nhwc, nchw = have, (have[2], have[0], have[1])
    else:
        nchw, nhwc = have, (have[1], have[2], have[0])
    for layout, shape in (("NHWC", nhwc), ("NCHW", nchw)):
        if len(want) == 3 and all(w is None or w == s for w, s in zip(want, shape)):
            return layout
    raise UsageError(f"the Keras model expects input {('N',) + want} but the images are "
                     f"{('N',) + nhwc} (NHWC) / {('N',) + nchw} (NCHW)")


def _to_layout(data: Dataset, layout: str) -> np.ndarray:
    x = data.x
    if data.preprocess.layout != layout:
        x = x.transpose(0, 2, 3, 1) if layout == "NHWC" else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def _logits(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(model(x[i:i + batch], training=False), dtype=np.float32)
                           for i in range(0, len(x), batch)])


def _accuracy(logits: np.ndarray, y: np.ndarray, num_classes: int) -> dict:
    top1 = float((logits.argmax(1) == y).mean())
    top5 = None
    if num_classes > 5 and logits.shape[1] > 5:
        top5 = float((np.argsort(-logits, axis=1)[:, :5] == y[:, None]).any(1).mean())
    return {"top1": top1, "top5": top5, "n": int(len(y))}


def _outputs_probabilities(logits: np.ndarray) -> bool:
    """True when the model ends in softmax (rows are non-negative and sum to 1)."""
    return bool(np.all(logits >= 0) and np.allclose(logits.sum(1), 1.0, atol=1e-3))


def _qat(tf, tf_keras, tfmot, model, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int,
         from_probs: bool, log):
    """Wrap `model` with TF-MOT fake-quant (8-bit, per-channel weights) and fine-tune it on (x, y)."""
    try:
        qmodel = tfmot.quantization.keras.quantize_model(model)
    except Exception as e:  # subclassed models, unsupported layers
        raise UsageError(f"TF-MOT cannot quantize this Keras model: {first_line(e)} "
                         f"(QAT needs a Sequential or functional model of supported layers; try --quantize ptq)") from None
    qmodel.compile(optimizer=tf_keras.optimizers.Adam(QAT_LR),
                   loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=not from_probs),
                   metrics=["accuracy"])
    cb = tf_keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: log(
        f"qat epoch {e + 1}/{epochs}: loss {logs['loss']:.4f}, train top-1 {logs['accuracy']:.4f}"))
    tf_keras.utils.set_random_seed(seed)
    qmodel.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0, callbacks=[cb])
    return qmodel


def _convert(tf, model, variant: str, calib_x: np.ndarray) -> bytes:
    """TFLite flatbuffer of `model`: "int8" (full int8, int8 input/output), "fp16" weights, or "fp32"."""
    if any(d is None for d in model.input_shape[1:]):
        # Dynamic H/W would give a .tflite of input shape [1, 1, 1, C]: fix it to the images' shape.
        spec = tf.TensorSpec((1,) + calib_x.shape[1:], tf.float32)
        fn = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], model)
    else:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "int8":
        def representative():
            for i in range(min(len(calib_x), CALIB_MAX)):
                yield [calib_x[i:i + 1]]
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    elif variant == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    return conv.convert()


def optimize_keras(model_path: Path, tune: Dataset, calib: Dataset, val: Dataset, work_dir: Path, *,
                   quantize: str, epochs: int, seed: int, log=lambda m: None) -> KerasResult:
    """Keras model -> `work_dir/model.tflite` (int8 for qat/ptq, fp16, or fp32), accuracy at every stage.

    Stages (rows like the torch path's): "original" (the Keras model), "qat-fine-tuned" (the
    fake-quantized Keras model after fine-tuning, qat only), and the .tflite run in ai-edge-litert
    ("quantized", or "tflite" when fp32). All measured on `val`.
    """
    if quantize not in KERAS_QUANTIZE_MODES:
        raise UsageError(f"--quantize must be one of {', '.join(KERAS_QUANTIZE_MODES)}, got '{quantize}'")
    if not isinstance(epochs, int) or epochs < 0:
        raise UsageError(f"--epochs must be a non-negative integer, got {epochs!r}")
    if len(val) == 0 or (quantize == "qat" and len(tune) == 0) or (quantize == "ptq" and len(calib) == 0):
        raise UsageError(f"too few images: {len(tune)} fine-tune / {len(calib)} calibration / {len(val)} validation")
    tf, tf_keras, tfmot = _import_tf()
    from edgecls.export.tflite import _quiet, run_tflite

    model = load_keras_model(model_path)
    layout = _model_layout(model, val)
    val_x = _to_layout(val, layout)
    n_classes = len(val.classes)
    if model.output_shape[-1] != n_classes:
        raise UsageError(f"the Keras model outputs {model.output_shape[-1]} classes but the data has {n_classes}")
    log(f"keras: input {layout} {tuple(model.input_shape[1:])}, {model.count_params():,} params, "
        f"{len(tune)} fine-tune / {len(calib)} calibration / {len(val)} validation images")

    params = int(model.count_params())
    logits = _logits(model, val_x)
    stages = [{"stage": "original", "runtime": "keras", **_accuracy(logits, val.y, n_classes), "params": params,
               "size_bytes": Path(model_path).stat().st_size, "how": f"keras {Path(model_path).suffix.lower()}"}]
    log(f"original: top-1 {stages[0]['top1']:.4f}")

    current = model
    if quantize == "qat":
        qat_epochs = max(1, epochs)
        current = _qat(tf, tf_keras, tfmot, model, _to_layout(tune, layout), tune.y, epochs=qat_epochs, seed=seed,
                       from_probs=_outputs_probabilities(logits), log=log)
        # params: the deployed weights are the original ones; TF-MOT only adds min/max range variables.
        stages.append({"stage": "qat-fine-tuned", "runtime": "keras", **_accuracy(_logits(current, val_x), val.y, n_classes),
                       "params": params, "epochs": qat_epochs, "method": "tf-mot qat"})
        log(f"qat-fine-tuned: top-1 {stages[-1]['top1']:.4f} (fake-quantized Keras model)")

    variant = {"qat": "int8", "ptq": "int8", "fp16": "fp16", "none": "fp32"}[quantize]
    calib_x = _to_layout(calib, layout) if len(calib) else val_x
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = work_dir / "model.tflite"
    log(f"tflite: converting to {'full-int8' if variant == 'int8' else variant} with TFLiteConverter")
    try:
        with _quiet():
            out.write_bytes(_convert(tf, current, variant, calib_x))
    except EdgeclsError:
        raise
    except Exception as e:  # converter errors are long multi-line MLIR dumps
        raise EdgeclsError(f"TFLite conversion failed: {first_line(e)}") from e
    tfl_logits = run_tflite(out, val_x)
    method = {"qat": "tf-mot qat int8", "ptq": "ptq int8", "fp16": "fp16 weights", "none": "fp32"}[quantize]
    stages.append({"stage": "tflite" if variant == "fp32" else "quantized", "runtime": "litert",
                   **_accuracy(tfl_logits, val.y, n_classes), "params": params, "size_bytes": out.stat().st_size,
                   "dtype": {"int8": "int8", "fp16": "float16", "fp32": "float32"}[variant], "method": method})
    log(f"tflite ({variant}): {out.stat().st_size:,} bytes, top-1 {stages[-1]['top1']:.4f} in ai-edge-litert")
    return KerasResult(tflite=out, variant=variant, stages=stages, layout=layout)
