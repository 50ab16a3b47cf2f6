"""load -> compile -> package -> verify: the `edgecls compile` job, each stage recorded.

Stages hand each other small objects (Model -> CompiledModel -> artifact dir + manifest); the
optimize stage (prune / fine-tune / quantize) slots in between load and compile.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.artifact import manifest as mf
from edgecls.artifact.execute import run_runner
from edgecls.artifact.native import build_runner, required_glibc
from edgecls.artifact.package import check_destination, staging_dir
from edgecls.artifact.reference import onnx_reference, reference_input
from edgecls.artifact.runtime_libs import host_arch, runtime_libs
from edgecls.compile import tvm as tvm_adapter
from edgecls.compile.build import compile_model, integer_kernels_for
from edgecls.data import Preprocess
from edgecls.errors import ArtifactError, UsageError
from edgecls.load import load_model
from edgecls.targets import get_target

# fp32 TVM vs ONNX Runtime differs by ~1e-6 here; anything near this bound is a miscompile.
VERIFY_ATOL = 1e-3
# QDQ int8 graphs: one intermediate activation landing on the other side of a rounding step moves
# float logits by ~1e-2 (measured 0.006-0.012 for QAT digits); a miscompile is far larger.
VERIFY_ATOL_QUANTIZED = 5e-2


def _is_quantized(onnx_path: Path) -> bool:
    import onnx
    return any(n.op_type == "QuantizeLinear" for n in onnx.load(str(onnx_path), load_external_data=False).graph.node)
# Standalone board-side harnesses (ONNX Runtime / LiteRT, TensorRT + its parsers), shipped as files.
HARNESS_DIR = Path(__file__).parent / "artifact" / "harness"


@dataclass
class CompileRequest:
    model: Path
    target: str
    out_dir: Path
    layout: str = "auto"
    input_shape: tuple[int, ...] | None = None
    labels: Path | None = None
    preprocess: Preprocess | dict | None = None  # a dict overrides fields of the default
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
    integer_kernels: bool | None = None  # QDQ int8 -> int8 x int8 -> int32 kernels (tvm_int8); None: CPU targets
    batch_sizes: tuple[int, ...] = (1,)  # extra static batch sizes: model_bN.so each
    tuning_db: Path | str | None = "auto"  # MetaSchedule records: auto = the default database if present
    tflite: str = "auto"  # ship model.tflite for LiteRT: auto (when edgecls[tflite] is installed) | yes | no


def read_labels(path: Path | None, num_classes: int | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist")
    labels = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if num_classes and num_classes > 0 and len(labels) != num_classes:
        raise UsageError(f"{path} has {len(labels)} labels but the model outputs {num_classes} classes")
    return labels


def default_preprocess(shape: tuple[int, ...], mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                       channel_order="RGB") -> Preprocess:
    """ImageNet statistics unless overridden; NCHW or NHWC read off the input shape."""
    if len(shape) != 4:
        raise UsageError(f"input shape {list(shape)} is not an image batch (N,C,H,W or N,H,W,C)")
    nhwc = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    channels = shape[-1] if nhwc else shape[1]
    mean, std = tuple(mean), tuple(std)
    if channels == 1:
        mean, std = mean[:1], std[:1]
    if len(mean) != channels or len(std) != channels:
        raise UsageError(f"--mean/--std need {channels} values for a {channels}-channel input")
    size = (shape[1], shape[2]) if nhwc else (shape[-2], shape[-1])
    return Preprocess(size=tuple(size), mean=mean, std=std, channel_order=channel_order,
                      layout="NHWC" if nhwc else "NCHW", resize="bilinear")


def validation_batch(path: Path, preprocess: Preprocess, shape: tuple[int, ...], count: int):
    """A small labelled batch the artifact carries, so boards can report on-device top-1."""
    from edgecls.data import load_image_folder
    path = Path(path)
    if (path / "val_x.npy").is_file() and (path / "val_y.npy").is_file():
        x, y = np.load(path / "val_x.npy"), np.load(path / "val_y.npy")
    else:
        ds = load_image_folder(path, preprocess, limit=count)
        x, y = ds.x, ds.y
    x, y = x[:count].astype(np.float32), y[:count].astype(np.int64)
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise UsageError(f"validation images have shape {list(x.shape[1:])}, the model expects {list(shape[1:])}")
    return x, y


def acceptance(stages: list[dict], max_drop: float | None) -> dict:
    """--max-accuracy-drop: artifact top-1 may fall at most X points below the original."""
    if max_drop is None:
        return {"accepted": True, "max_accuracy_drop": None}
    # The artifact is measured on the batch it carries; compare with the original on the same images.
    first = stages[0].get("top1_carried", stages[0].get("top1")) if stages else None
    last = next((st.get("top1") for st in stages[1:] if st.get("stage") == "compiled"), None)
    if first is None or last is None:
        return {"accepted": False, "max_accuracy_drop": max_drop,
                "reason": "--max-accuracy-drop needs validation data (--data or --val-data) and a runnable artifact"}
    drop = (first - last) * 100
    ok = drop <= max_drop
    return {"accepted": ok, "max_accuracy_drop": max_drop, "drop_points": round(drop, 3),
            **({} if ok else {"reason": f"top-1 on the validation batch fell {drop:.2f} points ({first:.4f} -> {last:.4f}), "
                                        f"more than --max-accuracy-drop {max_drop}"})}


def verify_artifact(root: Path, emulator_ok: bool, log) -> dict:
    """Run the artifact's own runner on the reference input and compare with ONNX Runtime."""
    manifest = mf.read_manifest(root)
    arch = manifest["target"]["arch"]
    if arch != host_arch() and not emulator_ok:
        return {"how": "skipped", "reason": f"{arch} artifact and no emulator installed"}
    how = "native" if arch == host_arch() else "emulated (" + " ".join(manifest["target"]["emulator"]) + ")"
    log(f"verify: running the artifact's runner ({how}) on the reference input")
    out_path = root.parent / f".{root.name}.verify.npy"
    try:
        report = run_runner(root, root / "reference" / "input.npy", emulate=True, output_path=out_path)
        got = np.load(out_path)
    finally:
        out_path.unlink(missing_ok=True)
    want = np.load(root / "reference" / "output.npy")
    if got.shape != want.shape:
        raise ArtifactError(f"artifact output shape {got.shape} differs from ONNX Runtime's {want.shape}")
    diff = float(np.abs(got.astype(np.float64) - want).max())
    k = min(5, want.shape[-1])
    top_got = np.argsort(-got.reshape(-1, want.shape[-1])[0])[:k].tolist()
    top_want = np.argsort(-want.reshape(-1, want.shape[-1])[0])[:k].tolist()
    result = {"how": how, "reference": "onnxruntime", "max_abs_diff": diff,
              "top1_match": top_got[0] == top_want[0], "top5_match": top_got == top_want,
              "runner_ms": report["timings_ms"]["median"]}
    atol = VERIFY_ATOL_QUANTIZED if _is_quantized(root / "model.onnx") else VERIFY_ATOL
    result["tolerance"] = atol
    if diff > atol * max(1.0, float(np.abs(want).max())):
        raise ArtifactError(f"compiled artifact disagrees with ONNX Runtime: max abs diff {diff:.3g} "
                            f"on the reference input (miscompile); nothing was written")
    return result


