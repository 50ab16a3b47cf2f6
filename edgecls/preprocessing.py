"""Which preprocessing a model gets, where it came from, and whether the model agrees with it.

A model trained on 0..1 pixels and fed ImageNet-normalised ones scores at chance level, and every
later stage is then measured against garbage. So the preprocessing is resolved once (given
options, else a file saved with the model, else ImageNet statistics), recorded with its source,
and the original model's top-1 on the user's images is checked before any fine-tuning: near
chance, or far below the accuracy the user states, stops the command with one line that names
the preprocessing in use and the options that change it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.data import Preprocess
from edgecls.errors import UsageError
from edgecls.input_spec import ModelInput, resolve_input_shape, shape_text

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Saved with the model: `<model stem>.preprocess.json` beside it, or `preprocess.json` in its
# folder (what `edgecls demo` and train scripts write next to model.pth).
FILE_SUFFIX, FOLDER_FILE = ".preprocess.json", "preprocess.json"
OPTIONS_HINT = "--mean/--std/--channel-order or --preprocess FILE"
# Near chance: within a tenth of the way from chance to perfect (10 classes: below 19 %).
NEAR_CHANCE_FRACTION = 0.1
# --expected-accuracy: stop when even the top of the measured 95 % interval is this many points
# below; the user's own test split and ours differ by a few points without anything being wrong.
EXPECTED_MARGIN_POINTS = 5.0


def default_preprocess(shape: tuple[int, ...], mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       channel_order="RGB") -> Preprocess:
    """ImageNet statistics unless overridden; NCHW or NHWC read off the input shape; one mean/std
    value serves every channel (--mean 0 --std 1)."""
    if len(shape) != 4:
        raise UsageError(f"input shape {list(shape)} is not an image batch (N,C,H,W or N,H,W,C)")
    nhwc = shape[-1] in (1, 3) and shape[1] not in (1, 3)
    channels = shape[-1] if nhwc else shape[1]
    mean, std = tuple(mean), tuple(std)
    if channels == 1 and (mean, std) == (IMAGENET_MEAN, IMAGENET_STD):
        mean, std = mean[:1], std[:1]
    mean, std = (mean * channels if len(mean) == 1 else mean), (std * channels if len(std) == 1 else std)
    if len(mean) != channels or len(std) != channels:
        raise UsageError(f"--mean/--std need {channels} values (or one for all) for a {channels}-channel input")
    size = (shape[1], shape[2]) if nhwc else (shape[-2], shape[-1])
    return Preprocess(size=tuple(size), mean=mean, std=std, channel_order=channel_order,
                      layout="NHWC" if nhwc else "NCHW", resize="bilinear")


def read_preprocess_file(path: Path, source: str) -> dict:
    """A preprocessing JSON file as overrides (any of size, mean, std, channel_order, layout,
    resize), with `source` saying where it came from."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{source}: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{source}: a preprocessing file holds a JSON object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - set(Preprocess.__dataclass_fields__))
    if unknown:
        raise UsageError(f"{source}: unknown key(s) {', '.join(unknown)} (size, mean, std, channel_order, layout, resize)")
    return {**doc, "source": source}


def file_beside(model: Path) -> Path | None:
    model = Path(model)
    for candidate in (model.with_name(model.stem + FILE_SUFFIX), model.with_name(FOLDER_FILE)):
        if candidate.is_file():
            return candidate
    return None


def _values(v) -> str:
    return ",".join(f"{x:g}" for x in v)


def _option_values(v) -> str:
    """As --mean/--std take them: one value when every channel has the same."""
    return _values(v[:1] if len(set(v)) == 1 else v)


