"""load -> (optimize) -> compile -> build the artifact -> verify: the `edgecls compile` job.

Stages hand each other small objects (Model -> CompiledModel -> ArtifactBuilder -> Manifest); the
optimize stage (prune / fine-tune / quantize) slots in between load and compile. The artifact's
files and manifest are edgecls.artifact.builder's, its checks edgecls.artifact.verify's.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.artifact.builder import ArtifactBuilder
from edgecls.artifact.manifest import Manifest, OptionsSection
from edgecls.artifact.package import check_destination, staging_dir
from edgecls.artifact.reference import onnx_predictions
from edgecls.artifact.runtime_libs import host_arch, runtime_libs
from edgecls.artifact.gate import require_decidable
from edgecls.artifact.verify import Validation, record_checks
from edgecls.compile.build import CompiledModel, compile_model, integer_kernels_for
from edgecls.data import Preprocess
from edgecls.errors import ArtifactError, UsageError, first_line
from edgecls.hashing import sha256_file
from edgecls.input_spec import model_file_input, shape_text
from edgecls.load import TORCHSCRIPT_SUFFIXES, load_model
from edgecls.preprocessing import InputChoice, check_preprocessing, choose_input
from edgecls.targets import Target, get_target


@dataclass
class CompileRequest:
    model: Path
    target: str
    out_dir: Path
    layout: str = "auto"
    input_shape: tuple[int, ...] | None = None
    labels: Path | None = None
    preprocess: Preprocess | dict | None = None  # a dict overrides the defaults; None: a file saved with the model, else ImageNet
    force: bool = False
    targets_dir: str | None = None
    verify: bool = True
    val_data: Path | None = None  # ImageFolder, or a dir with val_x.npy + val_y.npy
    val_count: int = 64
    optimize: object | None = None  # an edgecls.optimize.run.OptimizeRequest: prune / quantize first
    max_accuracy_drop: float | None = None  # points of top-1, artifact vs original
    schedules: bool = True  # edgecls' zero-trial CPU schedules (off: TVM's naive loop nests)
    backend: str = "tvm"  # the artifact's default runtime: tvm | onnxruntime | tflite | auto (from_reports)
    from_reports: tuple[Path, ...] = ()  # `bench --runtime auto` reports deciding --backend auto
    integer_kernels: bool | None = None  # QDQ int8 -> int8 x int8 -> int32 kernels (compile/tvm/quant); None: CPU targets
    batch_sizes: tuple[int, ...] = (1,)  # extra static batch sizes: model_bN.so each
    tuning_db: Path | str | None = "auto"  # MetaSchedule records: auto = the default database if present
    tflite: str = "auto"  # ship model.tflite for LiteRT: auto (when edgecls[tflite] is installed) | yes | no
    variant: str | None = None  # the row label reports use; None: read from the graph (graph_facts)
    expected_accuracy: float | None = None  # top-1 (%) the user measured: far below it stops before any work
    accuracy_check: bool = True  # stop when the original model is near chance on the data (preprocessing)


def read_labels(path: Path | None, num_classes: int | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist")
    labels = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if num_classes and num_classes > 0 and len(labels) != num_classes:
        raise UsageError(f"{path} has {len(labels)} labels but the model outputs {num_classes} classes")
    return labels


# Images of a --val-data ImageFolder measured at most (round-robin over classes): every stage and
# the artifact run over them, held in memory as float32 (2000 at 3x224x224 are 1.2 GB), and the
# gate's 95 % interval on 2000 images is already +-0.14 points when nothing changed.
VAL_LIMIT = 2000


def validation_split(path: Path, preprocess: Preprocess, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled image of --val-data (an ImageFolder, or val_x.npy + val_y.npy), classes
    interleaved so that the first images (the batch the artifact carries) cover every class."""
    from edgecls.data import load_image_folder
    path = Path(path)
    if (path / "val_x.npy").is_file() and (path / "val_y.npy").is_file():
        x, y = np.load(path / "val_x.npy"), np.load(path / "val_y.npy")
    else:
        ds = load_image_folder(path, preprocess, limit=VAL_LIMIT)
        x, y = ds.x, ds.y
        rank = np.zeros(len(y), np.int64)  # position of each image within its class
        for c in np.unique(y):
            rank[y == c] = np.arange(int((y == c).sum()))
        order = np.lexsort((y, rank))
        x, y = x[order], y[order]
    x, y = x.astype(np.float32), y.astype(np.int64)
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise UsageError(f"validation images have shape {list(x.shape[1:])}, the model expects {list(shape[1:])}")
    return x, y


