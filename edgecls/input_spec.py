"""The input shape from what is known: channels from the model, image size from the data.

A user's model rarely takes ImageNet's 3x224x224: a digits classifier takes 1x32x32. The model
says its channel count (a torch module's first conv, an exported program's or an ONNX file's
input), and sometimes its image size (a static ONNX / exported input); the data says the image
size when the model does not (the images of an ImageFolder, the tensors of val_x.npy). Only
what neither says falls back to 3 channels and 224x224, and the result says where each part
came from, so a mismatch can name the option to pass with the value that would fit.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.errors import UsageError

DEFAULT_CHANNELS, DEFAULT_SIZE = 3, (224, 224)
SIZE_SAMPLE = 64  # image headers read to learn the data's size (round-robin over classes)


@dataclass(frozen=True)
class ModelInput:
    """What the model itself says about its input; None where it says nothing."""
    channels: int | None = None
    size: tuple[int, int] | None = None  # (H, W) when the model fixes it
    layout: str = "NCHW"
    how: str = "the model"  # where channels/size were read, for messages

    @classmethod
    def from_dims(cls, dims: list, how: str) -> "ModelInput":
        """An N,C,H,W (or N,H,W,C) input whose dimensions are ints or symbolic names."""
        if len(dims) != 4:
            return cls(how=how)
        static = [d if isinstance(d, int) and d > 0 else None for d in dims]
        nhwc = static[3] in (1, 3) and static[1] not in (1, 3)
        c = static[3] if nhwc else static[1]
        h, w = (static[1], static[2]) if nhwc else (static[2], static[3])
        return cls(channels=c, size=(h, w) if h and w else None, layout="NHWC" if nhwc else "NCHW", how=how)


def first_conv_channels(module) -> int | None:
    """in_channels of the first Conv2d a torch (or TorchScript) module registers: its stem."""
    import torch
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            return int(m.in_channels)
        if getattr(m, "original_name", None) == "Conv2d":  # TorchScript keeps the module tree
            weight = getattr(m, "weight", None)
            groups = int(getattr(m, "groups", 1) or 1)
            if weight is not None and weight.dim() == 4:
                return int(weight.shape[1]) * groups
    return None


def module_input(module, how: str = "the model's first conv") -> ModelInput:
    return ModelInput(channels=first_conv_channels(module), how=how)


def model_file_input(path: Path) -> ModelInput:
    """ModelInput of a model file (.onnx, .pt2, TorchScript / pickled module); empty when unreadable
    (loading reports that itself, with its own message)."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".onnx":
            return _onnx_input(path)
        if suffix == ".pt2":
            return _exported_input(path)
        from edgecls.load import TORCHSCRIPT_SUFFIXES
        if suffix in TORCHSCRIPT_SUFFIXES:
            return module_input(_torch_module(path))
    except Exception:  # noqa: BLE001  a corrupt file: load_model names the problem
        pass
    return ModelInput()


def _onnx_input(path: Path) -> ModelInput:
    import onnx

    from edgecls.load import _value_spec
    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        return ModelInput()
    return ModelInput.from_dims(_value_spec(inputs[0])[1], f"the ONNX input '{inputs[0].name}'")


def _exported_input(path: Path) -> ModelInput:
    import torch
    ep = torch.export.load(str(path))
    user = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    for node in ep.graph.nodes:
        if node.op == "placeholder" and node.name in user and "val" in node.meta:
            dims = [int(d) if isinstance(d, int) else str(d) for d in node.meta["val"].shape]
            return ModelInput.from_dims(dims, "the exported program's input")
    return ModelInput()


def _torch_module(path: Path):
    import torch
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: BLE001  not TorchScript: a pickled nn.Module
        from edgecls.load import load_torch_module
        return load_torch_module(path)