@dataclass(frozen=True)
class InputChoice:
    """The input shape and preprocessing a run uses, and where each came from (for the manifest)."""
    shape: tuple[int, ...]
    preprocess: Preprocess
    source: str  # of the preprocessing: options, a file, or the ImageNet defaults
    shape_from: str
    model_path: Path | None = None  # where a preprocessing file would be picked up from

    def describe(self) -> str:
        p = self.preprocess
        return (f"{'x'.join(map(str, self.shape[1:]))} {p.layout}, mean {_values(p.mean)}, std {_values(p.std)}, "
                f"{p.channel_order}, from {self.source}")

    def record(self) -> dict:
        return {"preprocess_from": self.source, "input_shape_from": self.shape_from}


def choose_input(model: ModelInput, model_path: Path, given_shape: tuple[int, ...] | None,
                 given: Preprocess | dict | None, data: Path | None) -> InputChoice:
    """Shape and preprocessing from the options, a file saved with the model, the model and the data."""
    if given is None and (found := file_beside(model_path)) is not None:
        given = read_preprocess_file(found, f"{found} (saved with the model)")
    if isinstance(given, Preprocess):  # complete: its channels, size and layout are hints like a file's
        shape, how = resolve_input_shape(_with_layout(model, given.layout), given_shape, data,
                                         channels_hint=given.channels, size_hint=given.size)
        _check_fixed(given, shape)
        return InputChoice(shape, given, "the given preprocessing", how, Path(model_path))
    overrides = dict(given or {})
    source = overrides.pop("source", None) or ("the given preprocessing" if overrides else
                                              "the ImageNet defaults")
    hints = {"channels_hint": len(overrides["mean"]) if len(overrides.get("mean") or ()) in (1, 3) else None,
             "size_hint": overrides.pop("size", None)}
    layout = overrides.pop("layout", None)
    shape, how = resolve_input_shape(model if layout is None else _with_layout(model, layout), given_shape, data,
                                     **hints)
    overrides.pop("resize", None)  # bilinear is the only one
    pre = default_preprocess(shape, **overrides)
    if hints["size_hint"] and tuple(hints["size_hint"]) != pre.size:
        raise UsageError(f"{source} resizes to {shape_text(hints['size_hint'])} but the model takes "
                         f"{shape_text(pre.size)} images: fix its size, or --input-shape")
    return InputChoice(shape, pre, source, how, Path(model_path))


def _with_layout(model: ModelInput, layout: str) -> ModelInput:
    from dataclasses import replace
    if layout not in ("NCHW", "NHWC"):
        raise UsageError(f"preprocess layout must be NCHW or NHWC, got {layout!r}")
    return replace(model, layout=layout)


def _check_fixed(pre: Preprocess, shape: tuple[int, ...]) -> None:
    if tuple(pre.input_shape[1:]) != tuple(shape[1:]):
        raise UsageError(f"the preprocessing makes {shape_text(pre.input_shape)} inputs but the model takes "
                         f"{shape_text(shape)}: pass --input-shape {shape_text(shape)} with a matching "
                         f"{OPTIONS_HINT}")


# The preprocessings models are commonly trained with, tried on a sample of the user's images:
# (what it is, mean, std), each also in BGR order for 3-channel input.
COMMON = (("pixels 0..1", (0.0,), (1.0,)),
          ("pixels -1..1", (0.5,), (0.5,)),
          ("ImageNet", IMAGENET_MEAN, IMAGENET_STD),
          ("pixels 0..255", (0.0,), (1 / 255,)))
SAMPLE = 128  # images the alternatives are tried on
# An alternative is named when it is this much better on the sample (and surely better: its paired
# 95 % interval excludes no gain).
BETTER_BY = 0.10