@dataclass
class _Optimized:
    """What the optimize stage hands the compile stage besides the optimized model file."""
    stages: list[dict]
    variant: str
    source: Path
    tflite: Path | None
    validation: Validation  # the full validation split every stage was measured on
    input_choice: InputChoice


def check_variant_label(label: str | None) -> None:
    """A --variant label ends up in report keys and `--baseline board:runtime:variant`: no ':' or '/'."""
    if label is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,39}", label):
        raise UsageError(f"--variant '{label}': use up to 40 letters, digits and . _ + - (it names report rows)")


def _graph_facts(model, stages: list[dict], optimized: _Optimized | None, log) -> dict:
    """MACs and parameters of the compiled graph; its precision from the ONNX file given when there
    is one (onnxsim folds fp16 weights' Casts into fp32 constants), else from the compiled graph."""
    from edgecls.compile.graph_facts import graph_facts, quantization, variant_name
    facts = graph_facts(model.onnx, stages)
    if model.format == "onnx":
        import onnx
        facts["quantization"] = quantization(onnx.load(str(model.path)))
        facts["variant"] = variant_name(facts["quantization"], stages)
    origin = Path(optimized.source) if optimized else model.path
    facts["origin"] = {"name": origin.stem or origin.name,
                       "sha256": sha256_file(origin) if optimized and origin.is_file() else model.sha256}
    log(f"graph: {facts['macs']:,} MACs, {facts['params']:,} parameters, variant {facts['variant']}")
    return facts


def compile_artifact(req: CompileRequest, log=lambda msg: None) -> Path:
    if req.optimize is not None:
        from edgecls.optimize.keras_qat import is_keras_model
        if is_keras_model(req.optimize.model):
            raise UsageError("TVM compiles ONNX or torch models; a Keras model stops at `edgecls optimize` "
                             "(TF-MOT -> model.tflite for LiteRT)")
    check_variant_label(req.variant)
    target = get_target(req.target, req.targets_dir)
    check_destination(req.out_dir, req.force)  # before minutes of work
    target.require_compiler()
    if req.optimize is None:
        return _compile(req, target, log)
    return _optimize_then_compile(req, target, log)


def _optimize_then_compile(req: CompileRequest, target: Target, log) -> Path:
    from dataclasses import replace

    from edgecls.optimize.run import optimize_model, temp_work_dir
    # Pruned channel counts rounded to the target's `round_to` (8 by default: NEON/AVX friendly);
    # the accuracy checks run on the validation split before any fine-tuning.
    opt = replace(req.optimize, round_to=target.round_to, tflite=req.tflite, max_accuracy_drop=req.max_accuracy_drop,
                  expected_accuracy=req.expected_accuracy, accuracy_check=req.accuracy_check)
    with temp_work_dir() as work:
        result = optimize_model(opt, Path(work), log)
        val = Validation(result.val.x, result.val.y, onnx_predictions(result.original_onnx, result.val.x))
        inner = replace(req, model=result.onnx, optimize=None, val_data=None, preprocess=result.input.preprocess)
        return _compile(inner, target, log, _Optimized(stages=result.stages, variant=result.variant,
                                                       source=req.optimize.model, tflite=result.tflite,
                                                       validation=val, input_choice=result.input))


def _plain_tflite(req: CompileRequest, model, work: Path, log) -> Path | None:
    """fp32 model.tflite for a compile without optimization, when the input is a torch model.

    ONNX input has no converter short of TensorFlow (onnx2tf), so it ships without one; in auto
    mode a conversion failure only skips the file (the manifest says why), with --tflite it fails.
    """
    from edgecls.optimize.run import tflite_available
    if req.tflite == "no" or model.format == "onnx" or (req.tflite == "auto" and not tflite_available()):
        return None
    import torch

    from edgecls.export.tflite import export_tflite
    from edgecls.load import load_torch_module
    try:
        module = (model.exported_program.module() if model.exported_program is not None
                  else load_torch_module(model.path))
        return export_tflite(module, torch.zeros(model.input.shape), work / "model.tflite").path
    except Exception as exc:
        if req.tflite == "yes":
            raise
        log(f"tflite: skipped ({first_line(exc)})")
        return None


