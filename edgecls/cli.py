"""edgecls command line: parse, call one function, print. No logic lives here."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from edgecls import __version__
from edgecls.errors import EdgeclsError, UsageError

from edgecls.commands.options import mlflow_option, targets_dir_option


def optimization_options(f):
    """The prune / fine-tune / quantize options shared by `compile` and `optimize`."""
    for option in reversed([
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="ImageFolder for fine-tuning, calibration and validation (split deterministically)."),
        click.option("--train", type=click.Path(path_type=Path), default=None, help="Separate fine-tune ImageFolder."),
        click.option("--calib", type=click.Path(path_type=Path), default=None, help="Separate calibration ImageFolder."),
        click.option("--val", type=click.Path(path_type=Path), default=None, help="Separate validation ImageFolder."),
        click.option("--prune", default=0.0, type=float, show_default=True,
                     help="Structured pruning: fraction of channels removed per layer (torch-pruning, DepGraph); "
                          "the model really shrinks, unlike TF-MOT unstructured sparsity, which gives "
                          "no speed on Cortex-A CPUs."),
        click.option("--importance", type=click.Choice(["magnitude", "taylor", "bn-scale"]), default="magnitude", show_default=True),
        click.option("--quantize", type=click.Choice(["none", "ptq", "qat", "fp16"]), default="none", show_default=True,
                     help="int8: ptq (ONNX Runtime static QDQ) or qat (torchao PT2E fine-tune); fp16: weights "
                          "stored as float16 (half the file), computed in float32 on CPUs."),
        click.option("--epochs", default=4, show_default=True, type=click.IntRange(1, 1000), help="Fine-tune epochs after pruning."),
        click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax", show_default=True),
        click.option("--seed", default=0, show_default=True),
        click.option("--tflite/--no-tflite", "tflite", default=None,
                     help="Also ship model.tflite (LiteRT; int8 when quantized). Default: when the "
                          "edgecls[tflite] extra is installed and the model is a torch model."),
    ]):
        f = option(f)
    return f


def _log(verbose: bool):
    from edgecls.report.console import console
    return (lambda msg: console.print(f"[dim]{msg}[/dim]", highlight=False)) if verbose else (lambda msg: None)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgecls")
def cli():
    """Take a trained image classifier to edge boards: compile with TVM, run, verify."""


@cli.group(invoke_without_command=True)
@targets_dir_option
@click.pass_context
def targets(ctx, targets_dir):
    """List known targets (board types)."""
    ctx.obj = {"targets_dir": targets_dir}
    if ctx.invoked_subcommand is None:
        from edgecls.report.console import targets_table
        from edgecls.targets import load_targets
        targets_table(load_targets(targets_dir))


@targets.command("show")
@click.argument("name")
@click.pass_context
def targets_show(ctx, name):
    """Show one target: TVM target, cores, cross compiler, runtimes."""
    from edgecls.report.console import target_detail
    from edgecls.targets import get_target
    target_detail(get_target(name, ctx.obj["targets_dir"]))


def _preprocess(mean, std, channel_order, preprocess_file):
    if preprocess_file:
        from edgecls.data import Preprocess
        try:
            return Preprocess.from_dict(json.loads(Path(preprocess_file).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--preprocess {preprocess_file}: {exc}") from None
    if mean or std or channel_order:  # overrides on top of the defaults for the input shape
        return {k: v for k, v in (("mean", mean), ("std", std), ("channel_order", channel_order)) if v}
    return None


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} '{text}' is not a comma-separated list of numbers") from None


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target name (see `edgecls targets`) or a .toml file.")
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to create.")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NHWC"]), default="auto", show_default=True,
              help="Conv data layout; auto uses the target's preferred layout.")
@click.option("--input-shape", default=None, metavar="N,C,H,W", help="Static input shape, e.g. 1,3,224,224.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Class names, one per line.")
@click.option("--mean", default=None, metavar="R,G,B", help="Per-channel mean in 0..1 pixel scale.")
@click.option("--std", default=None, metavar="R,G,B", help="Per-channel std in 0..1 pixel scale.")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None)
@click.option("--preprocess", "preprocess_file", type=click.Path(path_type=Path), default=None,
              help="Preprocessing as JSON (size, mean, std, channel_order, layout).")
@optimization_options
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Fail (artifact kept, marked rejected) when artifact top-1 falls more than X points below the original.")
@click.option("--val-data", type=click.Path(path_type=Path), default=None,
              help="Labelled images the artifact carries for on-device top-1: an ImageFolder, "
                   "or a folder with val_x.npy + val_y.npy.")
@click.option("--val-count", default=64, show_default=True, type=click.IntRange(1, 10000))
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--no-verify", is_flag=True, help="Skip running the artifact on the reference input.")
@click.option("--schedules/--no-schedules", default=True, show_default=True,
              help="edgecls' zero-trial CPU schedules (vectorized, parallel, tiled) for untuned kernels.")
@click.option("--backend", type=click.Choice(["tvm", "onnxruntime", "tflite", "auto"]), default="tvm",
              show_default=True, help="The artifact's default runtime for `bench`; auto = the fastest in "
                                      "--from-report (reports of `bench --runtime auto` on boards of this target).")
@click.option("--from-report", "from_reports", multiple=True, type=click.Path(path_type=Path),
              help="Bench report(s) or folder(s) for --backend auto (repeatable).")
@click.option("--integer-kernels/--float-kernels", default=None,
              help="QDQ int8 models: exact int8 x int8 -> int32 conv/matmul with int8 weights (3.3x smaller "
                   "model.so) on multiply-accumulate kernels of ours (AVX2 byte pairs for 7-bit weights, "
                   "int16 pairs otherwise and on NEON), or float compute. Default: integer on CPU targets.")
@click.option("--batch-sizes", default="1", show_default=True, metavar="1,2,4,8",
              help="Also build these static batch sizes (model_bN.so each) for `bench --batch`.")
@click.option("--tuning-db", default=None, metavar="DIR",
              help="Apply tuned records from this database (default: $EDGECLS_TUNING_DB or "
                   "~/.cache/edgecls/tuning when it holds one for the target); 'none' to ignore it.")
@click.option("--verbose", "-v", is_flag=True, help="Show every stage and graph pass.")
@mlflow_option
@targets_dir_option
def compile(model, target, out_dir, layout, input_shape, labels, mean, std, channel_order, preprocess_file,
            data, train, calib, val, prune, importance, quantize, epochs, calib_method, seed, tflite, max_accuracy_drop,
            val_data, val_count, force, no_verify, schedules, backend, from_reports, integer_kernels, batch_sizes, tuning_db, verbose,
            mlflow_uri, targets_dir):
    """Compile MODEL (.onnx, .pt2, TorchScript) for a target into a runnable, verified artifact."""
    from edgecls.artifact.batches import parse_batches
    from edgecls.load import parse_shape
    from edgecls.pipeline import CompileRequest, compile_artifact
    from edgecls.report.console import console
    req = CompileRequest(
        model=model, target=target, out_dir=out_dir, layout=layout, input_shape=parse_shape(input_shape),
        labels=labels, force=force, targets_dir=targets_dir, verify=not no_verify, schedules=schedules,
        tuning_db=tuning_db or "auto", batch_sizes=parse_batches(batch_sizes),
        integer_kernels=integer_kernels, backend=backend, from_reports=tuple(from_reports),
        val_data=val_data, val_count=val_count, max_accuracy_drop=max_accuracy_drop, tflite=_tflite_mode(tflite),
        optimize=_optimize_request(model, (data, train, calib, val), prune, importance, quantize, epochs, calib_method, seed,
                                   _preprocess(_floats(mean, "--mean"), _floats(std, "--std"), channel_order,
                                               preprocess_file), input_shape),
        preprocess=_preprocess(_floats(mean, "--mean"), _floats(std, "--std"), channel_order, preprocess_file))
    if mlflow_uri:
        from edgecls.report.mlflow_log import require_mlflow
        require_mlflow()  # before minutes of work
    with console.status(f"compiling {model} for {target}", spinner="dots") if not verbose else _null():
        out = compile_artifact(req, log=_log(verbose))
    if mlflow_uri:
        from edgecls.report.mlflow_log import log_compile
        console.print(f"mlflow run {log_compile(mlflow_uri, out)} ({mlflow_uri})")
    from edgecls.artifact.manifest import read_manifest
    from edgecls.report.console import stages_table
    stages = read_manifest(out).get("stages", [])
    if any(st.get("top1") is not None for st in stages):
        console.print(stages_table(stages))
    console.print(f"[green]artifact[/green] {out}  (inspect it: edgecls inspect {out})")


def _optimize_request(model, data, prune, importance, quantize, epochs, calib_method, seed, preprocess,
                      input_shape, required=False):
    """None when no optimization was asked for; else an OptimizeRequest (needs --data)."""
    if not required and not prune and quantize == "none":
        return None
    data, train, calib, val = data
    if data is None and not (train and calib and val):
        raise UsageError("--prune/--quantize need --data DIR (an ImageFolder of labelled images), "
                         "or all three of --train, --calib and --val")
    from edgecls.optimize.run import OptimizeRequest
    from edgecls.pipeline import default_preprocess
    if not isinstance(preprocess, type(None)) and not isinstance(preprocess, dict):
        pre = preprocess
    else:
        from edgecls.load import parse_shape
        shape = parse_shape(input_shape) or (1, 3, 224, 224)
        pre = default_preprocess(shape, **(preprocess or {}))
    return OptimizeRequest(model=model, data=data, train=train, calib=calib, val=val, preprocess=pre, prune=prune, importance=importance,
                           quantize=quantize, epochs=epochs, calib_method=calib_method, seed=seed)


def _tflite_mode(flag: bool | None) -> str:
    return "auto" if flag is None else ("yes" if flag else "no")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(path_type=Path))
@optimization_options
@click.option("--input-shape", default=None, metavar="N,C,H,W")
@click.option("--mean", default=None, metavar="R,G,B")
@click.option("--std", default=None, metavar="R,G,B")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None)
@click.option("--preprocess", "preprocess_file", type=click.Path(path_type=Path), default=None)
@click.option("--force", is_flag=True)
@click.option("--verbose", "-v", is_flag=True)
def optimize(model, out_dir, data, train, calib, val, prune, importance, quantize, epochs, calib_method, seed, tflite,
             input_shape, mean, std, channel_order, preprocess_file, force, verbose):
    """Prune, fine-tune and quantize a torch model (torch.save'd nn.Module), or QAT/PTQ a Keras model
    (.keras/.h5, extra edgecls[keras]: TF-MOT -> int8 .tflite; TF-MOT pruning is unstructured, so
    --prune is refused for Keras); stop before TVM."""
    from edgecls.optimize.run import optimize_model, temp_work_dir, write_optimized
    from edgecls.report.console import console, stages_table
    from edgecls.artifact.package import check_destination
    check_destination(out_dir, force)
    req = _optimize_request(model, (data, train, calib, val), prune, importance, quantize, epochs, calib_method, seed,
                            _preprocess(_floats(mean, "--mean"), _floats(std, "--std"), channel_order,
                                        preprocess_file), input_shape, required=True)
    req.tflite = _tflite_mode(tflite)
    with temp_work_dir() as work:
        result = optimize_model(req, Path(work), log=_log(True) if verbose else (lambda m: console.print(m)))
        write_optimized(result, out_dir, force)
    console.print(stages_table(result.stages))
    shipped = [out_dir / f for f in ("model.onnx", "model.tflite") if (out_dir / f).is_file()]
    console.print(f"optimized model ({result.variant}): {', '.join(map(str, shipped))}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(artifact, as_json):
    """Show what is inside an artifact and how it was made."""
    from edgecls.artifact.manifest import read_manifest, verify_files
    from edgecls.report.console import inspect_view
    manifest = read_manifest(artifact)
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    inspect_view(manifest, verify_files(artifact, manifest))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--input", "-i", "input_path", type=click.Path(path_type=Path), default=None,
              help="An image (preprocessed as the manifest says) or a .npy tensor; "
                   "default: the artifact's reference input.")
@click.option("--emulate", is_flag=True, help="Run a foreign-arch artifact under qemu on this machine.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(1, 1000))
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="TVM runtime threads.")
@click.option("--save-output", type=click.Path(path_type=Path), default=None, help="Write the output tensor (.npy).")
@click.option("--json", "as_json", is_flag=True, help="Print the runner's report as JSON.")
def run(artifact, input_path, emulate, topk, threads, save_output, as_json):
    """Run an artifact on this machine (natively, or under qemu with --emulate) and print top-k."""
    from edgecls.artifact.execute import predict
    from edgecls.report.console import topk_view
    report = predict(artifact, input_path, emulate=emulate, topk=topk, save_output=save_output, threads=threads)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        topk_view(report)


@cli.command("demo-model")
@click.option("--output", "-o", "out_dir", default="demo-build/model", show_default=True,
              type=click.Path(path_type=Path))
def demo_model(out_dir):
    """Train (or reuse) the bundled digits demo classifier and write sample images."""
    from edgecls.demo import ensure_demo_model, write_sample_images
    demo = ensure_demo_model(out_dir)
    click.echo(f"demo model: {demo.onnx} (validation top-1 {demo.val_accuracy:.3f}; also {demo.pt2.name})")
    for path, label in write_sample_images(demo, out_dir / "samples"):
        click.echo(f"sample: {path} (label {label})")


@cli.group()
def runtimes():
    """TVM runtime libraries that artifacts ship for each board architecture."""


@runtimes.command("fetch")
@click.option("--arch", default="aarch64", show_default=True, type=click.Choice(["aarch64"]))
@click.option("--quiet", "-q", is_flag=True)
def runtimes_fetch(arch, quiet):
    """Download the apache-tvm runtime for ARCH (needs PyPI once; cached afterwards)."""
    from edgecls.artifact.runtime_libs import fetch_runtime
    libs = fetch_runtime(arch, quiet=quiet)
    if not quiet:
        click.echo(f"{arch} TVM runtime ready: {libs.tvm_runtime.parent}")

from edgecls.commands.boards import bench, boards, deploy  # noqa: E402
from edgecls.commands.report import report  # noqa: E402
from edgecls.commands.tune import tune  # noqa: E402

for _command in (boards, deploy, bench, report, tune):
    cli.add_command(_command)


def main(argv=None):
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    try:
        rv = cli.main(args=argv, prog_name="edgecls", standalone_mode=False)
    except EdgeclsError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except OSError as exc:
        if os.environ.get("EDGECLS_DEBUG"):
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except Exception as exc:  # a bug of ours: still one line, with a way to get the traceback
        if os.environ.get("EDGECLS_DEBUG"):
            raise
        msg = " ".join(str(exc).split())[:300]
        click.echo(f"error: internal error {type(exc).__name__}: {msg} (set EDGECLS_DEBUG=1 for a traceback)",
                   err=True)
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
