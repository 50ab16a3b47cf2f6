"""Load stage: .onnx / .pt2 (torch.export) / TorchScript -> a `Model`.

Every format ends up as one simplified ONNX file (the artifact ships it for other runtimes and
it is what TVM imports for ONNX input); a `.pt2` additionally keeps its ExportedProgram so TVM can
import it directly (that route keeps clip as a real op).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.hashing import sha256_file
from edgecls.errors import ModelError, UsageError, first_line

ONNX_SUFFIXES = {".onnx"}
EXPORTED_SUFFIXES = {".pt2"}
TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript", ".jit"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Model:
    path: Path
    format: str  # "onnx" | "pt2" | "torchscript"
    sha256: str
    onnx: object  # onnx.ModelProto, simplified, with static input shape
    input: TensorSpec
    output: TensorSpec
    exported_program: object | None = None  # torch.export.ExportedProgram for .pt2
    notes: list[str] = field(default_factory=list)



def parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise UsageError(f"--input-shape '{text}' is not a comma-separated list of integers") from None
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape '{text}' must list positive dimensions, e.g. 1,3,224,224")
    return shape


def _onnx_dtype(elem_type: int) -> str:
    import onnx
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)))


def _value_spec(value_info) -> tuple[str, list, str]:
    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
    return value_info.name, dims, _onnx_dtype(t.elem_type)


def _resolve_input_shape(name: str, dims: list, override: tuple[int, ...] | None) -> tuple[int, ...]:
    if override is not None:
        if len(override) != len(dims):
            raise UsageError(f"--input-shape {','.join(map(str, override))} has {len(override)} "
                             f"dimensions but input '{name}' has {len(dims)} {dims}")
        fit = [have if isinstance(have, int) and have > 0 else want for want, have in zip(override, dims)]
        for i, (want, have) in enumerate(zip(override, dims)):
            if isinstance(have, int) and have > 0 and have != want:
                raise UsageError(f"--input-shape {','.join(map(str, override))} does not match input "
                                 f"'{name}' {dims}: dimension {i} is fixed at {have}; pass --input-shape "
                                 f"{','.join(map(str, fit))}")
        return override
    shape = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif i == 0:
            shape.append(1)  # a symbolic batch dimension: batch 1 is what an edge board runs
        else:
            raise UsageError(f"input '{name}' has a symbolic dimension {i} ({d}); "
                             f"give a static shape with --input-shape, e.g. 1,3,224,224")
    return tuple(shape)


def _read_onnx(path: Path):
    import onnx
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, truncated file, missing external data ...
        raise ModelError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.graph.node:
        raise ModelError(f"{path}: not a valid ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path}: ONNX checker rejects the model: {first_line(exc)}") from None
    return model


def simplify_onnx(model, input_name: str, shape: tuple[int, ...]):
    """onnxsim with the static input shape: folds shape subgraphs TVM's importer rejects."""
    import onnx
    import onnxsim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # skip_fuse_bn: BN folding is done (and counted) by our TVM passes, visibly in the manifest.
            simplified, ok = onnxsim.simplify(model, overwrite_input_shapes={input_name: list(shape)},
                                              skip_fuse_bn=True)
        except Exception as exc:
            raise ModelError(f"ONNX simplification failed for input shape {list(shape)}: "
                             f"{first_line(exc)}") from None
    if not ok:
        raise ModelError("onnxsim could not verify the simplified model against the original")
    # Metadata (producer docs, debug names) is not needed on a board.
    del simplified.metadata_props[:]
    simplified.doc_string = ""
    onnx.checker.check_model(simplified)
    return simplified


def load_torch_module(path: Path):
    """A pickled nn.Module (`torch.save(model, path)`); pruning and QAT need the real module.

    Unpickling runs code from the file: only load models you trust, as with any torch.load. The
    model's class is imported from the current folder or the code the user named (user_code.py).
    """
    import torch

    from edgecls.user_code import torch_load_module
    try:
        module = torch_load_module(path)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable torch model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{path} holds a {type(module).__name__}, not a torch.nn.Module; save the "
                         f"model with torch.save(model, path) (a state_dict alone has no architecture)")
    return module.eval()


def _torchscript_to_onnx(path: Path, shape: tuple[int, ...] | None):
    import io

    import onnx
    import torch
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception:
        module = load_torch_module(path)  # not TorchScript: a pickled nn.Module, then
    if shape is None:
        raise UsageError(f"{path}: TorchScript files carry no input shape; pass --input-shape, "
                         f"e.g. 1,3,224,224")
    buf = io.BytesIO()
    from edgecls.export.onnx import export_onnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            export_onnx(module.eval(), torch.zeros(shape), buf, torchscript=True)
        except Exception as exc:
            raise ModelError(f"{path}: TorchScript -> ONNX export failed for shape {list(shape)}: "
                             f"{first_line(exc)}") from None
    return onnx.load_from_string(buf.getvalue())


