"""The Python API: `edgecls.compile`, `load_artifact`, `bench`, `report`. The CLI's commands are a
thin layer over these same calls (they parse text options and print), so both do the same thing
and fail with the same typed errors (`edgecls.EdgeclsError` and its subclasses, one line each).

Imports stay inside the functions: `import edgecls` must not pull in torch or TVM.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

from edgecls.errors import ModelError, UsageError


def _quiet(msg: str) -> None:
    pass


def _torch_module(model) -> bool:
    torch = sys.modules.get("torch")  # an nn.Module means torch is imported already
    return torch is not None and isinstance(model, torch.nn.Module)


@contextlib.contextmanager
def _model_path(model, name: str | None):
    """A model path as given, or an in-memory nn.Module saved whole (torch.save) to a temp file
    named after it: the same stages then load it as they load a user's .pth."""
    if not _torch_module(model):
        if not isinstance(model, (str, Path)):
            raise UsageError(f"model must be a path or a torch.nn.Module, got {type(model).__name__}")
        yield Path(model)
        return
    import torch
    stem = name or type(model).__name__
    with tempfile.TemporaryDirectory(prefix="edgecls-model-") as tmp:
        path = Path(tmp) / f"{stem}.pth"
        try:
            torch.save(model, path)
        except Exception as exc:  # pickle: a class defined inside a function, a lambda attribute ...
            raise ModelError(f"cannot save the model with torch.save ({type(exc).__name__}: {exc}); "
                             f"define its class at module level") from None
        yield path


def tflite_mode(flag: bool | str | None) -> str:
    """tflite=True/False/None (--tflite/--no-tflite/neither) -> the request's yes/no/auto."""
    if isinstance(flag, str):
        return flag
    return "auto" if flag is None else ("yes" if flag else "no")


def _shape(shape) -> tuple[int, ...] | None:
    from edgecls.load import parse_shape
    if shape is None or isinstance(shape, str):
        return parse_shape(shape)
    return parse_shape(",".join(map(str, shape)))


def _optimize_request(path: Path, shape, preprocess, opt: dict, checks: dict):
    from edgecls.optimize.run import OptimizeRequest
    return OptimizeRequest.from_options(
        path, opt["data"], opt["train"], opt["calib"], opt["val"], prune=opt["prune"] or 0.0,
        importance=opt["importance"], quantize=opt["quantize"] or "none", epochs=opt["epochs"],
        calib_method=opt["calib_method"], seed=opt["seed"], preprocess=preprocess,
        input_shape=",".join(map(str, shape)) if shape else None, **checks)


def compile(model, target: str, out_dir, *, input_shape=None, data=None, train=None, calib=None, val=None,
            prune: float | None = None, importance: str = "magnitude", quantize: str | None = None,
            epochs: int = 4, calib_method: str = "minmax", seed: int = 0, max_accuracy_drop: float | None = None,
            layout: str = "auto", labels=None, preprocess=None, val_data=None, val_count: int = 64,
            force: bool = False, verify: bool = True, schedules: bool = True, backend: str = "tvm",
            from_reports=(), integer_kernels: bool | None = None, batch_sizes=(1,), tuning_db="auto",
            tflite: bool | None = None, variant: str | None = None, targets_dir=None, model_code=None,
            name: str | None = None, expected_accuracy: float | None = None, accuracy_check: bool = True,
            log=None):
    """Compile a model for a target into a verified artifact directory; returns its `Artifact`.

    model: a path (.onnx, .pt2, TorchScript, a torch.save'd .pth) or a torch.nn.Module in memory
    (saved whole to a temp file named `name` or its class name, which reports show). The keywords
    are `edgecls compile`'s options: prune / quantize ("ptq", "qat", "fp16") with data (an
    ImageFolder, or train/calib/val) optimize first; preprocess is a Preprocess or a dict of
    overrides (mean, std, channel_order); model_code names the .py file(s) or folder(s) holding
    the model's class. expected_accuracy (top-1 %, as measured by the user) and accuracy_check
    (False: go on when the original model scores near chance on the data) are the preprocessing
    check's. log(msg) receives every stage's line.
    """
    from edgecls.artifact.batches import parse_batches
    from edgecls.artifact.handle import load_artifact
    from edgecls.pipeline import CompileRequest, compile_artifact
    from edgecls.user_code import using_model_code
    shape = _shape(input_shape)
    opt = dict(data=data, train=train, calib=calib, val=val, prune=prune, importance=importance,
               quantize=quantize, epochs=epochs, calib_method=calib_method, seed=seed)
    checks = dict(expected_accuracy=expected_accuracy, accuracy_check=accuracy_check)
    batches = parse_batches(batch_sizes if isinstance(batch_sizes, str) else ",".join(map(str, batch_sizes)))
    with using_model_code(model_code), _model_path(model, name) as path:
        req = CompileRequest(
            model=path, target=target, out_dir=Path(out_dir), layout=layout, input_shape=shape,
            labels=Path(labels) if labels else None, force=force, targets_dir=targets_dir, verify=verify,
            schedules=schedules, tuning_db=tuning_db or "auto", batch_sizes=batches,
            integer_kernels=integer_kernels, backend=backend, from_reports=tuple(map(Path, from_reports)),
            val_data=Path(val_data) if val_data else None, val_count=val_count,
            max_accuracy_drop=max_accuracy_drop, tflite=tflite_mode(tflite),
            optimize=_optimize_request(path, shape, preprocess, opt, checks), preprocess=preprocess,
            variant=variant, **checks)
        out = compile_artifact(req, log=log or _quiet)
    return load_artifact(out, check=False)


