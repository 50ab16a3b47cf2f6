"""`edgecls compile`: a model -> a runnable, verified artifact for a target."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from edgecls.commands.options import (mlflow_option, model_code_option, optimization_options, parse_preprocess,
                                      targets_dir_option)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--target", "-t", required=True, help="Target name (see `edgecls targets`) or a .toml file.")
@click.option("--output", "-o", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Artifact directory to create.")
@click.option("--layout", type=click.Choice(["auto", "NCHW", "NHWC"]), default="auto", show_default=True,
              help="Conv data layout; auto uses the target's preferred layout.")
@click.option("--input-shape", default=None, metavar="N,C,H,W",
              help="Static input shape, e.g. 1,3,224,224; default: channels from the model, size from the data.")
@click.option("--labels", type=click.Path(path_type=Path), default=None, help="Class names, one per line.")
@click.option("--mean", default=None, metavar="R,G,B", help="Per-channel mean in 0..1 pixel scale (one value: every channel).")
@click.option("--std", default=None, metavar="R,G,B", help="Per-channel std in 0..1 pixel scale (one value: every channel).")
@click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default=None)
@click.option("--preprocess", "preprocess_file", type=click.Path(path_type=Path), default=None,
              help="Preprocessing as JSON (size, mean, std, channel_order, layout); default: <model>.preprocess.json "
                   "or preprocess.json next to the model, else ImageNet statistics.")
@optimization_options
@click.option("--max-accuracy-drop", type=float, default=None,
              help="Fail (artifact kept, marked rejected) when artifact top-1 falls more than X points below the "
                   "original on the full validation split; refused when the split is too small to tell X points.")
@click.option("--val-data", type=click.Path(path_type=Path), default=None,
              help="Labelled images the artifact carries for on-device top-1: an ImageFolder, "
                   "or a folder with val_x.npy + val_y.npy.")
@click.option("--val-count", default=64, show_default=True, type=click.IntRange(1, 10000),
              help="Images of the validation split the artifact carries for on-device top-1 (every stage "
                   "is measured on the whole split).")
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
@click.option("--variant", "variant", default=None, metavar="NAME",
              help="Label the artifact's report rows NAME instead of what the graph says (fp32, fp16, "
                   "int8-static-perchannel-u8, pruned50-int8-qat-...).")
@click.option("--verbose", "-v", is_flag=True, help="Show every stage and graph pass.")
@model_code_option
@mlflow_option
@targets_dir_option
def compile(model, target, out_dir, layout, input_shape, labels, mean, std, channel_order, preprocess_file,
            data, train, calib, val, prune, importance, quantize, epochs, calib_method, seed, tflite, expected_accuracy,
            accept_low_accuracy, max_accuracy_drop,
            val_data, val_count, force, no_verify, schedules, backend, from_reports, integer_kernels, batch_sizes, tuning_db,
            variant, verbose, model_code, mlflow_uri, targets_dir):
    """Compile MODEL (.onnx, .pt2, TorchScript, a torch.save'd .pth) for a target into a runnable, verified
    artifact. The same call as the Python API's edgecls.compile."""
    from edgecls import api
    from edgecls.artifact.manifest import read_manifest
    from edgecls.commands.views import console, stages_table, verbose_log
    from edgecls.errors import ArtifactError
    preprocess = parse_preprocess(mean, std, channel_order, preprocess_file)
    options = dict(
        input_shape=input_shape, data=data, train=train, calib=calib, val=val, prune=prune, importance=importance,
        quantize=quantize, epochs=epochs, calib_method=calib_method, seed=seed, max_accuracy_drop=max_accuracy_drop,
        layout=layout, labels=labels, preprocess=preprocess, val_data=val_data, val_count=val_count, force=force,
        verify=not no_verify, schedules=schedules, backend=backend, from_reports=from_reports,
        integer_kernels=integer_kernels, batch_sizes=batch_sizes, tuning_db=tuning_db, tflite=tflite,
        variant=variant, targets_dir=targets_dir, model_code=model_code, expected_accuracy=expected_accuracy,
        accuracy_check=not accept_low_accuracy, log=verbose_log(verbose))
    if mlflow_uri:
        from edgecls.report.mlflow_log import require_mlflow
        require_mlflow()  # before minutes of work
    # --verbose prints every stage: a spinner would redraw over those lines.
    try:
        with (contextlib.nullcontext() if verbose else console.status(f"compiling {model} for {target}", spinner="dots")):
            out = api.compile(model, target, out_dir, **options).path
    except ArtifactError:
        if max_accuracy_drop is not None and (out_dir / "manifest.json").is_file():  # rejected: show why
            console.print(stages_table(read_manifest(out_dir).get("stages", [])))
        raise
    if mlflow_uri:
        from edgecls.report.mlflow_log import log_compile
        console.print(f"mlflow run {log_compile(mlflow_uri, out)} ({mlflow_uri})")
    manifest = read_manifest(out)
    stages = manifest.get("stages", [])
    if any(st.get("top1") is not None for st in stages):
        console.print(stages_table(stages))
    gate = manifest.get("acceptance") or {}
    if gate.get("max_accuracy_drop") is not None and gate.get("n"):
        lo, hi = gate["ci95_points"]
        console.print(f"accuracy gate: top-1 drop {gate['drop_points']:.2f} points (95 % CI {lo:.2f} to {hi:.2f}) "
                      f"on {gate['n']} validation images, at most {gate['max_accuracy_drop']:g} allowed: accepted"
                      + ("" if gate.get("conclusive") else " (the interval reaches past it: more images would tell)"))
    console.print(f"[green]artifact[/green] {out}  (inspect it: edgecls inspect {out})")