def artifact_accuracy(root: Path, emulator_ok: bool, log) -> dict | None:
    """Top-1 of the compiled artifact itself, by its own runner over the batch it carries."""
    manifest = mf.read_manifest(root)
    if "reference/val_x.npy" not in manifest["files"]:
        return None
    if manifest["target"]["arch"] != host_arch() and not emulator_ok:
        return {"stage": "compiled", "top1": None, "how": "skipped: no emulator"}
    log("accuracy: running the artifact's runner over its validation batch")
    report = run_runner(root, root / "reference" / "input.npy", emulate=True,
                        extra=["--val-x", "reference/val_x.npy", "--val-y", "reference/val_y.npy"])
    acc = report.get("accuracy") or {}
    how = "native" if manifest["target"]["arch"] == host_arch() else "emulated"
    return {"stage": "compiled", "top1": acc.get("top1"), "top5": acc.get("top5"), "n": acc.get("n"),
            "how": f"edgecls-runner ({how})",
            "size_bytes": sum(f["size"] for f in manifest["files"].values())}


def _top1_onnx(onnx_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from edgecls.artifact.reference import onnx_session
    sess = onnx_session(onnx_path, optimize=False)
    name = sess.get_inputs()[0].name
    return float(np.mean([sess.run(None, {name: x[i:i + 1]})[0].argmax() == y[i] for i in range(len(y))]))


def compile_artifact(req: CompileRequest, log=lambda msg: None) -> Path:
    if req.optimize is None:
        return _compile(req, log)
    from dataclasses import replace

    from edgecls.optimize.run import optimize_model, temp_work_dir
    from edgecls.optimize.keras_qat import is_keras_model
    if is_keras_model(req.optimize.model):
        raise UsageError("TVM compiles ONNX or torch models; a Keras model stops at `edgecls optimize` "
                         "(TF-MOT -> model.tflite for LiteRT)")
    check_destination(req.out_dir, req.force)
    target = get_target(req.target, req.targets_dir)
    target.require_compiler()
    with temp_work_dir() as work:
        # Pruned channel counts rounded to the target's `round_to` (8 by default: NEON/AVX friendly).
        result = optimize_model(replace(req.optimize, round_to=target.round_to, tflite=req.tflite), Path(work), log)
        x, y = result.val.x[:req.val_count], result.val.y[:req.val_count]
        np.save(Path(work) / "val_x.npy", x)
        np.save(Path(work) / "val_y.npy", y)
        result.stages[0]["top1_carried"] = _top1_onnx(result.original_onnx, x, y)
        inner = replace(req, model=result.onnx, optimize=None, val_data=Path(work),
                        preprocess=req.optimize.preprocess)
        return _compile(inner, log, stages=result.stages, variant=result.variant, source=req.optimize.model,
                        tflite=result.tflite)


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
        log(f"tflite: skipped ({str(exc).splitlines()[0]})")
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


def _compile(req: CompileRequest, log, stages: list | None = None, variant: str = "fp32",
             source: Path | None = None, tflite: Path | None = None) -> Path:
    t_start = time.perf_counter()
    target = get_target(req.target, req.targets_dir)
    check_destination(req.out_dir, req.force)  # before minutes of work
    target.require_compiler()
    libs = runtime_libs(target.arch)
    emulator_ok = target.arch == host_arch()
    if target.arch != host_arch() and req.verify:
        try:
            target.require_emulator()
            emulator_ok = True
        except Exception as exc:  # verification is skipped, and the manifest says why
            log(f"verify: skipped ({exc})")

    backend = _backend(req, target.name)  # before minutes of work: --from-report must decide
    tuning_db = _tuning_db(req.tuning_db)
    t0 = time.perf_counter()
    model = load_model(req.model, req.input_shape)
    load_s = time.perf_counter() - t0
    num_classes = model.output.shape[-1] if model.output.shape else None
    labels = read_labels(req.labels, num_classes)
    preprocess = req.preprocess if isinstance(req.preprocess, Preprocess) else default_preprocess(
        model.input.shape, **(req.preprocess or {}))
    log(f"loaded {model.path} ({model.format}): input {model.input.name} {list(model.input.shape)} "
        f"{model.input.dtype}, output {list(model.output.shape)}")

    with staging_dir(req.out_dir, req.force) as tmp:
        compiled = compile_model(model, target, tmp / "model.so", req.layout, log, schedules=req.schedules,
                                 tuning_db=tuning_db, integer_kernels=req.integer_kernels)
        import onnx
        onnx.save(model.onnx, str(tmp / "model.onnx"))
        if variant.endswith("fp16"):
            # onnxsim folded the fp16 -> fp32 Casts; ship the half-size file boards download.
            from edgecls.optimize.fp16 import fp16_weights_onnx
            fp16_weights_onnx(tmp / "model.onnx", tmp / "model.onnx")
        log(f"runner: building edgecls-runner for {target.arch} with {target.compiler}")
        runner = build_runner(target.arch, target.compiler, tmp, libs)
        (tmp / "reference").mkdir()
        x = reference_input(model.input.shape, model.input.dtype, seed=int(model.sha256[:8], 16))
        np.save(tmp / "reference" / "input.npy", x)
        np.save(tmp / "reference" / "output.npy", onnx_reference(tmp / "model.onnx", x))
        from edgecls.artifact.batches import build_batches, verify_batches
        batches = build_batches(tmp, model, tuple(req.batch_sizes), lambda m, out: compile_model(
            m, target, out, req.layout, log, schedules=req.schedules, tuning_db=tuning_db,
            integer_kernels=req.integer_kernels), log)
        if req.val_data is not None:
            vx, vy = validation_batch(req.val_data, preprocess, model.input.shape, req.val_count)
            np.save(tmp / "reference" / "val_x.npy", vx)
            np.save(tmp / "reference" / "val_y.npy", vy)
        (tmp / "harness").mkdir()
        for src in sorted(HARNESS_DIR.glob("*.py")):
            shutil.copy2(src, tmp / "harness" / src.name)
        if labels:
            (tmp / "labels.txt").write_text("\n".join(labels) + "\n")
        if tflite is None and req.tflite != "no":
            (tmp / ".tflite").mkdir()
            tflite = _plain_tflite(req, model, tmp / ".tflite", log)
        if tflite is not None:
            shutil.copy2(tflite, tmp / "model.tflite")
        elif backend["runtime"] == "tflite":
            raise UsageError("the chosen backend is tflite but this artifact ships no model.tflite "
                             "(compile a torch model with the edgecls[tflite] extra installed)")
        shutil.rmtree(tmp / ".tflite", ignore_errors=True)
        manifest = mf.new_manifest(
            model={"source": str(model.path), "format": model.format, "sha256": model.sha256,
                   "input": model.input.to_dict(), "output": model.output.to_dict(),
                   "notes": model.notes},
            target={**target.to_dict(), "tvm_resolved": compiled.tvm_target},
            layout=compiled.layout,
            preprocess=preprocess.to_dict(),
            labels=labels,
            options={"layout": req.layout, "input_shape": list(req.input_shape) if req.input_shape else None,
                     "import_route": compiled.import_route, "verify": req.verify,
                     "schedules": req.schedules,
                     "integer_kernels": integer_kernels_for(target, req.integer_kernels)},
            passes=compiled.passes,
            stats=compiled.stats,
            stages=stages or [{"stage": "original", "size_bytes": model.path.stat().st_size}],
            variant=variant,
            optimized_from=str(source) if source else None,
            runner={"file": runner.name, "arch": target.arch,
                    "glibc_required": required_glibc([tmp / "model.so", runner, *libs.paths]),
                    "tvm_runtime": libs.source},
            versions=mf.library_versions({**tvm_adapter.versions(), "compiler": target.compiler}),
            batches=batches,
            runtimes_shipped=["tvm", "onnxruntime"] + (["tflite"] if tflite is not None else []),
            backend=backend,
            timings={"load_s": round(load_s, 3), **compiled.timings},
        )
        mf.write_manifest(tmp, manifest)
        if req.verify:
            manifest["verification"] = verify_artifact(tmp, emulator_ok, log)
            if len(batches) > 1 and manifest["verification"].get("tolerance"):
                manifest["verification"]["batches"] = verify_batches(
                    tmp, batches, manifest["verification"]["tolerance"], emulator_ok, log)
        else:
            manifest["verification"] = {"how": "skipped", "reason": "--no-verify"}
        if not stages and (tmp / "reference" / "val_x.npy").is_file():
            manifest["stages"][0]["top1"] = _top1_onnx(tmp / "model.onnx", np.load(tmp / "reference" / "val_x.npy"),
                                                       np.load(tmp / "reference" / "val_y.npy"))
        compiled = artifact_accuracy(tmp, emulator_ok, log)
        if compiled:
            manifest["stages"].append(compiled)
        manifest["acceptance"] = acceptance(manifest["stages"], req.max_accuracy_drop)
        manifest["timings"]["total_s"] = round(time.perf_counter() - t_start, 3)
        mf.write_manifest(tmp, manifest)
    if not manifest["acceptance"]["accepted"]:
        raise ArtifactError(f"artifact written to {req.out_dir} but REJECTED: {manifest['acceptance']['reason']}")
    log(f"artifact written to {req.out_dir}")
    return req.out_dir