def _exported_to_onnx(path: Path, shape: tuple[int, ...] | None):
    import onnx
    import torch
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise ModelError(f"{path}: not a loadable torch.export program ({type(exc).__name__})") from None
    args = ep.example_inputs[0] if ep.example_inputs else ()
    placeholders = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(placeholders) != 1:
        raise ModelError(f"{path}: expected one image input, the program has {len(placeholders)}")
    if shape is None:
        if args:
            shape = tuple(args[0].shape)
        else:
            raise UsageError(f"{path}: no example input saved; pass --input-shape")
    import tempfile
    from edgecls.export.onnx import export_onnx
    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_onnx(ep, torch.zeros(shape), f"{tmp}/m.onnx", named=False)
        except Exception as exc:
            raise ModelError(f"{path}: torch.export -> ONNX failed: {first_line(exc)}") from None
        return ep, onnx.load(f"{tmp}/m.onnx")


def load_model(path: str | Path, input_shape: tuple[int, ...] | None = None) -> Model:
    """Read a model file; every failure a user can cause is a one-line ModelError/UsageError."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelError(f"{path} is not a file")
    suffix = path.suffix.lower()
    ep = None
    if suffix in ONNX_SUFFIXES:
        fmt, proto = "onnx", _read_onnx(path)
    elif suffix in EXPORTED_SUFFIXES:
        fmt = "pt2"
        ep, proto = _exported_to_onnx(path, input_shape)
    elif suffix in TORCHSCRIPT_SUFFIXES:
        fmt, proto = "torchscript", _torchscript_to_onnx(path, input_shape)
    else:
        raise ModelError(f"{path}: unknown model format '{suffix}'; use .onnx, .pt2 (torch.export) "
                         f"or a TorchScript file (.pt, .ts)")
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one image input, the model has {len(inputs)}: "
                         f"{', '.join(i.name for i in inputs)}")
    name, dims, dtype = _value_spec(inputs[0])
    shape = _resolve_input_shape(name, dims, input_shape)
    simplified = simplify_onnx(proto, name, shape)
    outputs = list(simplified.graph.output)
    if not outputs:
        raise ModelError(f"{path}: the model has no outputs")
    out_name, out_dims, out_dtype = _value_spec(outputs[0])
    notes = []
    if len(outputs) > 1:
        notes.append(f"{len(outputs)} outputs; top-k uses the first ('{out_name}')")
    return Model(
        path=path, format=fmt, sha256=sha256_file(path), onnx=simplified,
        input=TensorSpec(name, shape, dtype),
        output=TensorSpec(out_name, tuple(d if isinstance(d, int) else -1 for d in out_dims), out_dtype),
        exported_program=ep, notes=notes,
    )


def rebatch_model(model: Model, batch: int) -> Model:
    """The same graph with input batch `batch` (compile --batch-sizes), through ONNX.

    Shapes are re-inferred and onnxsim re-folds them; a graph that hard-codes batch 1 (a Reshape
    to [1, -1], say) fails here or in the verification that compares every output row.
    """
    import copy

    import onnx
    proto = copy.deepcopy(model.onnx)
    inp = next(i for i in proto.graph.input if i.name == model.input.name)
    inp.type.tensor_type.shape.dim[0].dim_value = batch
    for out in proto.graph.output:
        if out.type.tensor_type.shape.dim:
            out.type.tensor_type.shape.dim[0].dim_param = "batch"
    del proto.graph.value_info[:]
    # Exporters bake the traced batch into Reshape targets ([1, C] for a flatten): make it the new
    # batch (ONNX's 0 = "copy the input dim" is read literally by TVM's importer). A reshape where
    # the leading 1 was not the batch shows up as a mismatch in the per-row verification.
    inits = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in inits:
            target = onnx.numpy_helper.to_array(inits[node.input[1]]).copy()
            if target.ndim == 1 and target.size and target[0] == 1:
                target[0] = batch
                inits[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(target, node.input[1]))
    shape = (batch, *model.input.shape[1:])
    try:
        simplified = simplify_onnx(proto, model.input.name, shape)
    except Exception as exc:  # noqa: BLE001  (onnxsim / shape inference errors of many kinds)
        raise ModelError(f"{model.path}: cannot build batch {batch} (the graph may hard-code batch 1; "
                         f"export it with a dynamic batch axis): {first_line(exc)}") from None
    onnx.checker.check_model(simplified)
    out_name, out_dims, out_dtype = _value_spec(simplified.graph.output[0])
    return Model(path=model.path, format=model.format, sha256=model.sha256, onnx=simplified,
                 input=TensorSpec(model.input.name, shape, model.input.dtype),
                 output=TensorSpec(out_name, tuple(d if isinstance(d, int) else -1 for d in out_dims), out_dtype),
                 exported_program=None, notes=list(model.notes))
