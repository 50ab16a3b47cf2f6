"""The user's own model classes: unpickling a `torch.save(model)` file whose class lives in the
user's project.

A pickled nn.Module names its class by module and name (`mynet.MyNet`), and unpickling imports
that module. Python run in the project folder finds it there (sys.path[0] is the script's folder,
or the current one for `python -c` and `-m`); the `edgecls` console script's sys.path holds only
installed packages, so `torch.load` failed with "No module named 'mynet'". While a model file is
unpickled, edgecls therefore makes importable what Python would, the current folder, plus the
code the user names (`compile --model-code FILE.py|DIR`, the API's `model_code=`): a file is
imported under its own name, a folder goes on the import path. Nothing else is executed: no
folder is scanned and no module imported that the pickle does not name. A class saved from the
training script itself (`__main__.MyNet`) or from a package path the named file no longer has is
looked up by name in the files the user named.

Which code applies travels with the call (`using_model_code`), not through every stage's
signature: the model is unpickled in the load, optimize and TFLite stages alike.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pickle
import sys
import types
from contextvars import ContextVar
from pathlib import Path

from edgecls.errors import ModelError, UsageError

_MODEL_CODE: ContextVar[tuple[Path, ...]] = ContextVar("edgecls_model_code", default=())


def check_model_code(paths) -> tuple[Path, ...]:
    """--model-code values as absolute paths: existing .py files or folders, else a UsageError."""
    if paths is None:
        return ()
    if isinstance(paths, (str, os.PathLike)):
        paths = (paths,)
    out = []
    for p in map(Path, paths):
        if not p.exists():
            raise UsageError(f"--model-code {p} does not exist (name the .py file that defines the model's class)")
        if p.is_file() and p.suffix != ".py":
            raise UsageError(f"--model-code {p} is not a .py file or a folder")
        out.append(p.resolve())
    return tuple(out)


@contextlib.contextmanager
def using_model_code(paths):
    """Within the block, model files are unpickled with this code importable (see the module doc)."""
    token = _MODEL_CODE.set(check_model_code(paths))
    try:
        yield
    finally:
        _MODEL_CODE.reset(token)


class MissingModelClass(Exception):
    """The pickle names a class that cannot be imported: module, name and why."""

    def __init__(self, module: str, name: str, why: str):
        super().__init__(f"{module}.{name}: {why}")
        self.module, self.name, self.why = module, name, why


def _import_file(path: Path) -> types.ModuleType:
    """Import one named .py file under its own name (a module of that name already imported from
    elsewhere is shadowed for the load: the pickle means the user's)."""
    name = path.stem
    existing = sys.modules.get(name)
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() == path:
        return existing
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelError(f"--model-code {path} fails to import: {type(exc).__name__}: {exc}") from None
    return module


def _unpickler_module(named_files: list[types.ModuleType]) -> types.ModuleType:
    """A `pickle_module` for torch.load whose find_class falls back to the named files' classes
    and reports a class it cannot find instead of pickle's bare ModuleNotFoundError."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            try:
                return super().find_class(module, name)
            except (ImportError, AttributeError) as exc:
                for m in named_files:
                    if isinstance(getattr(m, name, None), type):
                        return getattr(m, name)
                raise MissingModelClass(module, name, f"{type(exc).__name__}: {exc}") from None

    shim = types.ModuleType("edgecls_user_pickle")
    shim.Unpickler, shim.load, shim.loads = Unpickler, pickle.load, pickle.loads
    shim.__dict__.update({k: getattr(pickle, k) for k in ("HIGHEST_PROTOCOL", "UnpicklingError")})
    return shim


def _missing_class_message(path: Path, missing: MissingModelClass, named: tuple[Path, ...]) -> str:
    where = f"--model-code {', '.join(map(str, named))} has no class {missing.name}; " if named else ""
    if missing.module == "__main__":
        return (f"{path}: the model's class {missing.name} was defined in the script that saved it (__main__); "
                f"{where}pass the file that defines it with --model-code FILE.py")
    top = missing.module.split(".")[0]
    return (f"{path}: the model's class {missing.module}.{missing.name} is not importable ({missing.why}); "
            f"{where}run edgecls in the folder that holds {top}.py (or the {top}/ package), or pass the file "
            f"that defines it with --model-code path/to/{missing.module.split('.')[-1]}.py")


def torch_load_module(path: Path):
    """torch.load of a whole pickled module with the current folder and the named code importable.

    The import path is restored afterwards; the modules imported stay in sys.modules, since the
    loaded model's classes live there (deepcopy, torch.export and pickling need them)."""
    import torch
    named = _MODEL_CODE.get()
    saved_path = list(sys.path)
    sys.path[:0] = [str(p) for p in named if p.is_dir()] + [str(p.parent) for p in named if p.is_file()] \
        + [os.getcwd()]
    try:
        files = [_import_file(p) for p in named if p.is_file()]
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_unpickler_module(files))
    except MissingModelClass as missing:
        raise ModelError(_missing_class_message(path, missing, named)) from None
    finally:
        sys.path[:] = saved_path