def _backend(req: CompileRequest, target: str) -> dict:
    """The runtime `bench` uses by default for this artifact; auto = the measured winner."""
    if req.backend == "auto":
        from edgecls.bench.choice import backend_from_reports
        choice = backend_from_reports(list(req.from_reports), target)
    elif req.backend in ("tvm", "onnxruntime", "tflite"):
        choice = {"runtime": req.backend, "how": "given (--backend)"}
    else:
        raise UsageError(f"--backend takes tvm, onnxruntime, tflite or auto; got '{req.backend}'")
    return choice


def _tuning_db(spec: Path | str | None) -> Path | None:
    """'auto': the default database when it exists; 'none'/None: no tuned records."""
    from edgecls.compile.tune import default_tuning_db
    if spec is None or str(spec).lower() == "none":
        return None
    if str(spec) == "auto":
        db = default_tuning_db()
        return db if db.is_dir() else None
    db = Path(spec).expanduser()
    if not db.is_dir():
        raise UsageError(f"--tuning-db {db} does not exist (create it with `edgecls tune`)")
    return db


def _verifiable(target: Target, verify: bool, log) -> bool:
    """Whether this host can run the artifact: natively, or under the target's emulator."""
    if target.arch == host_arch():
        return True
    if verify:
        try:
            target.require_emulator()
            return True
        except Exception as exc:  # verification is skipped, and the manifest says why
            log(f"verify: skipped ({exc})")
    return False


def _compile(req: CompileRequest, target: Target, log, optimized: _Optimized | None = None) -> Path:
    """load -> compile -> build the artifact -> verify, in a staging dir published when complete."""
    t_start = time.perf_counter()
    libs = runtime_libs(target.arch)
    emulator_ok = _verifiable(target, req.verify, log)
    backend = _backend(req, target.name)  # before minutes of work: --from-report must decide
    tuning_db = _tuning_db(req.tuning_db)
    t0 = time.perf_counter()
    choice = optimized.input_choice if optimized else _input_choice(req)
    model = load_model(req.model, choice.shape)
    load_s = time.perf_counter() - t0
    num_classes = model.output.shape[-1] if model.output.shape else None
    labels = read_labels(req.labels, num_classes)
    log(f"loaded {model.path} ({model.format}): input {model.input.name} {list(model.input.shape)} "
        f"{model.input.dtype}, output {list(model.output.shape)}; preprocessing {choice.describe()}")
    val = optimized.validation if optimized else _validation(req, model, choice, log)
    stages = (optimized and optimized.stages) or [_original_stage(model, val)]

    with staging_dir(req.out_dir, req.force) as tmp:
        build = ArtifactBuilder(tmp, target, libs, log)
        manifest = _build(req, build, model, choice, labels, backend, tuning_db, optimized, load_s, stages, val)
        build.write(manifest)
        record_checks(tmp, manifest, verify=req.verify, emulator_ok=emulator_ok, val=val,
                      max_drop=req.max_accuracy_drop, log=log)
        manifest.timings["total_s"] = round(time.perf_counter() - t_start, 3)
        build.write(manifest)
    if not manifest.acceptance["accepted"]:
        raise ArtifactError(f"artifact written to {req.out_dir} but REJECTED: {manifest.acceptance['reason']}")
    log(f"artifact written to {req.out_dir}")
    return req.out_dir


def _input_choice(req: CompileRequest) -> InputChoice:
    """Shape and preprocessing: options, a file saved with the model, the model's input, the data."""
    choice = choose_input(model_file_input(req.model), req.model, req.input_shape, req.preprocess, req.val_data)
    if (Path(req.model).suffix.lower() in TORCHSCRIPT_SUFFIXES and req.input_shape is None
            and choice.shape_from.endswith("size: default")):
        raise UsageError(f"{req.model}: TorchScript files carry no image size; pass --input-shape "
                         f"{shape_text(choice.shape)} with its size, or --val-data DIR whose images have it")
    return choice