def data_image_size(folder: Path | None) -> tuple[tuple[int, int] | None, int | None, str]:
    """(size (H, W), channels, how) the data says: a val_x.npy's tensor shape, or the one size of an
    ImageFolder's images (from a sample of headers); size None when the images differ in size."""
    if folder is None or not Path(folder).is_dir():
        return None, None, ""
    folder = Path(folder)
    if (folder / "val_x.npy").is_file():
        shape = np.load(folder / "val_x.npy", mmap_mode="r").shape
        if len(shape) == 4:
            info = ModelInput.from_dims([1, *shape[1:]], "")
            return info.size, info.channels, f"{folder / 'val_x.npy'} ({'x'.join(map(str, shape[1:]))})"
        return None, None, ""
    sizes = Counter(_sample_sizes(folder))
    if len(sizes) == 1:
        (w, h), = sizes
        return (h, w), None, f"the images of {folder} ({w}x{h})"
    return None, None, ""


def _sample_sizes(folder: Path):
    from PIL import Image

    from edgecls.data import IMAGE_EXTENSIONS
    classes = [sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:SIZE_SAMPLE]
               for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    picked = [files[i] for i in range(SIZE_SAMPLE) for files in classes if i < len(files)][:SIZE_SAMPLE]
    for p in picked:
        try:
            with Image.open(p) as img:  # the header only: no decoding
                yield img.size
        except Exception:  # noqa: BLE001  unreadable files are skipped (and counted) when loaded
            continue


def shape_text(shape) -> str:
    return ",".join(map(str, shape))


def resolve_input_shape(model: ModelInput, given: tuple[int, ...] | None, data: Path | None, *,
                        channels_hint: int | None = None,
                        size_hint: tuple[int, int] | None = None) -> tuple[tuple[int, ...], str]:
    """The input shape (N,C,H,W or N,H,W,C) and a note of where it came from.

    given: --input-shape, checked against what the model says; channels_hint / size_hint: what a
    preprocessing file says, used where the model says nothing (size before the data's)."""
    if given is not None:
        check_given_shape(model, given)
        return tuple(given), "--input-shape"
    size, data_channels, data_how = data_image_size(data)
    channels = model.channels or data_channels or channels_hint or DEFAULT_CHANNELS
    c_how = (model.how if model.channels else "the data" if data_channels else
             "the preprocessing" if channels_hint else "assumed")
    if model.size:
        hw, s_how = model.size, model.how
    elif size_hint:
        hw, s_how = tuple(size_hint), "the preprocessing"
    elif size:
        hw, s_how = size, data_how
    else:
        hw, s_how = DEFAULT_SIZE, "default"
    shape = (1, *hw, channels) if model.layout == "NHWC" else (1, channels, *hw)
    return shape, f"channels: {c_how}; size: {s_how}"


def check_given_shape(model: ModelInput, given: tuple[int, ...]) -> None:
    """--input-shape against the model's channels and fixed size: a mismatch names the value to pass."""
    if len(given) != 4:
        c, (h, w) = model.channels or DEFAULT_CHANNELS, model.size or DEFAULT_SIZE
        example = f"1,{c},{h},{w}" if model.layout == "NCHW" else f"1,{h},{w},{c}"
        raise UsageError(f"--input-shape {shape_text(given)} has {len(given)} dimensions; an image classifier "
                         f"takes 4 (N,C,H,W or N,H,W,C), e.g. --input-shape {example}")
    if model.channels is None and model.size is None:
        return
    fit = list(given)
    c_at, hw_at = (3, (1, 2)) if model.layout == "NHWC" else (1, (2, 3))
    if model.channels:
        fit[c_at] = model.channels
    if model.size:
        fit[hw_at[0]], fit[hw_at[1]] = model.size
    if tuple(fit) != tuple(given):
        says = (f"{model.channels} channel{'s' * (model.channels != 1)}" if model.channels else "") + \
               (f"{' and ' if model.channels else ''}{model.size[0]}x{model.size[1]} images" if model.size else "")
        raise UsageError(f"--input-shape {shape_text(given)} does not fit {model.how}, which takes {says}: "
                         f"pass --input-shape {shape_text(fit)} (or leave it out)")