def load_artifact(path, *, check: bool = True):
    """Open an artifact directory (`Artifact`: path, manifest, run(x)); check=True verifies every
    file against the manifest's sha256."""
    from edgecls.artifact.handle import load_artifact as _load
    return _load(path, check=check)


def bench_run(artifact, *, board: str | None = None, local: bool = False, emulate: bool = False,
              runtime: str | None = None, threads: int | None = None, cores: str | None = None, runs: int = 50,
              warmup: int = 5, warmup_ms: float = 0, min_ms: float = 0, cooldown_ms: float = 0,
              batch_sizes=(1,), latency_budget: float | None = None, count: bool = False,
              cpu_model: str | None = None, profile: bool = False, precision: str | None = None,
              out_dir="reports", parallel: int = 4, inventory=None, ssh_config=None,
              accept_new_host_key: bool = False, on_change=None, background_load: int = 0):
    """`bench` per place: a PlaceResult each (status, detail, report paths), failures included."""
    from edgecls.artifact.batches import parse_batches
    from edgecls.bench.counted import check_cpu_model
    from edgecls.bench.harness import BenchOptions, parse_runtimes
    from edgecls.bench.load import check_background_load
    from edgecls.bench.run import make_places, run_bench
    from edgecls.bench.tensorrt import check_precision
    if count and profile:
        raise UsageError("--count (instructions under qemu) and --profile (time here) are two runs: give one")
    if profile and background_load:
        raise UsageError("--profile times kernels on a quiet machine; drop --background-load, or time the busy "
                         "board without --profile")
    runtimes = parse_runtimes(runtime)
    batches = parse_batches(batch_sizes if isinstance(batch_sizes, str) else ",".join(map(str, batch_sizes)))
    opts = BenchOptions(runtimes=runtimes, threads=threads, cores=cores, runs=runs, warmup=warmup,
                        warmup_ms=warmup_ms, min_ms=min_ms, cooldown_ms=cooldown_ms,
                        extra={"precision": check_precision(precision, runtimes)}, batches=batches,
                        latency_budget_ms=latency_budget, count=count, count_cpu=check_cpu_model(cpu_model, count),
                        background_load=check_background_load(background_load, count), profile=profile)
    places = make_places(board, local, emulate, inventory, ssh_config, accept_new_host_key)
    path = getattr(artifact, "path", artifact)
    return run_bench(Path(path), places, opts, Path(out_dir), parallel, on_change=on_change or (lambda rs: None))


def failure(results, out_dir) -> str | None:
    """The one-line error for places that failed (None when none did)."""
    failed = [r for r in results if r.status == "failed"]
    if not failed:
        return None
    if len(results) == 1:  # one place: its own error is the message
        return results[0].detail
    return f"{len(failed)} of {len(results)} place(s) failed; reports of the others are in {out_dir}"


def bench(artifact, *, out_dir="reports", **options) -> list[dict]:
    """Benchmark an artifact (an `Artifact` or its path) on boards (`board="rk1,rk2"` or "all") or
    here (`local=True`, `emulate=True` for an aarch64 artifact under qemu); the keywords are
    `edgecls bench`'s options (`profile=True`: time per kernel here, in each report's `profile`;
    `background_load=N`: N busy processes beside each runtime). Returns the reports (dicts, also
    written to out_dir as JSON); raises EdgeclsError when a place failed, after writing the others'."""
    import json

    from edgecls.errors import EdgeclsError
    results = bench_run(artifact, out_dir=out_dir, **options)
    message = failure(results, out_dir)
    if message:
        raise EdgeclsError(message)
    return [json.loads(p.read_text()) for r in results for p in r.reports]


def report_result(paths, *, baseline: str | None = None, csv=None, md=None, html=None, plot=None,
                  mlflow: str | None = None, title: str = "edgecls report", warn=None):
    """`report` with everything the CLI prints: rows, notes, files written (a ReportResult)."""
    import warnings

    from edgecls.report.build import ReportRequest, build_report
    if isinstance(paths, (str, Path)):
        paths = [paths]
    req = ReportRequest(paths=[Path(p) for p in paths], csv=csv and Path(csv), md=md and Path(md),
                        html=html and Path(html), plot=plot and Path(plot), baseline=baseline, mlflow=mlflow,
                        title=title)
    return build_report(req, warn=warn or (lambda msg: warnings.warn(msg, stacklevel=3)))


def report(paths, **options) -> list[dict]:
    """Merge bench reports (files or folders) into comparison rows, one dict per (board, target,
    model, runtime, variant, threads, cores), with ratios to `baseline` when given; csv/md/html/plot
    write the same files `edgecls report` does."""
    from dataclasses import asdict
    return [asdict(row) for row in report_result(paths, **options).loaded.rows]
