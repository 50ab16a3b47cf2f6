"""TVM itself: the lazy import, versions, and target dicts made concrete.

The leaf of edgecls.compile.tvm: every other module of the package gets TVM from `load_tvm`
here, and this module imports nothing of edgecls.compile.

TVM's Python APIs have churned every release (Relay, tvmc and AutoTVM are gone since 0.20), so
every call edgecls makes lives in this package behind small functions with plain-Python
arguments and results. Several calls in 0.27 fail silently; each workaround says which trap it
avoids.
"""

from __future__ import annotations

import os
from importlib import metadata

from edgecls.errors import EdgeclsError, first_line

# TVM is imported lazily: `edgecls targets` and `inspect` should not pay ~2 s of TVM start-up.
_tvm = None


# The function attribute dlight/MetaSchedule check to skip a function already scheduled (read by
# the rule table and tuning, set by them and by quant kernels built scheduled, e.g. column_fold).
SCHEDULED_ATTR = "tirx.is_scheduled"

def load_tvm():
    """The `tvm` module, imported on first use (with the relax namespace registered)."""
    global _tvm
    if _tvm is None:
        import tvm
        import tvm.relax  # noqa: F401  (registers the relax namespace)
        _tvm = tvm
    return _tvm


def versions() -> dict:
    out = {}
    for pkg in ("apache-tvm", "apache-tvm-ffi"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    tvm = load_tvm()
    out["llvm"] = int(tvm.target.codegen.llvm_version_major())
    return out


def resolve_target(tvm_target: dict) -> dict:
    """Make a target dict concrete for this workstation.

    {"mcpu": "native"} silently compiles for a generic x86-64 in TVM 0.27 (no AVX2/AVX-512), so
    the host CPU name is resolved through LLVM; num-cores 0 means this machine's usable cores.
    """
    tvm = load_tvm()
    resolved = dict(tvm_target)
    if resolved.get("mcpu") == "native":
        resolved["mcpu"] = str(tvm.target.codegen.llvm_get_system_cpu())
    if resolved.get("num-cores", None) in (0, None):
        resolved["num-cores"] = len(os.sched_getaffinity(0))
    try:
        tvm.target.Target(resolved)
    except Exception as exc:
        raise EdgeclsError(f"TVM rejects target {resolved}: {first_line(exc)}") from None
    return resolved


def target(tvm_target: dict):
    """The tvm.target.Target of a (resolved) target dict."""
    return load_tvm().target.Target(tvm_target)
