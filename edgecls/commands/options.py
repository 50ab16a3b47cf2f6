"""click options shared by several command modules, and the parsing of their values."""

from __future__ import annotations

from pathlib import Path

import click

from edgecls.api import tflite_mode  # noqa: F401  (re-exported for the commands)
from edgecls.errors import UsageError

targets_dir_option = click.option(
    "--targets-dir", envvar="EDGECLS_TARGETS", default=None, metavar="DIR",
    help="Extra folder(s) of target TOML files (also EDGECLS_TARGETS; ':'-separated).")
boards_option = click.option("--boards", "inventory", envvar="EDGECLS_BOARDS", default=None,
                             type=click.Path(path_type=Path),
                             help="Board inventory TOML (default ~/.config/edgecls/boards.toml; EDGECLS_BOARDS).")
ssh_config_option = click.option("--ssh-config", envvar="EDGECLS_SSH_CONFIG", default=None,
                                 type=click.Path(path_type=Path),
                                 help="ssh config file passed as -F to every ssh/rsync (EDGECLS_SSH_CONFIG).")
accept_new_option = click.option("--accept-new-host-key", is_flag=True,
                                 help="Trust a board's host key on first contact (never a changed one).")
model_code_option = click.option(
    "--model-code", "model_code", multiple=True, type=click.Path(path_type=Path), metavar="FILE.py|DIR",
    help="The code that defines a torch.save'd model's class (repeatable): a .py file, imported under its "
         "name, or a folder put on the import path. The current folder is importable anyway.")
mlflow_option = click.option("--mlflow", "mlflow_uri", envvar="EDGECLS_MLFLOW", default=None, metavar="URI",
                             help="Also log this run to MLflow (extra edgecls[mlflow]), e.g. file:///tmp/mlruns.")


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
        click.option("--expected-accuracy", type=click.FloatRange(0, 100), default=None, metavar="PCT",
                     help="Top-1 (%) the model reached in training: stop before any work when it scores far "
                          "below that on the data (a preprocessing mismatch)."),
        click.option("--accept-low-accuracy", is_flag=True,
                     help="Go on when the original model scores near chance on the data (an untrained model); "
                          "by default that stops before any work, as a preprocessing mismatch."),
    ]):
        f = option(f)
    return f


def parse_preprocess(mean: str | None, std: str | None, channel_order: str | None, preprocess_file: Path | None):
    """The preprocessing options as a dict of overrides on top of the defaults for the input shape
    (with a "source" key naming them): --preprocess FILE, then --mean/--std/--channel-order over it;
    None when none is given (a file saved with the model is then looked for)."""
    from edgecls.preprocessing import read_preprocess_file
    mean, std = _floats(mean, "--mean"), _floats(std, "--std")
    given = {k: v for k, v in (("mean", mean), ("std", std), ("channel_order", channel_order)) if v}
    if preprocess_file:
        doc = read_preprocess_file(preprocess_file, f"--preprocess {preprocess_file}")
        return {**doc, **given, "source": doc["source"] + (" with " + "/".join(f"--{k}" for k in given) if given else "")}
    if given:
        return {**given, "source": "/".join(f"--{k.replace('_', '-')}" for k in given)}
    return None


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} '{text}' is not a comma-separated list of numbers") from None
