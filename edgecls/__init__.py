"""edgecls: take a trained image classifier to real edge boards.

The Python API (edgecls/api.py; the CLI is a thin layer over the same calls):

    art = edgecls.compile(model, "x86-host", "build/host", input_shape=(1, 3, 32, 32))
    art.run(x)                                    # numpy in, numpy out (qemu for aarch64)
    reports = edgecls.bench(art, local=True, out_dir="reports")
    rows = edgecls.report("reports")
    edgecls.load_artifact("build/host")

Errors are edgecls.EdgeclsError (one line; subclasses UsageError, ModelError, TargetError, ...).
Importing edgecls loads neither torch nor TVM: every call imports what it needs.
"""

from edgecls import api as _api
from edgecls.errors import (ArtifactError, EdgeclsError, ModelError, RemoteError, TargetError, ToolchainError,
                            UsageError)

__version__ = "0.1.0"

load_artifact = _api.load_artifact


# compile, bench and report are subpackages that are also the API's calls (edgecls/api_package.py).
from edgecls import bench, compile, report  # noqa: E402  (their __init__s are cheap)


def __getattr__(name):
    if name == "Artifact":  # numpy-backed: imported on first use
        from edgecls.artifact.handle import Artifact
        return Artifact
    raise AttributeError(f"module 'edgecls' has no attribute {name!r}")


__all__ = ["compile", "load_artifact", "bench", "report", "Artifact", "EdgeclsError", "UsageError", "ModelError",
           "TargetError", "ToolchainError", "ArtifactError", "RemoteError", "__version__"]