def alternatives(x: np.ndarray, pre: Preprocess):
    """(options text, the same images under another common preprocessing), from the tensors in use:
    normalisation is affine per channel, so pixels are recovered exactly and renormalised."""
    axis = 1 if pre.layout == "NCHW" else -1
    shape = [1] * x.ndim
    shape[axis] = pre.channels
    mean, std = (np.asarray(v, np.float32).reshape(shape) for v in (pre.mean, pre.std))
    pixels = x * std + mean
    if pre.channel_order == "BGR":
        pixels = np.flip(pixels, axis)  # back to RGB
    for what, m, s in COMMON:
        m = m * pre.channels if len(m) == 1 else m[:pre.channels]
        s = s * pre.channels if len(s) == 1 else s[:pre.channels]
        for order in (("RGB", "BGR") if pre.channels == 3 else ("RGB",)):
            if (tuple(np.float32(m)), tuple(np.float32(s)), order) == (
                    tuple(np.float32(pre.mean)), tuple(np.float32(pre.std)), pre.channel_order):
                continue
            px = np.flip(pixels, axis) if order == "BGR" else pixels
            alt = (px - np.asarray(m, np.float32).reshape(shape)) / np.asarray(s, np.float32).reshape(shape)
            text = f"--mean {_option_values(m)} --std {_option_values(s)}"
            yield (f"{text}{' --channel-order BGR' if order == 'BGR' else ''} ({what})",
                   np.ascontiguousarray(alt, np.float32))


def _better_alternative(predict, x: np.ndarray, y: np.ndarray, pred: np.ndarray, pre: Preprocess):
    """(options, top-1 on the sample, sample size) of a common preprocessing that scores clearly better."""
    from edgecls.artifact.gate import paired_drop
    x, y, pred = x[:SAMPLE], y[:SAMPLE], pred[:SAMPLE]
    now = float((pred == y).mean())
    best = None
    for text, alt in alternatives(x, pre):
        alt_pred = predict(alt)
        top1 = float((alt_pred == y).mean())
        # Paired: the drop from the alternative to the one in use is the alternative's gain.
        lo = paired_drop(alt_pred == y, pred == y)["ci95_points"][0]
        if top1 - now >= BETTER_BY and lo > 0 and (best is None or top1 > best[1]):
            best = (text, top1, len(y))
    return best


def check_preprocessing(pred: np.ndarray, x: np.ndarray, y: np.ndarray, classes: int, choice: InputChoice | None,
                        where: str, expected: float | None = None, predict=None) -> None:
    """Stop (UsageError) before any work when the original model's top-1 on the user's images says
    the preprocessing is not its training's: near chance, far below `expected` (percent), or far
    below a common preprocessing tried on a sample (`predict`: images -> top-1 classes; choice None:
    the images are tensors given as they are, nothing to try)."""
    n = len(y)
    if n == 0 or classes < 2:
        return
    top1, chance = float((pred == y).mean()), 1.0 / classes
    better = _better_alternative(predict, x, y, pred, choice.preprocess) if predict and choice else None
    head = f"the original model scores {top1 * 100:.1f} % top-1 on {n} validation images of {where}"
    in_use = choice.describe() if choice else "the tensors of val_x.npy as they are"
    fix = f"with {better[0]} it scores {better[1] * 100:.1f} % on {better[2]} of them; " if better else ""
    model = choice.model_path if choice and choice.model_path else None
    beside = f"{model.stem}{FILE_SUFFIX} next to {model.name}" if model else f"<model>{FILE_SUFFIX} next to the model"
    tail = (f"the images are likely not preprocessed as in its training (in use: {in_use}); {fix}change it with "
            f"{OPTIONS_HINT} (or save it as {beside}); nothing was optimized or written")
    if top1 < chance + NEAR_CHANCE_FRACTION * (1 - chance):
        raise UsageError(f"{head}, near chance ({chance * 100:.1f} % for {classes} classes): {tail}")
    if expected is not None:
        from scipy.stats import binomtest
        high = binomtest(int((pred == y).sum()), n).proportion_ci(0.95, method="wilson").high * 100
        if high < expected - EXPECTED_MARGIN_POINTS:
            raise UsageError(f"{head} (95 % CI up to {high:.1f} %), far below the {expected:g} % expected "
                             f"(--expected-accuracy): {tail}")
    if better:
        raise UsageError(f"{head}: {tail}")
