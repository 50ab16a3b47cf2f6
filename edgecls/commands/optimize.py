"""`edgecls optimize`: prune, fine-tune and quantize a model, stopping before TVM."""

from __future__ import annotations

from pathlib import Path

import click

from edgecls.commands.options import model_code_option, optimization_options, parse_preprocess, tflite_mode


@click.command()
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
@model_code_option
def optimize(model, out_dir, data, train, calib, val, prune, importance, quantize, epochs, calib_method, seed, tflite,
             expected_accuracy, accept_low_accuracy, input_shape, mean, std, channel_order, preprocess_file, force,
             verbose, model_code):
    """Prune, fine-tune and quantize a torch model (torch.save'd nn.Module), or QAT/PTQ a Keras model
    (.keras/.h5, extra edgecls[keras]: TF-MOT -> int8 .tflite; TF-MOT pruning is unstructured, so
    --prune is refused for Keras); stop before TVM."""
    from edgecls.artifact.package import check_destination
    from edgecls.commands.views import console, stages_table, verbose_log
    from edgecls.optimize.run import OptimizeRequest, optimize_model, temp_work_dir, write_optimized
    from edgecls.user_code import using_model_code
    check_destination(out_dir, force)
    req = OptimizeRequest.from_options(
        model, data, train, calib, val, prune=prune, importance=importance, quantize=quantize, epochs=epochs,
        calib_method=calib_method, seed=seed, preprocess=parse_preprocess(mean, std, channel_order, preprocess_file),
        input_shape=input_shape, required=True, tflite=tflite_mode(tflite), expected_accuracy=expected_accuracy,
        accuracy_check=not accept_low_accuracy)
    with using_model_code(model_code), temp_work_dir() as work:
        result = optimize_model(req, Path(work), log=verbose_log(True) if verbose else (lambda m: console.print(m)))
        write_optimized(result, out_dir, force)
    console.print(stages_table(result.stages))
    shipped = [out_dir / f for f in ("model.onnx", "model.tflite") if (out_dir / f).is_file()]
    console.print(f"optimized model ({result.variant}): {', '.join(map(str, shipped))}")