def _validation(req: CompileRequest, model, choice: InputChoice, log) -> Validation | None:
    """--val-data in full, the original's top-1 per image on it, and the checks that stop before any
    build: a near-chance original (preprocessing) and a split too small for --max-accuracy-drop."""
    if req.val_data is None:
        return None
    x, y = validation_split(req.val_data, choice.preprocess, model.input.shape)
    onnx_bytes = model.onnx.SerializeToString()
    val = Validation(x, y, onnx_predictions(onnx_bytes, x))
    log(f"original: top-1 {float((val.original_pred == y).mean()):.4f} on {len(y)} validation images (ONNX Runtime)")
    if req.accuracy_check:
        npy = (Path(req.val_data) / "val_x.npy").is_file()  # tensors the user made: nothing to re-normalise
        check_preprocessing(val.original_pred, x, y, int(model.output.shape[-1]), None if npy else choice,
                            str(req.val_data), req.expected_accuracy, lambda alt: onnx_predictions(onnx_bytes, alt))
    require_decidable(len(y), req.max_accuracy_drop)
    return val


def _original_stage(model, val: Validation | None) -> dict:
    stage = {"stage": "original", "size_bytes": model.path.stat().st_size}
    if val is not None:
        stage.update(top1=float((val.original_pred == val.y).mean()), n=int(len(val.y)), how="onnxruntime")
    return stage


def _build(req: CompileRequest, build: ArtifactBuilder, model, choice: InputChoice, labels, backend: dict,
           tuning_db: Path | None, optimized: _Optimized | None, load_s: float, stages: list[dict],
           val: Validation | None) -> Manifest:
    """Compile the model into the staging dir, stage every other file, and describe them."""
    target = build.target

    def compile_to(m, library: Path) -> CompiledModel:
        return compile_model(m, target, library, req.layout, log=build.log, schedules=req.schedules,
                             tuning_db=tuning_db, integer_kernels=req.integer_kernels)

    compiled = compile_to(model, build.library)
    facts = _graph_facts(model, stages, optimized, build.log)
    build.add_onnx(model, fp16_weights=facts["quantization"]["precision"] == "fp16")
    build.add_runner()
    build.add_reference(model)
    build.add_batches(model, tuple(req.batch_sizes), compile_to)
    if val is not None:  # the first images of the split: boards report on-device top-1 on them
        build.add_validation(val.x[:req.val_count], val.y[:req.val_count])
    build.add_harness()
    build.add_labels(labels)
    _add_tflite(req, build, model, optimized.tflite if optimized else None, backend)
    options = OptionsSection(layout=req.layout, input_shape=list(req.input_shape) if req.input_shape else None,
                             import_route=compiled.import_route, verify=req.verify, schedules=req.schedules,
                             integer_kernels=integer_kernels_for(target, req.integer_kernels), variant=req.variant,
                             **choice.record())
    origin = facts.pop("origin")
    return build.manifest(
        model, compiled, preprocess=choice.preprocess.to_dict(), labels=labels, options=options, stages=stages,
        variant=req.variant or facts["variant"], optimized_from=str(optimized.source) if optimized else None,
        backend=backend, load_s=load_s, graph=facts, origin=origin)


def _add_tflite(req: CompileRequest, build: ArtifactBuilder, model, tflite: Path | None, backend: dict) -> None:
    """The optimize stage's model.tflite, else a plain fp32 one when the model allows."""
    scratch = build.root / ".tflite"
    if tflite is None and req.tflite != "no":
        scratch.mkdir()
        tflite = _plain_tflite(req, model, scratch, build.log)
    if tflite is not None:
        build.add_tflite(tflite)
    elif backend["runtime"] == "tflite":
        raise UsageError("the chosen backend is tflite but this artifact ships no model.tflite "
                         "(compile a torch model with the edgecls[tflite] extra installed)")
    shutil.rmtree(scratch, ignore_errors=True)
